"""Outcomes the fit has not seen: the prior predictive draws of the observed rows, and the
encoding of new rows for :meth:`poolwise.fit.Fit.predict` (their offset, varying terms, the keys
of new groups and the family's arguments).

Plain functions of the bound spec and NumPy arrays; :class:`~poolwise.fit.Fit` calls them.
Nothing here is fitted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from .errors import DataError, SpecError, format_rows
from .formula import design_matrices
from .priors import Prior
from .query import offset_terms
from .spec import BoundSpec, GroupBlock, ModelSpec

__all__ = ["prior_predictive", "draw_prior", "lkj_cholesky", "linear_predictor", "new_family_kwargs",
           "encode_offset", "encode_Z"]


def draw_prior(rng: np.random.Generator, prior: Prior, n: int) -> np.ndarray:
    """``n`` draws from a scalar prior of poolwise's distributions."""
    k = prior.kwargs
    d = prior.dist
    if d == "normal":
        return k["mu"] + k["sigma"] * rng.standard_normal(n)
    if d == "student_t":
        return k["mu"] + k["sigma"] * rng.standard_t(k["df"], n)
    if d == "half_normal":
        return np.abs(k["sigma"] * rng.standard_normal(n))
    if d == "half_student_t":
        return np.abs(k["sigma"] * rng.standard_t(k["df"], n))
    if d == "half_cauchy":
        return np.abs(k["sigma"] * rng.standard_cauchy(n))
    if d == "exponential":
        return rng.exponential(1.0 / k["rate"], n)
    if d == "gamma":
        return rng.gamma(k["alpha"], 1.0 / k["beta"], n)
    raise SpecError(f"Cannot draw from the prior {prior} here.")


def lkj_cholesky(rng: np.random.Generator, eta: float, q: int, n: int) -> np.ndarray:
    """``n`` Cholesky factors (n, q, q) of LKJ(η) correlation matrices, by the onion method.

    Row i of the factor is (√y·u, √(1 − y)) with y ~ Beta(i/2, η + (q − 2)/2 − (i − 1)/2) and u
    uniform on the unit sphere (Lewandowski, Kurowicka & Joe 2009, as NumPyro's ``LKJCholesky``).
    """
    L = np.zeros((n, q, q))
    L[:, 0, 0] = 1.0
    for i in range(1, q):
        y = rng.beta(i / 2.0, eta + (q - 2) / 2.0 - (i - 1) / 2.0, n)
        u = rng.standard_normal((n, i))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        L[:, i, :i] = np.sqrt(y)[:, None] * u
        L[:, i, i] = np.sqrt(1.0 - y)
    return L


def prior_predictive(bound: BoundSpec, draws: int, seed: int, memory_budget: int) -> np.ndarray:
    """Outcomes of the observed rows from the prior predictive distribution, (draws, n_obs).

    See :meth:`poolwise.fit.Fit.prior_predictive`, which checks ``draws`` and the rows first.
    """
    b, fam = bound, bound.spec.fam
    need = draws * b.n_obs * 8
    if need > memory_budget:
        raise SpecError(
            f"The prior predictive array would take {need / 2**30:.1f} GiB (draws × rows), over the memory "
            f"budget of {memory_budget / 2**30:.2f} GiB.", hint="Ask for fewer draws.", option="draws")
    rng = np.random.default_rng(seed)

    def draw(prior: Prior) -> np.ndarray:
        return draw_prior(rng, prior, draws)

    beta = np.column_stack([draw(b.priors[c]) for c in b.coef_names]) if b.coef_names else np.zeros((draws, 0))
    eta = beta @ b.X.T + b.offset
    for block in b.blocks:
        q, J = block.q, block.n_groups
        if block.Sigma is not None:
            if block.pooled:
                continue
            vals, vecs = np.linalg.eigh(np.asarray(block.Sigma, dtype=float))
            factor = np.broadcast_to(vecs * np.sqrt(np.clip(vals, 0.0, None)), (draws, q, q))
        else:
            sd = np.column_stack([draw(b.priors[n]) for n in block.sd_names])
            cor = b.priors.get(f"cor({block.factor})")
            if block.term.correlated and q > 1:
                Lr = lkj_cholesky(rng, float(cor.args[0]) if cor is not None else 1.0, q, draws)
            else:
                Lr = np.broadcast_to(np.eye(q), (draws, q, q))
            factor = sd[:, :, None] * Lr
        values = np.einsum("dkl,djl->djk", factor, rng.standard_normal((draws, J, q)))  # (draws, J, q)
        for k in range(q):
            eta = eta + block.Z[:, k] * values[:, block.group, k]
    kw: dict[str, Any] = {"weights": b.weights, "trials": b.trials}
    if b.has_sigma:
        kw["sigma"] = draw(b.priors["sigma"])[:, None]
    for name in ("nu", "phi"):
        if name in fam.params:
            kw[name] = draw(b.priors[name])[:, None]
    return np.asarray(fam.sample(rng, eta, **kw))


