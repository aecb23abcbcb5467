"""Simulation-based calibration of the exact path of bernoulli and binomial models (Pólya-Gamma
Gibbs, ``infer.pg.sample``, and ``infer.pg_multi`` for crossed factors): a small run of
``validation/sbc.py`` in ``make test``, a long one under ``validate``.

``y ~ x + (1 | g)`` on 8 groups of 3 to 15 rows (binomial rows: 1 to 10 trials), one chain per
replication thinned to L draws by its ESS (another chain while the ESS is below L).  Each of the
six ranked quantities is tested for uniform ranks with a chi-square test at the Bonferroni
threshold ALPHA / 6, so a correct sampler fails with probability at most ALPHA.  The negative
control fits with a group-SD prior 5 times narrower than the simulation's and requires the same
check to flag it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds validation/

from validation.sbc import NUTS_SIM_PRIORS, failing, run_sbc_nuts, uniformity_pvalues  # noqa: E402

ALPHA = 0.001  # family-wise
SEEDS = {"bernoulli": 21, "binomial": 22}


def _check(family: str, reps: int, L: int, bins: int, warmup: int, draws: int) -> None:
    info: dict[str, list[float]] = {}
    ranks = run_sbc_nuts(family, reps, seed=SEEDS[family], draws_per_fit=L, warmup=warmup, draws=draws,
                         method="exact", info=info)
    assert len(ranks) == 6 and {"Intercept", "x", "sd(Intercept|g)"} <= set(ranks)
    for r in ranks.values():
        assert r.shape == (reps,) and r.min() >= 0 and r.max() <= L
    assert min(info["ess_min"]) > 0.5 * L  # the kept draws are close to independent
    p = uniformity_pvalues(ranks, L, bins)
    print(family, {k: round(v, 4) for k, v in p.items()}, f"median {np.median(info['seconds']):.2f} s per replication")
    assert failing(p, ALPHA) == [], f"non-uniform SBC ranks ({family}): {p}"


@pytest.mark.parametrize("family", ["bernoulli", "binomial"])
def test_pg_path_is_calibrated_short(family: str) -> None:
    """24 replications, ranks among 39 draws in 4 bins (6 expected per bin)."""
    _check(family, reps=24, L=39, bins=4, warmup=100, draws=160)


@pytest.mark.validate
@pytest.mark.parametrize("family", ["bernoulli", "binomial"])
def test_pg_path_is_calibrated(family: str) -> None:
    """200 replications, ranks among 99 draws in 10 bins (20 expected per bin)."""
    _check(family, reps=200, L=99, bins=10, warmup=300, draws=300)


@pytest.mark.validate
def test_uniformity_check_flags_a_wrong_group_sd_prior() -> None:
    sim = NUTS_SIM_PRIORS["bernoulli"]
    wrong = dict(sim, **{"sd(Intercept|g)": "half_normal(0.2)"})  # 5 times narrower than half_normal(1)
    bad = run_sbc_nuts("bernoulli", 60, seed=123, draws_per_fit=39, warmup=100, draws=200, fit_priors=wrong,
                       method="exact")
    assert "sd(Intercept|g)" in failing(uniformity_pvalues(bad, 39, 4), ALPHA)


def test_sbc_refuses_a_family_the_sampler_does_not_fit() -> None:
    with pytest.raises(ValueError, match="family"):
        run_sbc_nuts("poisson", 5, method="exact")


def _check_crossed(reps: int, L: int, bins: int, seed: int) -> None:
    """Binomial rows on the unbalanced crossed design of ``validation.sbc.crossed_design`` (12 × 8 levels,
    30 % empty cells), ``y | trials(n) ~ x + (1 | a) + (1 | b)``: the several-factor sampler
    (``infer.pg_multi``), two chains per replication thinned by 3 (ESS per sweep ≈ 0.3–0.5)."""
    from validation.sbc import run_sbc_crossed

    info: dict[str, list] = {}
    ranks = run_sbc_crossed(reps, seed, variant="binomial", chains=2, draws_per_fit=L, thin=3, warmup=150, info=info)
    assert set(info["method"]) == {"exact"}
    p = uniformity_pvalues(ranks, L, bins)
    print("crossed binomial", {k: round(v, 4) for k, v in p.items()},
          f"median {np.median(info['seconds']):.2f} s per replication")
    assert failing(p, ALPHA) == [], f"non-uniform SBC ranks (crossed binomial): {p}"


def test_crossed_binomial_is_calibrated_short() -> None:
    """24 replications, ranks among 39 draws in 4 bins."""
    _check_crossed(24, 39, 4, seed=31)


@pytest.mark.validate
def test_crossed_binomial_is_calibrated() -> None:
    """200 replications, ranks among 99 draws in 10 bins."""
    _check_crossed(200, 99, 10, seed=32)
