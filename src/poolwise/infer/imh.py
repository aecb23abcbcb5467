"""Independence Metropolis–Hastings with an adapted multivariate t₅ proposal, and the damped
Newton search with finite-difference derivatives that finds its centre.

For low-dimensional posteriors whose density is cheap to evaluate in batches — the
hyperparameters of the collapsed Gaussian models (:mod:`poolwise.infer.collapsed`), of the
Laplace-approximated ones (:mod:`poolwise.infer.laplace`) and of nested factors
(:mod:`poolwise.infer.nested`) — and for the REML optimizer (:mod:`poolwise.infer.empirical`).
A target is a callable taking rows of θ (B, d) to log densities (B,), with ``dim`` and
``center()`` (a starting point).  NumPy only.

Tierney, L. (1994). Markov chains for exploring posterior distributions. Annals of Statistics 22,
1701–1762 (independence Metropolis–Hastings).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import special

__all__ = ["IMH_MIN_ACCEPT", "chain_diagnostics"]


class _Target(Protocol):
    """What :func:`_imh` needs of a log density: batched evaluation, its dimension, a start."""

    dim: int

    def __call__(self, theta: np.ndarray) -> np.ndarray: ...

    def center(self) -> np.ndarray: ...


def _fd_derivs(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: np.ndarray
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """f(x), its gradient and Hessian by central differences with steps h (d,), in one batch.

    H_ij = [f(x+h_ie_i+h_je_j) − f(x+h_ie_i−h_je_j) − f(x−h_ie_i+h_je_j) + f(x−h_ie_i−h_je_j)]/(4h_ih_j)
    (1 + 4d² evaluations); the gradient from the diagonal points x ± 2h_ie_i.
    """
    d = x.size
    E = np.diag(h)
    sgn = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=float)
    pts = x + (sgn[None, None, :, 0, None] * E[:, None, None, :] + sgn[None, None, :, 1, None] * E[None, :, None, :])
    v = f(np.vstack([x[None], pts.reshape(-1, d)]))
    f0, v = float(v[0]), v[1:].reshape(d, d, 4)
    H = (v[..., 0] - v[..., 1] - v[..., 2] + v[..., 3]) / (4.0 * np.outer(h, h))
    ii = np.arange(d)
    g = (v[ii, ii, 0] - v[ii, ii, 3]) / (4.0 * h)
    return f0, g, 0.5 * (H + H.T)


def _newton_mode(f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, max_iter: int = 100,
                 h_max: float = 0.1) -> tuple[np.ndarray, float, np.ndarray | None, int]:
    """Minimize f (batched: rows in, values out) by damped Newton steps with finite differences.

    Each iteration evaluates the gradient and Hessian in one batch, takes the Newton direction
    of the Hessian with its eigenvalues made positive (a gradient direction where it is not
    finite), capped at length 3, and a step length chosen among 1, ½, …, 2⁻¹² in a second batch.
    Returns the minimizer, f there, the Hessian there (None if not positive definite and finite)
    and the number of function evaluations.
    """
    d = x0.size
    x, fx = x0.copy(), float(f(x0[None])[0])
    h = np.full(d, 1e-3)
    alphas = 2.0 ** -np.arange(13)
    n_eval = 1
    H: np.ndarray | None = None
    for _ in range(max_iter):
        _, g, H = _fd_derivs(f, x, h)
        n_eval += 1 + 4 * d * d
        if not np.all(np.isfinite(g)):
            return x, fx, None, n_eval
        step: np.ndarray
        pd = False
        if np.all(np.isfinite(H)):
            vals, vecs = np.linalg.eigh(H)
            pd = bool(vals.min() > 0)
            big = max(float(np.abs(vals).max()), 1e-300)
            vals = np.maximum(np.abs(vals), 1e-8 * big)
            step = -vecs @ ((vecs.T @ g) / vals)
            if pd:
                h = np.clip(0.5 * np.sqrt(np.diag((vecs / vals) @ vecs.T)), 1e-6, h_max)
        else:
            step = -g / max(float(np.linalg.norm(g)), 1e-300)
        norm = float(np.linalg.norm(step))
        if norm > 3.0:
            step *= 3.0 / norm
        if pd and float(-g @ step) < 1e-10:  # Newton decrement: at the mode
            break
        cand = x + alphas[:, None] * step
        fc = f(cand)
        n_eval += alphas.size
        fc = np.where(np.isfinite(fc), fc, np.inf)
        k = int(np.argmin(fc))
        if not fc[k] < fx:
            break
        x, fx = cand[k], float(fc[k])
    if H is None or not np.all(np.isfinite(H)):
        return x, fx, None, n_eval
    return x, fx, H, n_eval


_T_DF = 5.0


def _t_draws(rng: np.random.Generator, mu: np.ndarray, chol: np.ndarray, n: int, df: float = _T_DF) -> np.ndarray:
    d = mu.size
    z = rng.standard_normal((n, d))
    w = np.sqrt(df / rng.chisquare(df, size=n))
    out: np.ndarray = mu + (z @ chol.T) * w[:, None]
    return out


def _t_logpdf(x: np.ndarray, mu: np.ndarray, chol: np.ndarray, df: float = _T_DF) -> np.ndarray:
    d = mu.size
    z = np.linalg.solve(chol, (x - mu).T).T
    m = np.einsum("nd,nd->n", z, z)
    const = (special.gammaln(0.5 * (df + d)) - special.gammaln(0.5 * df) - 0.5 * d * math.log(df * math.pi)
             - float(np.log(np.diag(chol)).sum()))
    return np.asarray(const - 0.5 * (df + d) * np.log1p(m / df))


def _safe_chol(cov: np.ndarray) -> np.ndarray | None:
    """Cholesky factor of a symmetric matrix after clipping its eigenvalues; None if all ≤ 0."""
    cov = 0.5 * (cov + cov.T)
    if not np.all(np.isfinite(cov)):
        return None
    vals, vecs = np.linalg.eigh(cov)
    if vals.max() <= 0:
        return None
    vals = np.clip(vals, 1e-8 * vals.max(), None)
    return np.asarray(np.linalg.cholesky((vecs * vals) @ vecs.T))


# ----------------------------------------------------------------------------------------------
# convergence of the chains (NumPy twins of ArviZ's rank-normalized split R-hat and bulk/tail ESS)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each row of x (M, N) at lags 0..N−1, by FFT."""
    n = x.shape[1]
    size = 1 << int(math.ceil(math.log2(2 * n)))
    dev = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(dev, n=size, axis=1)
    return np.asarray(np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n)