def linear_predictor(
    bound: BoundSpec, frame: pd.DataFrame, beta: np.ndarray, values: Sequence[np.ndarray | None],
    sigma_factor: Callable[[int], np.ndarray], rng: np.random.Generator, *, groups: str = "all",
) -> tuple[np.ndarray, np.ndarray]:
    """η of new rows per draw, (C, D, rows), and whether each row has a new level in any factor.

    ``beta`` (C, D, p) and ``values`` (one (C, D, J, q) array per block, ``None`` when pooled) are
    the draws used; a row of a known group takes that group's values, a group not seen in
    fitting (or a row without the factor's columns) new values MVN(0, Σ) per draw, with
    ``sigma_factor(i)`` (C, D, q, q) a factor of block i's Σ, shared by the rows of one new group.
    With ``groups="none"`` every group value is 0 (lme4's ``re.form = NA``): η = Xβ + offset.
    """
    X = bound.encode_common(frame)
    offset = encode_offset(bound, frame)
    C, D = beta.shape[:2]
    n = len(frame)
    eta = np.einsum("cdp,np->cdn", beta, X) + offset
    any_new = np.zeros(n, dtype=bool)
    for i, (block, block_values) in enumerate(zip(bound.blocks, values)):
        idx = bound.encode_groups(frame, block)
        new = idx < 0
        any_new |= new
        if block_values is None or groups == "none":
            continue
        Z = encode_Z(bound, frame, block, X)
        vals = block_values[..., np.maximum(idx, 0), :]  # (C, D, n, q)
        if new.any():
            keys = _new_keys(frame, block, new)
            uniq, inv = np.unique(keys, return_inverse=True)
            L = sigma_factor(i)
            z = rng.standard_normal((C, D, len(uniq), block.q))
            drawn = np.einsum("cdkl,cdul->cduk", L, z)
            vals = _fill_new(vals, drawn, new, inv)
        eta = eta + np.einsum("cdnk,nk->cdn", vals, Z)
    return eta, any_new


def new_family_kwargs(spec: ModelSpec, frame: pd.DataFrame, kw: dict[str, Any], *, sigma_drawn: bool
                      ) -> dict[str, Any]:
    """Family arguments for responses of new rows: ``kw`` (the parameter draws) plus the new rows'
    trials or known standard errors, checked."""
    kw = dict(kw)
    if spec.fam.needs_trials and spec.failures is not None:  # cbind(successes, failures): their sum
        need = [c for c in (spec.outcome, *spec.failures.columns) if c not in frame.columns]
        cb = f"cbind({spec.outcome}, {spec.failures.text})"
        if need:
            raise DataError(f"Predicting binomial responses of {cb} needs the number of trials, "
                            f"{spec.outcome} + {spec.failures.text}: the new data lack {', '.join(need)}.",
                            hint="Add those columns to the new data or use kind='mean' (the success probability).",
                            column=need[0])
        trials = np.asarray(frame[spec.outcome], dtype=float) + np.asarray(
            spec.failures.evaluate(lambda c: np.asarray(frame[c], dtype=float)), dtype=float)
        bad = np.flatnonzero(~np.isfinite(trials) | (trials < 0) | (np.floor(trials) != trials))
        if bad.size:
            raise DataError(f"The trials {spec.outcome} + {spec.failures.text} of {cb} must be whole numbers >= 0 "
                            f"in the new data ({format_rows(bad.tolist())}).", hint="The number of trials is a count.",
                            column=spec.outcome, rows=bad.tolist())
        kw["trials"] = trials
    elif spec.fam.needs_trials:
        col = spec.trials
        if col is None or col not in frame.columns:
            raise DataError(f"Predicting binomial responses needs the trials column '{col}' in the new data.",
                            hint="Add it to the new data or use kind='mean' (the success probability).",
                            column=col)
        trials = np.asarray(frame[col], dtype=float)
        bad = np.flatnonzero(~np.isfinite(trials) | (trials < 0) | (np.floor(trials) != trials))
        if bad.size:
            raise DataError(f"Column '{col}' must hold whole numbers >= 0 in the new data "
                            f"({format_rows(bad.tolist())}).", hint="The number of trials is a count.",
                            column=col, rows=bad.tolist())
        kw["trials"] = trials
    if "sigma" in spec.fam.params and not sigma_drawn:
        if spec.se is None or spec.se not in frame.columns:
            raise DataError(f"Predicting responses needs the standard-error column '{spec.se}'.",
                            hint="Add it to the new data or use kind='mean'.", column=spec.se)
        kw["weights"] = 1.0 / np.asarray(frame[spec.se], dtype=float) ** 2
    if spec.weights:  # prior weights: a new row's residual variance σ²/w (or its log-likelihood × w)
        if spec.weights not in frame.columns:
            raise DataError(f"Predicting responses of a model with weights='{spec.weights}' needs that column in the "
                            "new data (a gaussian row's residual variance is sigma²/weight).",
                            hint=f"Add '{spec.weights}' to the new data (1 for a row like an unweighted one), or use "
                                 "kind='mean'.", column=spec.weights)
        w = np.asarray(frame[spec.weights], dtype=float)
        bad = np.flatnonzero(~np.isfinite(w) | (w <= 0))
        if bad.size:
            raise DataError(f"Column '{spec.weights}' must hold positive weights in the new data "
                            f"({format_rows(bad.tolist())}).", hint="Weights are positive numbers.",
                            column=spec.weights, rows=bad.tolist())
        kw["weights"] = w
    return kw


