"""Simulation-based calibration of the exact path (a small run of ``validation/sbc.py``).

A correct sampler gives uniform ranks; each quantity's ranks are tested with a chi-square test
over 10 bins at the Bonferroni threshold 0.001 / 7, so a correct sampler fails this test with
probability at most 0.001. The negative controls feed deliberately wrong posteriors through the
same check and require it to flag them, so the check is shown to be able to fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds validation/

from validation.sbc import SIM_PRIORS, default_sizes, failing, main, run_sbc, uniformity_pvalues  # noqa: E402

L = 99  # ranks in 0..99: 100 values, 10 per bin
BINS = 10
ALPHA = 0.001  # family-wise
REPS = 200  # 20 expected per bin: the chi-square approximation is good


@pytest.fixture(scope="module")
def ranks() -> dict[str, np.ndarray]:
    return run_sbc(REPS, seed=7, draws_per_fit=L)


def test_design_has_small_groups():
    sizes = default_sizes(8)
    assert sizes[0] == 1 and sizes[1] == 2 and len(set(sizes)) == 8


def test_exact_path_is_calibrated(ranks):
    assert set(ranks) >= {"Intercept", "x", "sigma", "sd(Intercept|g)"}
    assert len(ranks) == 7
    for r in ranks.values():
        assert r.shape == (REPS,) and r.min() >= 0 and r.max() <= L
    p = uniformity_pvalues(ranks, L, BINS)
    assert failing(p, ALPHA) == [], f"non-uniform SBC ranks: {p}"


def test_uniformity_check_flags_a_scaled_sigma():
    """Negative control 1: σ's draws scaled by 1.3 (a posterior too wide and shifted)."""
    bad = run_sbc(40, seed=8, draws_per_fit=L, perturb=lambda name, d: d * 1.3 if name == "sigma" else d)
    p = uniformity_pvalues(bad, L, BINS)
    assert "sigma" in failing(p, ALPHA)


def test_uniformity_check_flags_a_wrong_prior():
    """Negative control 2: the fit assumes τ ~ half_normal(0.25) while τ was simulated from
    half_normal(1); with 8 groups τ's posterior leans on its prior, so its ranks pile up high
    (at seed 9 the p-value is ~1e-55, far below the threshold 1.4e-4)."""
    wrong = dict(SIM_PRIORS, **{"sd(Intercept|g)": "half_normal(0.25)"})
    bad = run_sbc(100, seed=9, draws_per_fit=L, fit_priors=wrong)
    p = uniformity_pvalues(bad, L, BINS)
    assert "sd(Intercept|g)" in failing(p, ALPHA)


def test_uniformity_check_on_known_rank_sets():
    rng = np.random.default_rng(0)
    uniform = {"a": rng.integers(0, L + 1, size=400)}
    assert failing(uniformity_pvalues(uniform, L, BINS), ALPHA) == []
    skewed = {"a": np.minimum(rng.integers(0, L + 1, size=400), rng.integers(0, L + 1, size=400))}
    assert failing(uniformity_pvalues(skewed, L, BINS), ALPHA) == ["a"]
    with pytest.raises(ValueError, match="divide"):
        uniformity_pvalues(uniform, L, 7)


def test_cli_writes_ranks_and_summary(tmp_path):
    rc = main(["--reps", "40", "--bins", "4", "--out", str(tmp_path), "--seed", "3"])
    assert rc == 0
    text = (tmp_path / "summary.md").read_text()
    assert "sd(Intercept|g)" in text and "p-value" in text
    lines = (tmp_path / "ranks.csv").read_text().splitlines()
    assert len(lines) == 41 and lines[0].startswith("rep,Intercept,x,sigma")
