"""Comparisons built from hand-made draws with the right shapes, for tests that need no sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd

import poolwise as pw
from poolwise.compare import POOLINGS, Comparison
from poolwise.fit import Fit
from poolwise.infer import BlockDraws, Draws
from poolwise.spec import ModelSpec


def hand_comparison(formula: str, df: pd.DataFrame, family: str = "gaussian", seed: int = 0, *, C: int = 2,
                    D: int = 40) -> Comparison:
    """Three Fits of ``formula`` from synthetic draws with the right shapes for each pooling."""
    rng = np.random.default_rng(seed)
    fits = {}
    for pooling in POOLINGS:
        bound = ModelSpec(formula, family=family, pooling=pooling).bind(pw.data.read_table(df))
        blocks = []
        for blk in bound.blocks:
            learned = blk.Sigma is None
            corr = None
            if learned and blk.term.correlated and blk.q > 1:
                corr = np.broadcast_to(0.3 + 0.7 * np.eye(blk.q), (C, D, blk.q, blk.q)).copy()
            blocks.append(BlockDraws(sd=np.abs(rng.normal(1.0, 0.1, (C, D, blk.q))) if learned else None, corr=corr,
                                     values=None if blk.pooled else rng.normal(size=(C, D, blk.n_groups, blk.q))))
        aux: dict[str, np.ndarray] = {name: np.abs(rng.normal(4.0, 0.2, (C, D))) for name in ("nu", "phi")
                                      if name in bound.spec.fam.params}
        draws = Draws(beta=rng.normal(0.5, 0.3, (C, D, len(bound.coef_names))), tau=None, b=None,
                      sigma=np.abs(rng.normal(1.0, 0.05, (C, D))) if bound.has_sigma else None, aux=aux,
                      blocks=tuple(blocks), method="nuts")
        fits[pooling] = Fit(bound, draws)
    return Comparison(fits)
