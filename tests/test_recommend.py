"""cmp.recommend() on simulated data where the truth is known (exact path, 4 × 250 draws, 5 seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.compare import Recommendation


def _sim(seed: int, J: int, nmin: int, nmax: int, tau: float, sigma: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = rng.integers(nmin, nmax + 1, size=J)
    g = np.repeat(np.arange(J), n)
    b = rng.normal(0, tau, size=J) if tau > 0 else np.zeros(J)
    return pd.DataFrame({"y": 1.0 + b[g] + rng.normal(0, sigma, size=g.size), "g": [f"g{k:02d}" for k in g]})


def _choices(J: int, nmin: int, nmax: int, tau: float) -> list[str]:
    out = []
    for seed in range(5):
        cmp = pw.compare("y ~ 1 + (1 | g)", _sim(100 + seed, J, nmin, nmax, tau), draws=250, seed=seed)
        rec = cmp.recommend()
        assert isinstance(rec, Recommendation)
        out.append(rec.choice)
    return out


@pytest.mark.slow
def test_tau_zero_is_pooled_never_unpooled() -> None:
    c = _choices(20, 5, 15, 0.0)
    assert sum(x in ("pooled", "indistinguishable") for x in c) >= 4, c
    assert "unpooled" not in c, c


@pytest.mark.slow
def test_large_tau_large_groups_never_pooled() -> None:
    c = _choices(20, 50, 50, 5.0)
    assert all(x in ("unpooled", "hierarchical") for x in c), c


@pytest.mark.slow
def test_moderate_tau_small_groups_is_hierarchical() -> None:
    c = _choices(30, 2, 5, 0.5)
    assert sum(x == "hierarchical" for x in c) >= 4, c


def test_recommendation_reads_as_text() -> None:
    cmp = pw.compare("y ~ 1 + (1 | g)", _sim(1, 12, 3, 8, 0.5), draws=250, seed=0)
    rec = cmp.recommend()
    text = str(rec)
    assert text.startswith("Recommendation:")
    assert "ΔELPD" in text and "τ" in text and "λ_j" in text and "or fewer rows" in text
    assert rec.choice in ("pooled", "unpooled", "hierarchical", "indistinguishable")
    assert rec.preferred in ("pooled", "unpooled", "hierarchical")
    assert {"d_loo", "dse_loo", "d_logo", "dse_logo", "ruled_out"} <= set(rec.table.columns)