def _ess(x: np.ndarray) -> float:
    """Effective sample size of chains x (M, N) with Geyer's initial monotone sequence (Stan's,
    ArviZ's ``method="bulk"`` before rank-normalization)."""
    m, n = x.shape
    if n < 4 or not np.all(np.isfinite(x)):
        return float("nan")
    acov = _autocov(x)
    chain_mean = x.mean(axis=1)
    mean_var = float(acov[:, 0].mean() * n / (n - 1))
    var_plus = mean_var * (n - 1) / n + (float(chain_mean.var(ddof=1)) if m > 1 else 0.0)
    if not var_plus > 0:
        return float("nan")
    rho = np.zeros(n)
    rho_even, rho_odd = 1.0, 1.0 - (mean_var - float(acov[:, 1].mean())) / var_plus
    rho[0], rho[1] = rho_even, rho_odd
    t = 1
    while t < n - 3 and rho_even + rho_odd > 0.0:
        rho_even = 1.0 - (mean_var - float(acov[:, t + 1].mean())) / var_plus
        rho_odd = 1.0 - (mean_var - float(acov[:, t + 2].mean())) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:  # ArviZ's improved estimate of the last term
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:  # the initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = 0.5 * (rho[t - 1] + rho[t])
        t += 2
    total = float(m * n)
    tau = -1.0 + 2.0 * float(rho[:max_t + 1].sum()) + float(rho[max_t + 1])
    tau = max(tau, 1.0 / math.log10(total))
    return total / tau


def _split(x: np.ndarray) -> np.ndarray:
    """Each chain (row) cut into its first and second half (the middle draw of an odd length dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalized draws: normal quantiles of the fractional ranks (ties averaged)."""
    flat = x.ravel()
    order = np.argsort(flat, kind="stable")
    srt = flat[order]
    new = np.r_[True, srt[1:] != srt[:-1]]  # the first of each run of ties
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], srt.size]
    r = np.empty(srt.size)
    r[order] = (0.5 * (starts + 1 + ends))[np.cumsum(new) - 1]  # the average of ranks start+1..end
    return np.asarray(special.ndtri((r.reshape(x.shape) - 0.375) / (x.size + 0.25)))


def _rhat_basic(x: np.ndarray) -> float:
    m, n = x.shape
    w = float(x.var(axis=1, ddof=1).mean())
    b = n * float(x.mean(axis=1).var(ddof=1))
    if not w > 0:
        return float("nan")
    return math.sqrt(((n - 1) / n * w + b / n) / w)


