"""Simulation-based calibration of the NUTS path (a small run of ``validation/sbc.py``).

Bernoulli (under ``make validate``) and poisson varying intercepts, ``y ~ x + (1 | g)`` on 8 groups of 3 to 15 rows, fitted
with ``infer.nuts.sample`` (one chain, thinned by its ESS). Each family's six quantities are
tested for uniform ranks with a chi-square test over 10 bins at the Bonferroni threshold
0.001 / 6, so a correct sampler fails with probability at most 0.001. Every fit after a family's
first reuses the compiled sampler, which is what makes 100 replications cheap. No replication may
keep divergent transitions after the sampler's retries (a user would see a warning on a routine
model). The negative controls fit with a wrong prior on the group SD and require the same check
to flag it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds validation/

from validation.sbc import NUTS_SIM_PRIORS, failing, main, run_sbc_nuts, uniformity_pvalues  # noqa: E402

L = 99  # ranks in 0..99: 100 values, 10 per bin
BINS = 10
ALPHA = 0.001  # family-wise
REPS = 100  # 10 expected per bin
SEEDS = {"bernoulli": 11, "poisson": 12}

pytestmark = pytest.mark.slow

#: bernoulli's default is Pólya-Gamma Gibbs (its short SBC: tests/test_sbc_pg.py), so its NUTS
#: calibration and negative control run under ``make validate``; poisson's default is NUTS: both in ``make test``
FAMILIES = [pytest.param("bernoulli", marks=pytest.mark.validate), "poisson"]


@pytest.mark.parametrize("family", FAMILIES)
def test_nuts_path_is_calibrated(family: str) -> None:
    info: dict[str, list[float]] = {}
    ranks = run_sbc_nuts(family, REPS, seed=SEEDS[family], draws_per_fit=L, info=info)
    assert len(ranks) == 6 and {"Intercept", "x", "sd(Intercept|g)"} <= set(ranks)
    for r in ranks.values():
        assert r.shape == (REPS,) and r.min() >= 0 and r.max() <= L
    assert min(info["ess_min"]) > 0.5 * L  # the kept draws are close to independent
    p = uniformity_pvalues(ranks, L, BINS)
    print(family, {k: round(v, 4) for k, v in p.items()},
          f"median {np.median(info['seconds'][1:]):.3f} s per replication after the first,",
          f"{int(np.sum(np.asarray(info['divergences']) > 0))} replications with divergences left after retries")
    # routine models: no divergence left after the retries at higher target acceptance, which
    # the user would see as a ConvergenceWarning
    assert max(info["divergences"]) == 0, info["divergences"]
    assert failing(p, ALPHA) == [], f"non-uniform SBC ranks ({family}): {p}"


@pytest.mark.parametrize("family", FAMILIES)
def test_uniformity_check_flags_a_wrong_group_sd_prior(family: str) -> None:
    """Negative control: the fit's prior on sd(Intercept|g) is 5 times narrower than the one τ
    was simulated from; with 8 groups on the link scale τ's posterior leans on its prior, so the
    true τ ranks high among the draws."""
    sim = NUTS_SIM_PRIORS[family]
    scale = float(sim["sd(Intercept|g)"].strip()[len("half_normal("):-1])
    wrong = dict(sim, **{"sd(Intercept|g)": f"half_normal({scale / 5:g})"})
    bad = run_sbc_nuts(family, 40, seed=SEEDS[family] + 100, draws_per_fit=L, fit_priors=wrong)
    p = uniformity_pvalues(bad, L, BINS)
    print(family, "wrong prior:", {k: f"{v:.2g}" for k, v in p.items()})
    assert "sd(Intercept|g)" in failing(p, ALPHA)


def test_cli_runs_a_nuts_family(tmp_path: Path) -> None:
    rc = main(["--family", "bernoulli", "--reps", "20", "--bins", "4", "--out", str(tmp_path), "--seed", "3"])
    assert rc == 0
    text = (tmp_path / "summary-bernoulli.md").read_text()
    assert "NUTS path: bernoulli" in text and "sd(Intercept|g)" in text and "p-value" in text
    lines = (tmp_path / "ranks-bernoulli.csv").read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith('rep,Intercept,x,sd(Intercept|g),"b[')
    assert not (tmp_path / "summary.md").exists()  # the exact path's check was not asked for


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        run_sbc_nuts("gaussian", 5)