def encode_offset(bound: BoundSpec, frame: pd.DataFrame) -> np.ndarray:
    """The offset of new rows (zeros without ``offset()`` in the formula)."""
    b = bound
    enc = getattr(b, "encode_offset", None)
    if callable(enc):
        return np.asarray(enc(frame), dtype=float)
    if b.given is not None and b.given.common != b.spec.common:  # rows merged into counts: the offset
        terms = offset_terms(b.given.common)                      # as the user wrote it, on the new rows
        if not terms:
            return np.zeros(len(frame))
        missing = [v for v in b.given.variables if v not in frame.columns
                   and any(re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", t) for t in terms)]
        if missing:
            _data.check_columns(_data.read_table(frame), missing, context=" in the new data")
        with np.errstate(all="ignore"):
            dm = design_matrices(f"pw_response_ ~ 0 + {' + '.join(terms)}", frame.assign(pw_response_=0.0))
        full = dm.common.as_dataframe()
        off = full.to_numpy(dtype=float).sum(axis=1)
    elif "offset(" not in b.spec.common or b.design is None or b.design.common is None:
        return np.zeros(len(frame))
    else:
        full = b.design.common.evaluate_new_data(frame).as_dataframe()
        cols = [c for c in full.columns if str(c).startswith("offset(")]
        off = full[cols].to_numpy(dtype=float).sum(axis=1) if cols else np.zeros(len(frame))
    bad = np.flatnonzero(~np.isfinite(off))
    if bad.size:
        raise DataError(f"The offset is not finite on {bad.size} new rows ({format_rows(bad.tolist())}).",
                        hint="An offset such as log(exposure) needs exposure > 0.", rows=bad.tolist())
    return off


def encode_Z(bound: BoundSpec, frame: pd.DataFrame, block: GroupBlock, X: np.ndarray) -> np.ndarray:
    """Values of the block's varying terms on new rows, (rows, q); ``X`` their common design."""
    cols, dm = [], None
    for e in block.exprs:
        if e == "Intercept":
            cols.append(np.ones(len(frame)))
        elif e in bound.coef_names and getattr(getattr(bound.design, "common", None), "terms", {}).get(e) is not None:
            cols.append(X[:, bound.coef_names.index(e)])  # the same term, in the common design
        else:
            dm = design_matrices(block.term.design_formula(), frame.assign(pw_response_=0.0)) if dm is None else dm
            cols.append(np.asarray(dm.common[e], dtype=float).reshape(len(frame), -1)[:, 0])
    return np.column_stack(cols)


def _new_keys(frame: pd.DataFrame, block: GroupBlock, new: np.ndarray) -> np.ndarray:
    """A key per new row: its label when the factor columns are there, else one per row."""
    cols = list(block.term.factor_columns)
    rows = np.flatnonzero(new)
    if all(c in frame.columns for c in cols):
        parts = [np.asarray(_data.group_labels(_data.read_table(frame[[c]]), c)).astype(str) for c in cols]
        labels = parts[0]
        for p in parts[1:]:
            labels = np.char.add(np.char.add(labels, ":"), p)
        return np.asarray(labels[rows]).astype(str)
    return np.array([f"\x00row{r}" for r in rows])


def _fill_new(vals: np.ndarray, drawn: np.ndarray, new: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``vals`` (C, D, n, q) with the new rows replaced by their new group's draws (C, D, U, q)."""
    out = np.array(vals, copy=True)
    out[:, :, new, :] = drawn[:, :, np.asarray(inv).reshape(-1), :]
    return out