def chain_diagnostics(x: np.ndarray) -> tuple[float, float, float]:
    """Rank-normalized split R-hat, bulk ESS and tail ESS of one quantity's chains x (M, N)
    (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021; the same definitions as ArviZ's
    ``rhat`` and ``ess(method="bulk" | "tail")``).  NaN where they are undefined (a constant)."""
    x = np.asarray(x, dtype=float)
    if x.shape[1] < 8 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    s = _split(x)
    rhat_bulk = _rhat_basic(_z_scale(s))
    folded = np.abs(s - np.median(s))
    rhat_tail = _rhat_basic(_z_scale(folded))
    ess_bulk = _ess(_z_scale(s))
    lo, hi = np.quantile(x, [0.05, 0.95])
    tails = [_ess(_split((x <= q).astype(float))) for q in (lo, hi)]
    return max(rhat_bulk, rhat_tail), ess_bulk, min(tails)


#: the convergence rule the sampler holds its own chains to: the one every fit is judged by
#: (poolwise.fit.RHAT_MAX, ESS_PER_CHAIN: R-hat ≤ 1.01, bulk and tail ESS ≥ 100 per chain)
RHAT_MAX = 1.01
ESS_PER_CHAIN = 100
#: the sampler judges runs of at least this many draws in all (shorter ones are too noisy for R-hat)
_PILOT = 4000


@dataclass(frozen=True)
class _Mixing:
    """How well the chains mixed: the worst R-hat and ESS over the coordinates of θ and the log
    density, and the longest run of one repeated point in any chain."""

    rhat: float
    ess_bulk: float
    ess_tail: float
    longest_repeat: int
    repeat_chain: int
    chain_acceptance: tuple[float, ...]

    def ok(self, chains: int) -> bool:
        if not (np.isfinite(self.rhat) and np.isfinite(self.ess_bulk) and np.isfinite(self.ess_tail)):
            return False
        return (self.rhat <= RHAT_MAX and self.ess_bulk >= ESS_PER_CHAIN * chains
                and self.ess_tail >= ESS_PER_CHAIN * chains)

    def describe(self, n: int) -> str:
        return (f"chain {self.repeat_chain + 1} repeated one point for {self.longest_repeat} of {n} draws; R-hat "
                f"{self.rhat:.3f}, bulk ESS {self.ess_bulk:.0f}, tail ESS {self.ess_tail:.0f}; acceptance by chain "
                + ", ".join(f"{a:.2f}" for a in self.chain_acceptance))


def _mixing(theta: np.ndarray, lp: np.ndarray, accepted: np.ndarray) -> _Mixing:
    """:class:`_Mixing` of chains theta (C, N, d) with log densities lp (C, N)."""
    C, N, d = theta.shape
    rh, eb, et = [], [], []
    for x in [theta[..., k] for k in range(d)] + [lp]:
        r, b, t = chain_diagnostics(x)
        rh.append(r)
        eb.append(b)
        et.append(t)
    longest, where = 0, 0
    for c in range(C):
        moved = np.flatnonzero(np.r_[True, np.any(theta[c, 1:] != theta[c, :-1], axis=1), True])
        run = int(np.diff(moved).max())
        if run > longest:
            longest, where = run, c
    with np.errstate(invalid="ignore"):
        return _Mixing(rhat=float(np.nanmax(rh)) if not np.all(np.isnan(rh)) else float("nan"),
                       ess_bulk=float(np.nanmin(eb)) if not np.all(np.isnan(eb)) else float("nan"),
                       ess_tail=float(np.nanmin(et)) if not np.all(np.isnan(et)) else float("nan"),
                       longest_repeat=longest, repeat_chain=where,
                       chain_acceptance=tuple(float(a) for a in accepted.mean(axis=1)))


# ----------------------------------------------------------------------------------------------
# the sampler


@dataclass
class _ImhResult:
    theta: np.ndarray  # (C, D, d)
    lp: np.ndarray  # (C, D)
    accepted: np.ndarray  # (C, D)
    info: dict[str, Any]
    source: np.ndarray | None = None  # (C, D): each draw's row in the last batch the chains evaluated


IMH_MIN_ACCEPT = 0.3  # below this acceptance rate the sampler falls back to NUTS
_IS_DRAWS = 2000
_IS_ROUNDS = 2
_INFLATE = 1.2  # the importance-sampling rounds use t₅(mean, 1.2 × covariance)
_FINAL_INFLATE = 1.0  # the MH proposal: t₅(mean, refitted covariance) (its covariance is 5/3 of that)
#: the proposals tried in turn: (weight of a wide t₃ component with 4× the covariance, thinning);
#: the second is the fallback when the first one's chains fail the convergence rule
_ATTEMPTS = ((0.0, 1), (0.3, 4))
_WIDE_DF, _WIDE_SCALE = 3.0, 2.0


class _Proposal:
    """(1 − w)·t₅(μ, LL') + w·t₃(μ, (2L)(2L)'): the adapted t, with a heavier, wider defensive
    component (Hesterberg 1995) when w > 0, so the importance weights stay bounded where the
    posterior has a longer tail than the Laplace/importance fit found."""

    def __init__(self, mu: np.ndarray, chol: np.ndarray, wide: float) -> None:
        self.mu, self.chol, self.wide = mu, chol, wide

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        th = _t_draws(rng, self.mu, self.chol, n)
        if self.wide > 0:
            pick = rng.random(n) < self.wide
            th[pick] = _t_draws(rng, self.mu, _WIDE_SCALE * self.chol, int(pick.sum()), df=_WIDE_DF)
        return th

    def logpdf(self, th: np.ndarray) -> np.ndarray:
        base = _t_logpdf(th, self.mu, self.chol)
        if self.wide <= 0:
            return base
        wide = _t_logpdf(th, self.mu, _WIDE_SCALE * self.chol, df=_WIDE_DF)
        return np.asarray(np.logaddexp(math.log1p(-self.wide) + base, math.log(self.wide) + wide))


def _chains(target: _Target, prop: _Proposal, chains: int, n: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """chains × (n + 1) proposals; per chain, each is accepted with probability min(1, w_new / w_cur),
    w = posterior / proposal density.  The first proposal starts the chain."""
    d = prop.mu.size
    total = chains * (n + 1)
    th = prop.draw(rng, total)
    lp = getattr(target, "evaluate_chains", target)(th)  # a target may make its draws alongside
    lw = lp - prop.logpdf(th)
    th = th.reshape(chains, n + 1, d)
    lp = lp.reshape(chains, n + 1)
    lw = np.where(np.isfinite(lw), lw, -np.inf).reshape(chains, n + 1)
    log_u = np.log(rng.random((chains, n)))
    idx = np.zeros((chains, n), dtype=np.int64)
    acc = np.zeros((chains, n), dtype=bool)
    finite = True
    for c in range(chains):  # the sequential scan in plain floats (NumPy's per-call cost dominates here)
        w, u = lw[c].tolist(), log_u[c].tolist()
        ic, wc = 0, w[0]
        ii, aa = [0] * n, [False] * n
        for t in range(n):
            if u[t] < w[t + 1] - wc:
                ic, wc = t + 1, w[t + 1]
                aa[t] = True
            ii[t] = ic
        idx[c], acc[c] = ii, aa
        finite = finite and math.isfinite(wc)
    if not finite:
        return "a chain found no proposal of finite density"
    rows = np.arange(chains)[:, None]
    return th[rows, idx], lp[rows, idx], acc, idx


def _imh(target: _Target, chains: int, draws: int, rng: np.random.Generator) -> _ImhResult | str:
    """Independence Metropolis–Hastings with an adapted multivariate t₅ proposal, which checks its
    own chains and falls back before returning stuck ones.

    1. The mode of the log posterior in θ (damped Newton, :func:`_newton_mode`, with gradient
       and Hessian by central differences in one batch); the covariance from the Hessian there
       (steps refined to ½ a posterior SD).
    2. Adaptive importance sampling: 2000 draws from t₅(mean, 1.2·cov), self-normalized weights,
       mean and covariance refitted from the weighted draws (two rounds, starting at the mode).
    3. chains × (n + 1) proposals from t₅(mean, cov), n = max(draws, 4000 / chains); per chain, each
       proposal is accepted with probability min(1, w_new / w_cur), w = posterior / proposal
       density.  The first proposal starts the chain.  The draws are exact (MH), nearly
       independent when the proposal fits.
    4. The chains are judged as every fit is (:func:`chain_diagnostics` of each coordinate of θ
       and of the log density: R-hat ≤ 1.01, bulk and tail ESS ≥ 100 per chain).  An
       independence sampler sticks where the posterior / proposal ratio is large — in a tail the
       proposal misses — and stays there for many draws (a long run of one repeated point, a low
       acceptance in that chain).  When the chains fail, they are drawn again with a better
       proposal (a defensive mixture with a wide t₃ component) and 4× as long, keeping every 4th
       draw.  ``draws`` evenly spaced draws of each chain of the accepted attempt are returned.

    Returns the draws, with ``info["imh_retry"]`` saying why the first attempt was rejected, or a
    string saying why the proposal could not be built or why the chains still did not mix (the
    callers then fall back to NUTS).
    """
    d = target.dim
    x0 = target.center()
    if not np.isfinite(target(x0)[0]):
        return "the log posterior is not finite at the starting point"

    def neg(x: np.ndarray) -> np.ndarray:
        return -target(x)

    mode, f_mode, H, n_eval = _newton_mode(neg, x0)
    if not np.isfinite(f_mode):
        return "no finite mode found"
    cov: np.ndarray | None = None
    if H is not None:
        # the Hessian again with steps of ½ a posterior SD (the last one's may have been coarser)
        vals, vecs = np.linalg.eigh(H)
        if vals.min() > 0:
            h = np.clip(0.5 * np.sqrt(np.diag((vecs / vals) @ vecs.T)), 1e-6, 0.1)
            _, _, H2 = _fd_derivs(neg, mode, h)
            n_eval += 1 + 4 * d * d
            if np.all(np.isfinite(H2)) and np.linalg.eigvalsh(H2).min() > 0:
                H = H2
            cov = np.linalg.inv(H)
    if cov is None:
        return "the Hessian at the mode is not positive definite"
    mu = mode
    chol = _safe_chol(_INFLATE * cov)
    if chol is None:
        return "the Hessian at the mode is not positive definite"
    is_ess = float("nan")
    # a target whose evaluations are costly (one sparse factorization each) may ask for fewer
    for _ in range(_IS_ROUNDS):
        th = _t_draws(rng, mu, chol, int(getattr(target, "is_draws", _IS_DRAWS)))
        lw = target(th) - _t_logpdf(th, mu, chol)
        if not np.any(np.isfinite(lw)):
            break
        w = np.exp(lw - lw.max())
        w /= w.sum()
        is_ess = float(1.0 / np.sum(w * w))
        if is_ess < 5.0 * d + 10.0:  # too few effective draws to refit a covariance
            break
        new_mu = w @ th
        dev = th - new_mu
        new_cov = (w[:, None] * dev).T @ dev
        new_chol = _safe_chol(_INFLATE * new_cov)
        if new_chol is None:
            break
        mu, chol, cov = new_mu, new_chol, new_cov
    final = _safe_chol(_FINAL_INFLATE * cov)
    if final is not None:
        chol = final
    failed: list[str] = []
    base = max(draws, -(-_PILOT // chains))
    for wide, mult in _ATTEMPTS:
        n = base * mult
        got = _chains(target, _Proposal(mu, chol, wide), chains, n, rng)
        if isinstance(got, str):
            return got
        theta, lp, acc, src = got
        mix = _mixing(theta, lp, acc)
        if mix.ok(chains):
            break
        failed.append(mix.describe(n))
    else:
        return "its chains did not mix: " + "; then, with a wider proposal and longer chains, ".join(failed)
    thin = n // draws  # spread over the whole run (a pilot-length run is longer than draws × thin)
    keep = np.arange(thin - 1, draws * thin, thin)
    moved = acc[:, :draws * thin].reshape(chains, draws, thin).any(axis=2)  # a new point since the last kept draw
    info: dict[str, Any] = {
        "acceptance_rate": float(acc.mean()),
        "importance_ess": is_ess,
        "mode_evaluations": n_eval,
        "hyper_rhat": mix.rhat,
        "hyper_ess_bulk": mix.ess_bulk,
        "hyper_ess_tail": mix.ess_tail,
    }
    if failed:
        info["imh_retry"] = (f"The independence MH sampler of the hyperparameters stuck ({failed[0]}); it was run "
                             f"again with a wider, heavier-tailed proposal and {mult}× as many draws, keeping every "
                             f"{thin}th: R-hat {mix.rhat:.3f}, bulk ESS {mix.ess_bulk:.0f}, tail ESS "
                             f"{mix.ess_tail:.0f} over {n} draws per chain.")
        info["imh_thin"] = thin
    elif thin > 1:
        info["imh_thin"] = thin
    source = (np.arange(chains)[:, None] * (n + 1) + src)[:, keep]
    return _ImhResult(theta=theta[:, keep], lp=lp[:, keep], accepted=moved, info=info, source=source)
