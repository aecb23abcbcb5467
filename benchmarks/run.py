"""Benchmark: poolwise against plain NumPyro NUTS (and PyMC + nutpie), side by side in one run.

Data sets, in the order they run: ``radon`` and ``synthetic`` (200,000 rows; random intercept,
poolwise exact), ``logistic`` (100,000 rows in 2,000 groups, correlated intercept and slope,
bernoulli; poolwise nuts vs NumPyro and, when its venv exists, PyMC + nutpie) and
``sleepstudy`` (correlated slopes, poolwise exact; last, so it measures the newest exact path).

Usage::

    python benchmarks/run.py --out benchmarks/results.md          # the full run (make bench)
    python benchmarks/run.py --quick --out /tmp/bench.md          # a smoke run (minutes)
    python benchmarks/run.py --only sleepstudy                    # re-measure a subset; the other
                                                                  # rows are kept from results.json

Every measurement runs in its own fresh Python process (a "worker": this same file, called
with ``--worker``), so that

* peak memory (``ru_maxrss`` of that child, read with :func:`os.wait4`) belongs to one task;
* the plain NumPyro baseline runs with JAX's defaults (float32), untouched by poolwise's NUTS
  path, which switches JAX to float64 when it is imported;
* one task's JIT caches and garbage do not flatter or burden the next.

Measured per row: wall time, the minimum bulk ESS over every posterior quantity (all
coefficients, σ, τ and every group deviation b_j), ESS per second, and the peak RSS of the
process.  The ratio is ESS/s of a row over the plain NumPyro row of the same data set, both
measured in this run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

RADON_FORMULA = "log_radon ~ floor + (1 | county)"
SYNTH_FORMULA = "y ~ x1 + x2 + (1 | g)"

SLEEP_FORMULA = "Reaction ~ Days + (Days | Subject)"
LOGISTIC_FORMULA = "y ~ x + (1 + x | g)"

SYNTH_ROWS = 200_000
LOGISTIC_ROWS = 100_000
LOGISTIC_GROUPS = 2_000
#: warmup+draws per chain of every sampler on the 100,000-row logistic set (NUTS over all rows
#: per gradient; the full 1000+1000 takes far longer than the benchmark's budget on 2 cores)
LOGISTIC_DEFAULT = "50+50"
#: each logistic row is stopped after this many seconds
LOGISTIC_TIMEOUT_S = 480.0
#: the separate virtual environment with PyMC and nutpie (git-ignored; created on demand)
PYMC_VENV = HERE / "_data" / "_venv_pymc"
#: NumPyro's warmup+draws per chain on the 200,000-row set (the full 1000+1000 takes hours here)
NUMPYRO_SYNTH_DEFAULT = "50+50"
#: NumPyro runs are stopped after this many seconds
NUMPYRO_TIMEOUT_S = 1800.0


# ----------------------------------------------------------------------------------------------
# data


def synthetic(n_rows: int = SYNTH_ROWS, n_groups: int = 5_000, seed: int = 20240601) -> Any:
    """``y = 1 + 0.5 x1 − 0.3 x2 + b_g + N(0, 1)``, ``b_g ~ N(0, 0.5²)``, very unequal group sizes.

    Group sizes are lognormal (σ = 1.5), scaled to sum to ``n_rows``, each at least 1: the
    smallest groups hold one row, the largest a few thousand.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=0.0, sigma=1.5, size=n_groups)
    sizes = np.maximum(1, np.floor(raw / raw.sum() * n_rows)).astype(np.int64)
    # fix the total exactly: add or remove rows from the largest groups
    diff = n_rows - int(sizes.sum())
    order = np.argsort(-sizes)
    i = 0
    while diff != 0:
        j = order[i % n_groups]
        step = 1 if diff > 0 else -1
        if sizes[j] + step >= 1:
            sizes[j] += step
            diff -= step
        i += 1
    g = np.repeat(np.arange(n_groups), sizes)
    rng.shuffle(g)
    b = rng.normal(0.0, 0.5, size=n_groups)
    x1 = rng.normal(size=n_rows)
    x2 = rng.normal(size=n_rows)
    y = 1.0 + 0.5 * x1 - 0.3 * x2 + b[g] + rng.normal(size=n_rows)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": np.char.add("g", g.astype(str))})


def logistic(n_rows: int = LOGISTIC_ROWS, n_groups: int = LOGISTIC_GROUPS, seed: int = 20240602) -> Any:
    """``y ~ Bernoulli(logit⁻¹(−0.5 + 0.7 x + a_g + b_g x))`` with correlated ``(a_g, b_g)``.

    ``(a_g, b_g) ~ N(0, Σ)``, SDs 0.8 and 0.4, correlation 0.5; ``x ~ N(0, 1)``.  Group sizes
    lognormal (σ = 1), scaled to sum to ``n_rows``, each at least 1 (from a handful of rows to
    a few hundred).  Needs only NumPy and pandas (the PyMC worker runs it in another venv).
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = _group_sizes(rng, n_rows, n_groups, sigma=1.0)
    g = np.repeat(np.arange(n_groups), sizes)
    rng.shuffle(g)
    sd, rho = np.array([0.8, 0.4]), 0.5
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    ab = (rng.normal(size=(n_groups, 2)) @ chol.T) * sd
    x = rng.normal(size=n_rows)
    eta = -0.5 + 0.7 * x + ab[g, 0] + ab[g, 1] * x
    y = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    return pd.DataFrame({"y": y, "x": x, "g": np.char.add("g", g.astype(str))})


def _group_sizes(rng: Any, n_rows: int, n_groups: int, sigma: float) -> Any:
    """Lognormal group sizes scaled to sum to exactly ``n_rows``, each at least 1."""
    import numpy as np

    raw = rng.lognormal(mean=0.0, sigma=sigma, size=n_groups)
    sizes = np.maximum(1, np.floor(raw / raw.sum() * n_rows)).astype(np.int64)
    diff = n_rows - int(sizes.sum())
    order = np.argsort(-sizes)
    i = 0
    while diff != 0:
        j = order[i % n_groups]
        step = 1 if diff > 0 else -1
        if sizes[j] + step >= 1:
            sizes[j] += step
            diff -= step
        i += 1
    return sizes


#: data set → (formula, family)
DATASETS = {
    "radon": (RADON_FORMULA, "gaussian"),
    "synthetic": (SYNTH_FORMULA, "gaussian"),
    "logistic": (LOGISTIC_FORMULA, "bernoulli"),
    "sleepstudy": (SLEEP_FORMULA, "gaussian"),
}


def load(dataset: str, quick: bool) -> tuple[Any, str]:
    """The data frame and formula of a data set (see :data:`DATASETS`)."""
    formula = DATASETS[dataset][0]
    if dataset == "radon":
        import poolwise.datasets

        return poolwise.datasets.radon(), formula
    if dataset == "sleepstudy":
        import poolwise.datasets

        return poolwise.datasets.sleepstudy(), formula
    if dataset == "logistic":
        return (logistic(n_rows=5_000, n_groups=100) if quick else logistic()), formula
    if quick:
        return synthetic(n_rows=5_000, n_groups=100), formula
    return synthetic(), formula


# ----------------------------------------------------------------------------------------------
# workers (each runs in a fresh process)


def _min_bulk_ess(posterior: Any) -> tuple[float, str]:
    """Minimum bulk ESS over every variable and every element, and where it is."""
    import arviz as az
    import numpy as np

    ess = az.ess(posterior, method="bulk")
    best, where = float("inf"), ""
    for name, da in ess.data_vars.items():
        vals = np.asarray(da.values, dtype=float).ravel()
        if vals.size == 0:
            continue
        i = int(np.nanargmin(vals))
        if vals[i] < best:
            best = float(vals[i])
            where = str(name) if vals.size == 1 else f"{name}[{i}]"
    return best, where


def worker_import() -> dict[str, Any]:
    import poolwise  # noqa: F401

    return {}


def worker_poolwise(dataset: str, method: str, quick: bool, chains: int, draws: int, warmup: int,
                    timed: bool, warm: bool = True) -> dict[str, Any]:
    """Fit with poolwise.  ``timed``: (with ``warm``) a warm-up fit first, then the timed fit, then
    the ESS; otherwise one fit alone (for peak memory)."""
    import numpy as np

    import poolwise as pw

    if method == "nuts":  # count JAX's import outside the timing, as for the NumPyro row
        import poolwise.infer.nuts  # noqa: F401

    df, formula = load(dataset, quick)
    out: dict[str, Any] = {"rows": len(df)}
    kw = dict(family=DATASETS[dataset][1], method=method, seed=0, chains=chains, draws=draws, warmup=warmup)
    if timed and warm:
        t0 = time.perf_counter()
        first = pw.fit(formula, df, **kw)
        out["cold_s"] = time.perf_counter() - t0
        del first
    t0 = time.perf_counter()
    f = pw.fit(formula, df, **kw)
    out["wall_s"] = time.perf_counter() - t0
    out["groups"] = int(np.asarray(f.bound.n_groups).ravel()[0])
    out["sampler_s"] = float(f.draws.info.get("seconds", float("nan")))
    if timed:
        out["min_ess"], out["min_ess_at"] = _min_bulk_ess(f.idata.posterior)
        out["eager_pointwise"] = bool(f.eager_pointwise)
        if method == "exact":
            out["acceptance_rate"] = f.draws.info.get("acceptance_rate")
        else:
            out["divergences"] = f.draws.info.get("divergences")
            out["target_accept"] = f.draws.info.get("target_accept")
    return out


def worker_numpyro(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                   priors: dict[str, Any]) -> dict[str, Any]:
    """Plain NumPyro NUTS, non-centered, JAX defaults (float32 unless the user asks otherwise)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import pandas as pd
    from numpyro.infer import MCMC, NUTS

    df, formula = load(dataset, quick)
    outcome = formula.split("~")[0].strip()
    group = formula.split("|")[1].strip(" )")
    preds = [t.strip() for t in formula.split("~")[1].split("+") if "|" not in t and t.strip() not in ("1", "")]
    X_np = np.column_stack([np.ones(len(df))] + [df[c].to_numpy(dtype=float) for c in preds])
    codes, levels = pd.factorize(df[group], sort=True)
    J = len(levels)
    X, y, g = jnp.asarray(X_np), jnp.asarray(df[outcome].to_numpy(dtype=float)), jnp.asarray(codes)
    m0 = jnp.asarray(priors["m0"])
    s0 = jnp.asarray(priors["s0"])

    def model(X: jax.Array, g: jax.Array, y: jax.Array | None = None) -> None:
        beta = numpyro.sample("beta", dist.Normal(m0, s0).to_event(1))
        sigma = numpyro.sample("sigma", dist.Exponential(priors["sigma_rate"]))
        tau = numpyro.sample("tau", dist.FoldedDistribution(dist.StudentT(priors["tau_df"], 0.0,
                                                                          priors["tau_scale"])))
        with numpyro.plate("groups", J):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        b = numpyro.deterministic("b", tau * z)
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ beta + b[g], sigma), obs=y)

    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), X, g, y=y, extra_fields=("diverging", "num_steps"))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    wall = time.perf_counter() - t0
    import arviz as az

    s = {k: np.asarray(v) for k, v in samples.items()}
    post = {"beta": s["beta"], "sigma": s["sigma"], "tau": s["tau"], "b": s["b"]}
    min_ess, at = _min_bulk_ess(az.from_dict(posterior=post).posterior)
    min_ess_z, _ = _min_bulk_ess(az.from_dict(posterior={"z": s["z"]}).posterior)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {
        "rows": len(df), "groups": J, "wall_s": wall, "min_ess": min_ess, "min_ess_at": at,
        "min_ess_z": min_ess_z, "dtype": str(s["beta"].dtype),
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "mean_steps": float(np.asarray(extra["num_steps"]).mean()),
        "chains": chains, "draws": draws, "warmup": warmup,
    }


def _slopes_arrays(dataset: str, quick: bool) -> dict[str, Any]:
    """Outcome, predictor and group codes of a ``y ~ x + (1 + x | g)`` data set (NumPy only)."""
    import numpy as np
    import pandas as pd

    df, formula = load(dataset, quick)
    outcome = formula.split("~")[0].strip()
    x_name = formula.split("~")[1].split("+")[0].strip()
    group = formula.split("|")[1].strip(" )")
    codes, levels = pd.factorize(df[group], sort=True)
    return {"y": df[outcome].to_numpy(dtype=float), "x": df[x_name].to_numpy(dtype=float),
            "g": codes.astype(np.int64), "J": len(levels), "rows": len(df)}


def worker_numpyro_slopes(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                          priors: dict[str, Any]) -> dict[str, Any]:
    """Plain NumPyro NUTS for ``y ~ x + (1 + x | g)`` with correlated (intercept, slope).

    Non-centered: ``s_k ~ half-t``, ``L ~ LKJCholesky(2, η)``, ``z_j ~ N(0, I)``,
    ``u_j = diag(s) L z_j``; gaussian or bernoulli (logit) likelihood.  JAX defaults (float32).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    a = _slopes_arrays(dataset, quick)
    J = a["J"]
    y, x, g = jnp.asarray(a["y"]), jnp.asarray(a["x"]), jnp.asarray(a["g"])
    m0, s0 = jnp.asarray(priors["m0"]), jnp.asarray(priors["s0"])
    sd_df, sd_scale = jnp.asarray(priors["sd_df"]), jnp.asarray(priors["sd_scale"])
    family = DATASETS[dataset][1]

    def model(x: jax.Array, g: jax.Array, y: jax.Array | None = None) -> None:
        beta = numpyro.sample("beta", dist.Normal(m0, s0).to_event(1))
        sds = numpyro.sample("sds", dist.FoldedDistribution(dist.StudentT(sd_df, 0.0, sd_scale)).to_event(1))
        L = numpyro.sample("L", dist.LKJCholesky(2, priors["eta"]))
        with numpyro.plate("groups", J):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        u = numpyro.deterministic("u", (z @ L.T) * sds)
        eta = beta[0] + beta[1] * x + u[g, 0] + u[g, 1] * x
        if family == "gaussian":
            sigma = numpyro.sample("sigma", dist.Exponential(priors["sigma_rate"]))
            with numpyro.plate("obs", x.shape[0]):
                numpyro.sample("y", dist.Normal(eta, sigma), obs=y)
        else:
            with numpyro.plate("obs", x.shape[0]):
                numpyro.sample("y", dist.BernoulliLogits(eta), obs=y)

    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), x, g, y=y, extra_fields=("diverging", "num_steps"))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    wall = time.perf_counter() - t0
    import arviz as az

    s = {k: np.asarray(v) for k, v in samples.items()}
    post = {"beta": s["beta"], "sds": s["sds"], "cor": s["L"][..., 1, 0], "u": s["u"]}
    if "sigma" in s:
        post["sigma"] = s["sigma"]
    min_ess, at = _min_bulk_ess(az.from_dict(posterior=post).posterior)
    min_ess_z, _ = _min_bulk_ess(az.from_dict(posterior={"z": s["z"]}).posterior)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {
        "rows": a["rows"], "groups": J, "wall_s": wall, "min_ess": min_ess, "min_ess_at": at,
        "min_ess_z": min_ess_z, "dtype": str(s["beta"].dtype),
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "mean_steps": float(np.asarray(extra["num_steps"]).mean()),
        "chains": chains, "draws": draws, "warmup": warmup,
    }


def worker_pymc(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                priors: dict[str, Any]) -> dict[str, Any]:
    """PyMC's model of ``y ~ x + (1 + x | g)``, sampled by nutpie (runs in the PyMC venv).

    The same non-centered parametrization and priors as the NumPyro row: ``LKJCholeskyCov``
    with ``η`` and half-t SDs, ``u = z Lᵀ`` (L the Cholesky factor of the covariance).
    """
    import numpy as np
    import nutpie
    import pymc as pm

    a = _slopes_arrays(dataset, quick)
    J = a["J"]
    family = DATASETS[dataset][1]
    t0 = time.perf_counter()
    with pm.Model() as model:
        beta = pm.Normal("beta", mu=np.asarray(priors["m0"]), sigma=np.asarray(priors["s0"]), shape=2)
        sd_dist = pm.HalfStudentT.dist(nu=np.asarray(priors["sd_df"]), sigma=np.asarray(priors["sd_scale"]),
                                       shape=2)
        chol, corr, sds = pm.LKJCholeskyCov("chol", n=2, eta=priors["eta"], sd_dist=sd_dist, compute_corr=True)
        pm.Deterministic("sds", sds)
        pm.Deterministic("cor", corr[0, 1])
        z = pm.Normal("z", 0.0, 1.0, shape=(J, 2))
        u = pm.Deterministic("u", z @ chol.T)
        g, x = a["g"], a["x"]
        eta = beta[0] + beta[1] * x + u[g, 0] + u[g, 1] * x
        if family == "gaussian":
            sigma = pm.Exponential("sigma", lam=priors["sigma_rate"])
            pm.Normal("y", mu=eta, sigma=sigma, observed=a["y"])
        else:
            pm.Bernoulli("y", logit_p=eta, observed=a["y"])
    compiled = nutpie.compile_pymc_model(model)
    compile_s = time.perf_counter() - t0
    idata = nutpie.sample(compiled, chains=chains, draws=draws, tune=warmup, seed=0, progress_bar=False)
    wall = time.perf_counter() - t0
    post = idata.posterior
    keep = [v for v in ("beta", "sds", "cor", "u", "sigma") if v in post]
    min_ess, at = _min_bulk_ess(post[keep])
    min_ess_z, _ = _min_bulk_ess(post[["z"]])
    out: dict[str, Any] = {
        "rows": a["rows"], "groups": J, "wall_s": wall, "compile_s": compile_s, "min_ess": min_ess,
        "min_ess_at": at, "min_ess_z": min_ess_z, "dtype": str(np.asarray(post["beta"]).dtype),
        "chains": chains, "draws": draws, "warmup": warmup,
    }
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        out["divergences"] = int(np.asarray(stats["diverging"]).sum())
    if stats is not None and "n_steps" in stats:
        out["mean_steps"] = float(np.asarray(stats["n_steps"]).mean())
    try:
        from importlib.metadata import version

        out["versions"] = {k: version(k) for k in ("pymc", "nutpie", "pytensor", "numba")}
    except Exception:  # pragma: no cover - reporting only
        pass
    return out


def worker_path(dataset: str, quick: bool) -> dict[str, Any]:
    """``pw.pooling_path(formula, df)`` with its default grid: a cold call, then the timed warm call."""
    import poolwise as pw

    df, formula = load(dataset, quick)
    t0 = time.perf_counter()
    pw.pooling_path(formula, df)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = pw.pooling_path(formula, df)
    wall = time.perf_counter() - t0
    return {"rows": len(df), "groups": int(p.n_groups), "cold_s": cold, "wall_s": wall,
            "grid_points": int(len(p.grid)), "route": str(p.method)}


def _re_formula(formula: str) -> tuple[str, str, str | None]:
    """(fixed-effects formula, group column, statsmodels ``re_formula``) of a one-block lme4 formula."""
    lhs, rhs = (s.strip() for s in formula.split("~"))
    terms = [t.strip() for t in rhs.split("+ (")]
    fixed = " + ".join(t for t in terms if "|" not in t)
    block = next(t for t in terms if "|" in t).strip("() ")
    re_part, group = (s.strip() for s in block.split("|"))
    re_terms = [t.strip() for t in re_part.split("+") if t.strip() not in ("1", "")]
    return f"{lhs} ~ {fixed}", group, (f"~{' + '.join(re_terms)}" if re_terms else None)


def worker_reml(dataset: str, tool: str, quick: bool) -> dict[str, Any]:
    """One REML fit (Gaussian) by ``tool``: poolwise (method="empirical"), statsmodels MixedLM or mixedlm-rs.

    Every tool: one warm-up fit of the same model first (imports, caches, JIT), then the timed fit, the
    whole call (statsmodels and mixedlm-rs: model construction from the formula included).  The
    estimates are returned on one scale: σ (residual SD), the group SDs, their correlation (slopes),
    β, and the REML log-likelihood.
    """
    import numpy as np

    df, formula = load(dataset, quick)
    if tool == "poolwise":
        import poolwise as pw

        def one() -> Any:
            return pw.fit(formula, df, method="empirical", seed=0)
    else:
        fixed, group, re_formula = _re_formula(formula)
        if tool == "statsmodels":
            import statsmodels.formula.api as smf

            sm_method: dict[str, Any] = {"method": ["lbfgs"]}

            def one() -> Any:
                return smf.mixedlm(fixed, df, groups=df[group], re_formula=re_formula).fit(reml=True, **sm_method)
        elif tool == "mixedlm-rs":
            import mixedlm_rs as mlm

            def one() -> Any:
                return mlm.mixedlm(fixed, df, groups=df[group], re_formula=re_formula).fit(reml=True)
        else:
            raise ValueError(tool)

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        one()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = one()
        wall = time.perf_counter() - t0
        failed = None
        if tool == "statsmodels" and not np.isfinite(res.llf):
            # lbfgs broke down (seen on radon: intercept 0, log-lik inf); time statsmodels' default instead
            failed = {"wall_s": wall, "llf": float(res.llf), "beta": [float(v) for v in np.asarray(res.fe_params)]}
            sm_method.clear()
            one()
            t0 = time.perf_counter()
            res = one()
            wall = time.perf_counter() - t0
    out: dict[str, Any] = {"rows": len(df), "cold_s": cold, "wall_s": wall}
    if failed is not None:
        out["lbfgs_failed"] = failed
        out["method"] = "statsmodels default (lbfgs failed)"
    if tool == "poolwise":
        info = res.draws.info
        est = info["estimates"]
        out.update(groups=int(np.asarray(res.bound.n_groups).ravel()[0]), loglik=float(info["loglik"]),
                   beta=[float(v) for v in est["beta"]], sigma=float(est["sigma"]),
                   sds=[float(v) for v in np.ravel(est["sd"])], converged=bool(info.get("converged")),
                   optimizer_s=info.get("seconds"), evaluations=info.get("evaluations"))
        cor = est.get("corr", est.get("cor"))
        if cor is not None:
            c = np.asarray(cor, dtype=float)
            out["cor"] = float(c[0, 1]) if c.ndim == 2 else float(np.ravel(c)[0])
    else:
        cov = np.atleast_2d(np.asarray(res.cov_re, dtype=float))
        sds = np.sqrt(np.diag(cov))
        n_groups = getattr(res.model, "n_groups", None)
        out.update(groups=None if n_groups is None else int(n_groups),
                   loglik=float(res.llf), beta=[float(v) for v in np.asarray(res.fe_params, dtype=float)],
                   sigma=float(np.sqrt(res.scale)), sds=[float(v) for v in sds],
                   converged=bool(getattr(res, "converged", True)))
        if cov.shape[0] == 2:
            out["cor"] = float(cov[0, 1] / (sds[0] * sds[1]))
        from importlib.metadata import version

        out["version"] = version("statsmodels" if tool == "statsmodels" else "mixedlm-rs")
    msgs = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
    if msgs:
        out["warnings"] = msgs[:5]
    return out


def worker_laplace(dataset: str, quick: bool, chains: int, draws: int) -> dict[str, Any]:
    """``pw.fit(..., method="laplace", seed=0)``: one warm-up fit, the timed fit, then min bulk ESS over β,
    the group SDs, the correlation and every group value (quantities constant across the draws, with no
    ESS, are listed in ``constant``)."""
    import arviz as az
    import numpy as np

    import poolwise as pw

    df, formula = load(dataset, quick)
    kw = dict(family=DATASETS[dataset][1], method="laplace", seed=0, chains=chains, draws=draws)
    t0 = time.perf_counter()
    pw.fit(formula, df, **kw)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    f = pw.fit(formula, df, **kw)
    wall = time.perf_counter() - t0
    post = f.idata.posterior
    ess = az.ess(post, method="bulk")
    best, where, constant = float("inf"), "", []
    for name, da in ess.data_vars.items():
        vals = np.asarray(da.values, dtype=float).ravel()
        if vals.size == 0:
            continue
        if np.all(np.isnan(vals)):
            constant.append(str(name))
            continue
        i = int(np.nanargmin(vals))
        if vals[i] < best:
            best, where = float(vals[i]), (str(name) if vals.size == 1 else f"{name}[{i}]")
    out: dict[str, Any] = {"rows": len(df), "groups": int(np.asarray(f.bound.n_groups).ravel()[0]),
                           "cold_s": cold, "wall_s": wall, "min_ess": best, "min_ess_at": where,
                           "variables": sorted(str(v) for v in post.data_vars)}
    if constant:
        out["constant"] = constant
    info = getattr(f.draws, "info", {}) or {}
    for k in ("seconds", "converged", "method", "loglik"):
        if k in info:
            out[f"info_{k}"] = info[k] if not isinstance(info[k], (np.floating, np.integer)) else float(info[k])
    return out


WORKERS = {"import": worker_import, "poolwise": worker_poolwise, "numpyro": worker_numpyro,
           "numpyro_slopes": worker_numpyro_slopes, "pymc": worker_pymc, "path": worker_path,
           "reml": worker_reml, "laplace": worker_laplace}


# ----------------------------------------------------------------------------------------------
# the parent: spawn, measure, tabulate


def spawn(task: str, timeout: float | None = None, python: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one worker in a fresh process; its JSON result plus its own peak RSS (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        res_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        cmd = [python or sys.executable, str(Path(__file__).resolve()), "--worker", task, "--worker-args",
               json.dumps(kwargs), "--worker-out", str(res_path)]
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            status, rusage = _wait(proc, timeout)
        elapsed = time.perf_counter() - t0
        if status != 0 or not res_path.exists():
            tail = log_path.read_text()[-3000:]
            return {"error": f"worker {task} failed (status {status}) after {elapsed:.0f} s", "log": tail,
                    "timed_out": status == -9}
        out = json.loads(res_path.read_text())
        out["peak_mib"] = rusage.ru_maxrss / 1024.0  # KiB on Linux
        out["process_s"] = elapsed
        return out


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> tuple[int, Any]:
    """Wait for the child with os.wait4 (its own rusage); kill it past the timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return -9, rusage
        time.sleep(0.05)


def numpyro_priors(dataset: str, quick: bool) -> dict[str, Any]:
    """The priors poolwise uses for this data set (its defaults), for the hand-written model."""
    import poolwise.data
    from poolwise.spec import ModelSpec

    df, formula = load(dataset, quick)
    bound = ModelSpec(formula).bind(poolwise.data.read_table(df))
    pri = bound.priors
    sigma, tau = pri["sigma"], pri[bound.sd_name]
    assert sigma.dist == "exponential" and tau.dist == "half_student_t", (sigma, tau)
    return {
        "m0": [pri[c].mean_sd()[0] for c in bound.coef_names],
        "s0": [pri[c].mean_sd()[1] for c in bound.coef_names],
        "sigma_rate": sigma.kwargs["rate"],
        "tau_df": tau.kwargs["df"],
        "tau_scale": tau.kwargs["sigma"],
        "text": "; ".join(f"{k} ~ {v}" for k, v in pri.items()),
    }


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    return {"cpus": str(os.cpu_count()), "affinity": str(len(os.sched_getaffinity(0))), "cpu": cpu, "ram": ram,
            "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("poolwise", "jax", "jaxlib", "numpyro", "arviz", "numpy", "scipy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x != x:
            return "—"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if 0 < abs(x) < 1:
            return f"{x:.2g}"
        return f"{x:.{nd}f}"
    return str(x)


def _parse_only(values: list[str] | None) -> list[str]:
    """The tasks named by ``--only`` (all when none), in the order they run: data sets, then
    ``path``, ``reml`` and ``laplace`` (:data:`EXTRA_TASKS`)."""
    if not values:
        return list(TASKS)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise SystemExit(f"--only: unknown task(s) {bad}; choose from {list(TASKS)}")
    return [d for d in TASKS if d in names]


def slopes_priors(dataset: str, quick: bool) -> dict[str, Any]:
    """poolwise's default priors for a ``y ~ x + (1 + x | g)`` model, for the hand-written models."""
    import poolwise.data
    from poolwise.spec import ModelSpec

    df, formula = load(dataset, quick)
    bound = ModelSpec(formula, family=DATASETS[dataset][1]).bind(poolwise.data.read_table(df))
    pri = bound.priors
    sds = [v for k, v in pri.items() if k.startswith("sd(")]
    cor = [v for k, v in pri.items() if k.startswith("cor(")]
    assert len(sds) == 2 and len(cor) == 1 and cor[0].dist == "lkj", pri
    assert all(v.dist == "half_student_t" for v in sds), sds
    out = {
        "m0": [pri[c].mean_sd()[0] for c in bound.coef_names],
        "s0": [pri[c].mean_sd()[1] for c in bound.coef_names],
        "sd_df": [v.kwargs["df"] for v in sds],
        "sd_scale": [v.kwargs["sigma"] for v in sds],
        "eta": cor[0].kwargs["eta"],
        "text": "; ".join(f"{k} ~ {v}" for k, v in pri.items()),
    }
    if "sigma" in pri:
        assert pri["sigma"].dist == "exponential", pri["sigma"]
        out["sigma_rate"] = pri["sigma"].kwargs["rate"]
    return out


def run_logistic(args: argparse.Namespace, quick: bool, chains: int, rows: list[dict[str, Any]],
                 notes: list[str], log: Callable[[str], None]) -> None:
    """poolwise nuts, plain NumPyro and PyMC + nutpie on the 100,000-row logistic set, same settings."""
    ds = "logistic"
    nw, nd = (50, 50) if quick else (int(v) for v in args.logistic.split("+"))
    settings = f"{chains}×({nw}+{nd})"
    pri = slopes_priors(ds, quick)
    timeout = args.logistic_timeout
    if not quick and (nw, nd) != (1000, 1000):
        notes.append(
            f"Every sampler on the logistic set ran at {settings}, not 4×(1000+1000): each gradient is a pass "
            f"over all {LOGISTIC_ROWS:,} rows and NUTS takes up to hundreds per iteration, so the full run would "
            f"take far longer than this benchmark's budget on this machine. ESS/s is as measured at these "
            f"settings; nothing is extrapolated. Short warmup means less adaptation, for every sampler alike.")

    def add(tool: str, r: dict[str, Any], baseline: bool = False) -> None:
        if "error" in r and r.get("timed_out"):
            notes.append(f"{tool} on the logistic set did not finish {settings} within {timeout:.0f} s and was "
                         f"stopped (`--logistic-timeout`); it has no ESS/s.")
        rows.append({"dataset": ds, "tool": tool, "settings": settings, "baseline": baseline, **r})
        log(f"{ds}: {tool} {json.dumps(r)[:2000]}")

    r = spawn("poolwise", dataset=ds, method="nuts", quick=quick, chains=chains, draws=nd, warmup=nw,
              timed=True, warm=False, timeout=timeout)
    add("poolwise nuts (float64)", r)
    r = spawn("numpyro_slopes", dataset=ds, quick=quick, chains=chains, draws=nd, warmup=nw, priors=pri,
              timeout=timeout)
    add(f"NumPyro NUTS ({r.get('dtype', 'float32')})", r, baseline=True)
    py = Path(args.pymc_python)
    if not py.exists():
        notes.append(f"PyMC + nutpie was not run: no Python at {py} (make it with `python -m venv "
                     f"benchmarks/_data/_venv_pymc && benchmarks/_data/_venv_pymc/bin/pip install pymc nutpie`).")
        return
    r = spawn("pymc", python=str(py), dataset=ds, quick=quick, chains=chains, draws=nd, warmup=nw, priors=pri,
              timeout=timeout)
    if "error" in r and not r.get("timed_out"):
        notes.append(f"PyMC + nutpie failed on the logistic set: {r['error']} (log in the details).")
    add("PyMC + nutpie", r)


def run_sleepstudy(args: argparse.Namespace, quick: bool, chains: int, draws: int, warmup: int,
                   rows: list[dict[str, Any]], notes: list[str], log: Callable[[str], None]) -> None:
    """poolwise exact against plain NumPyro NUTS on sleepstudy with correlated (intercept, slope)."""
    ds = "sleepstudy"
    pri = slopes_priors(ds, quick)
    r = spawn("poolwise", dataset=ds, method="exact", quick=quick, chains=chains, draws=draws, warmup=warmup,
              timed=True)
    m = spawn("poolwise", dataset=ds, method="exact", quick=quick, chains=chains, draws=draws, warmup=warmup,
              timed=False)
    if "error" not in r:
        r["peak_mib_timed_process"] = r.pop("peak_mib")
        r["peak_mib"] = m.get("peak_mib")
        r["one_fit_process_s"] = m.get("process_s")
    rows.append({"dataset": ds, "tool": "poolwise exact", "settings": f"{chains}×{draws}", **r})
    log(f"{ds}: poolwise exact {json.dumps(r)}")
    r = spawn("numpyro_slopes", dataset=ds, quick=quick, chains=chains, draws=draws, warmup=warmup, priors=pri,
              timeout=args.numpyro_timeout)
    rows.append({"dataset": ds, "tool": f"NumPyro NUTS ({r.get('dtype', 'float32')})",
                 "settings": f"{chains}×({warmup}+{draws})", "baseline": True, **r})
    log(f"{ds}: NumPyro {json.dumps(r)}")


#: tasks of ``--only`` besides the data sets: the pooling path, REML fits, the logistic laplace row
EXTRA_TASKS = ("path", "reml", "laplace")
TASKS = (*DATASETS, *EXTRA_TASKS)
#: data sets of the REML rows, in order
REML_DATASETS = ("synthetic", "radon", "sleepstudy")
#: the pooling-path target (seconds, warm call)
PATH_TARGET_S = 1.0
#: REML: poolwise at least this many times faster than statsmodels MixedLM on the 200,000-row set
REML_TARGET_X = 20.0


def task_of(row: dict[str, Any]) -> str:
    """The ``--only`` task a row belongs to (rows saved before tasks existed: their data set)."""
    return row.get("task", row["dataset"])


def run_path(quick: bool, rows: list[dict[str, Any]], task_notes: dict[str, list[str]],
             log: Callable[[str], None]) -> None:
    """The pooling path of radon with its default grid (no competitor: no other tool has one)."""
    r = spawn("path", dataset="radon", quick=quick)
    rows.append({"dataset": "radon", "task": "path", "tool": "poolwise pooling_path",
                 "settings": f"{r.get('grid_points', '?')} grid points", **r})
    log(f"radon: pooling path {json.dumps(r)[:2000]}")
    task_notes.setdefault("path", []).append(
        "Pooling path: no other tool computes one, so it has no competitor row; the equivalent by hand "
        "would be one fixed-τ fit per grid point.")


def _rs_python(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether mixedlm-rs imports in this Python, and why not."""
    chk = subprocess.run([sys.executable, "-c", "import mixedlm_rs; print(mixedlm_rs.__version__)"],
                         capture_output=True, text=True)
    if chk.returncode == 0:
        return True, chk.stdout.strip()
    return False, (chk.stderr.strip().splitlines() or ["import failed"])[-1]


def run_reml(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]],
             task_notes: dict[str, list[str]], log: Callable[[str], None]) -> None:
    """REML fits of poolwise, statsmodels MixedLM and (when it imports) mixedlm-rs, same data, same run."""
    notes = task_notes.setdefault("reml", [])
    have_rs, why = _rs_python(args)
    if not have_rs:
        notes.append(f"REML: mixedlm-rs was not run: it does not import in this environment ({why}); install it "
                     f"with `.venv/bin/pip install mixedlm-rs`.")
    tools = ["poolwise", "statsmodels"] + (["mixedlm-rs"] if have_rs else [])
    names = {"poolwise": "poolwise REML (empirical)", "statsmodels": "statsmodels MixedLM REML (lbfgs)",
             "mixedlm-rs": "mixedlm-rs REML"}
    for ds in REML_DATASETS:
        for tool in tools:
            r = spawn("reml", dataset=ds, tool=tool, quick=quick, timeout=args.numpyro_timeout)
            rows.append({"dataset": ds, "task": "reml", "tool": names[tool], "reml_tool": tool,
                         "settings": "REML", **r})
            log(f"{ds}: REML {tool} {json.dumps(r)[:2000]}")
            if "error" in r:
                notes.append(f"REML: {names[tool]} failed on {ds}: {r['error']} (log in the details).")


def run_laplace(args: argparse.Namespace, quick: bool, chains: int, rows: list[dict[str, Any]],
                task_notes: dict[str, list[str]], log: Callable[[str], None]) -> None:
    """poolwise ``method="laplace"`` on the logistic set, 4×1000 draws (skipped when the method is missing)."""
    ds, draws = "logistic", (100 if quick else 1000)
    notes = task_notes.setdefault("laplace", [])
    r = spawn("laplace", dataset=ds, quick=quick, chains=chains, draws=draws, timeout=args.logistic_timeout)
    if "error" in r and "laplace" in r.get("log", "") and ("must be one of" in r.get("log", "")
                                                          or "Unknown method" in r.get("log", "")):
        notes.append("poolwise laplace: skipped, `pw.fit(..., method=\"laplace\")` is not available in this "
                     "version of poolwise (it raised: "
                     + next((ln.strip() for ln in reversed(r["log"].splitlines()) if "Error" in ln), "?")
                     + ").")
        log(f"{ds}: poolwise laplace skipped (method not available)")
        return
    if "error" in r:
        notes.append(f"poolwise laplace on the logistic set failed: {r['error']} (log in the details).")
    else:
        notes.append(
            "poolwise laplace: `pw.fit(\"y ~ x + (1 + x | g)\", df, family=\"bernoulli\", method=\"laplace\", "
            f"seed=0)`, {chains}×{draws} draws, timed warm (after one warm-up fit in the same process). Laplace is "
            "an approximation of the posterior (checked against NUTS), not an exact sampler: its draws are "
            "(near) independent, so its ESS measures the approximation's draws, not MCMC mixing. It was "
            "measured in a later run than the NumPyro and PyMC + nutpie rows it is compared with (each row's "
            "`run_started` in the details).")
        if r.get("constant"):
            notes.append(f"poolwise laplace: {', '.join(r['constant'])} are constant across the draws (point "
                         "estimates) and have no ESS; the min ESS is over the other quantities.")
    rows.append({"dataset": ds, "task": "laplace", "tool": "poolwise laplace", "settings": f"{chains}×{draws}",
                 **r})
    log(f"{ds}: poolwise laplace {json.dumps(r)[:2000]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results.md"), help="Markdown file to write")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 4×100 draws (+100 warmup), 5,000-row synthetic set in 100 groups, no poolwise-nuts row")
    ap.add_argument("--numpyro-synthetic", default=NUMPYRO_SYNTH_DEFAULT, metavar="WARMUP+DRAWS",
                    help="NumPyro settings per chain on the 200,000-row set (default %(default)s; the full "
                         "1000+1000 takes hours on 2 cores)")
    ap.add_argument("--numpyro-timeout", type=float, default=NUMPYRO_TIMEOUT_S,
                    help="stop a NumPyro run after this many seconds (default %(default)s)")
    ap.add_argument("--skip-numpyro-synthetic", action="store_true", help="do not run NumPyro on the synthetic set")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help=f"run only these data sets or tasks ({', '.join(TASKS)}; repeat or comma-separate; "
                         "path = radon's pooling path, reml = REML vs statsmodels (and mixedlm-rs), laplace = "
                         "poolwise laplace on the logistic set); the rows of the others are kept from the saved "
                         "results .json next to --out")
    ap.add_argument("--no-merge", action="store_true", help="with --only: do not keep the other data sets' rows")
    ap.add_argument("--logistic", default=LOGISTIC_DEFAULT, metavar="WARMUP+DRAWS",
                    help="warmup+draws per chain of every sampler on the 100,000-row logistic set "
                         "(default %(default)s)")
    ap.add_argument("--logistic-timeout", type=float, default=LOGISTIC_TIMEOUT_S,
                    help="stop each logistic row after this many seconds (default %(default)s)")
    ap.add_argument("--pymc-python", default=str(PYMC_VENV / "bin" / "python"),
                    help="Python with pymc and nutpie for the PyMC row (default %(default)s; made with "
                         "`python -m venv benchmarks/_data/_venv_pymc && benchmarks/_data/_venv_pymc/bin/pip "
                         "install pymc nutpie`); the row is skipped, with a note, when it is missing")
    ap.add_argument("--from-json", help="re-render the Markdown from a saved results .json (no measuring)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.from_json:  # re-render a finished run's table (no measuring)
        saved = json.loads(Path(args.from_json).read_text())
        text = render(saved["rows"], saved["notes"], saved["bare"], _dt.datetime.fromisoformat(saved["started"]),
                      saved["total_s"], saved["quick"], args, saved.get("task_notes", {}))
        Path(args.out).write_text(text)
        print(text)
        return 0

    if args.worker:
        result = WORKERS[args.worker](**json.loads(args.worker_args))
        Path(args.worker_out).write_text(json.dumps(result))
        return 0

    quick = args.quick
    chains = 4
    draws, warmup = (100, 100) if quick else (1000, 1000)
    started = _dt.datetime.now().astimezone()
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    task_notes: dict[str, list[str]] = {}  # notes of the path / reml / laplace tasks

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    bare = spawn("import")
    log(f"bare `import poolwise`: peak RSS {bare.get('peak_mib', float('nan')):.0f} MiB")

    only = _parse_only(args.only)
    for dataset in ("radon", "synthetic"):
        if dataset not in only:
            continue
        pri = numpyro_priors(dataset, quick)
        # poolwise exact: warm-up fit + timed fit (+ ESS) in one process ...
        r = spawn("poolwise", dataset=dataset, method="exact", quick=quick, chains=chains, draws=draws,
                  warmup=warmup, timed=True)
        # ... and peak memory of one fit alone, in a fresh process
        m = spawn("poolwise", dataset=dataset, method="exact", quick=quick, chains=chains, draws=draws,
                  warmup=warmup, timed=False)
        if "error" not in r:
            r["peak_mib_timed_process"] = r.pop("peak_mib")
            r["peak_mib"] = m.get("peak_mib")
            r["one_fit_process_s"] = m.get("process_s")
        rows.append({"dataset": dataset, "tool": "poolwise exact", "settings": f"{chains}×{draws}", **r})
        log(f"{dataset}: poolwise exact {json.dumps(r)}")

        if dataset == "radon" and not quick:
            r = spawn("poolwise", dataset=dataset, method="nuts", quick=quick, chains=chains, draws=draws,
                      warmup=warmup, timed=True, warm=False)
            rows.append({"dataset": dataset, "tool": "poolwise nuts (float64)",
                         "settings": f"{chains}×({warmup}+{draws})", **r})
            log(f"{dataset}: poolwise nuts {json.dumps(r)}")

        if dataset == "synthetic" and args.skip_numpyro_synthetic:
            notes.append("NumPyro was not run on the synthetic set (--skip-numpyro-synthetic).")
            continue
        nw, nd = warmup, draws
        if dataset == "synthetic" and not quick:
            nw, nd = (int(v) for v in args.numpyro_synthetic.split("+"))
            if (nw, nd) != (warmup, draws):
                notes.append(
                    f"NumPyro on the synthetic set ran at 4×({nw}+{nd}), not 4×({warmup}+{draws}): on this machine "
                    f"4×(50+50) alone takes several minutes (NUTS trajectories of hundreds of gradient "
                    f"evaluations, each over all {SYNTH_ROWS:,} rows), so the full run would take hours. Its ESS/s "
                    f"is as measured at these settings; nothing is extrapolated. Short warmup also means less "
                    f"adaptation, which lowers NumPyro's ESS; set `--numpyro-synthetic 1000+1000` for the full run.")
        r = spawn("numpyro", dataset=dataset, quick=quick, chains=chains, draws=nd, warmup=nw, priors=pri,
                  timeout=args.numpyro_timeout)
        if "error" in r and r.get("timed_out"):
            notes.append(f"NumPyro on {dataset} did not finish within {args.numpyro_timeout:.0f} s and was stopped.")
        rows.append({"dataset": dataset, "tool": f"NumPyro NUTS ({r.get('dtype', '?')})",
                     "settings": f"{chains}×({nw}+{nd})", "baseline": True, **r})
        log(f"{dataset}: NumPyro {json.dumps(r)}")

    # the correlated-slopes data sets; sleepstudy last, so that it sees the newest exact path
    if "logistic" in only:
        run_logistic(args, quick, chains, rows, notes, log)
    if "sleepstudy" in only:
        run_sleepstudy(args, quick, chains, draws, warmup, rows, notes, log)
    if "path" in only:
        run_path(quick, rows, task_notes, log)
    if "reml" in only:
        run_reml(args, quick, rows, task_notes, log)
    if "laplace" in only:  # last: the method is newest
        run_laplace(args, quick, chains, rows, task_notes, log)

    # rows of the data sets not run now come from the saved results (--only)
    merged_from = None
    if set(only) != set(TASKS) and not args.no_merge:
        saved_path = Path(args.out).with_suffix(".json")
        if saved_path.exists():
            saved = json.loads(saved_path.read_text())
            if bool(saved.get("quick")) == quick:
                merged_from = saved.get("started")
                kept = [r for r in saved["rows"] if task_of(r) not in only]
                for r in kept:
                    r.setdefault("run_started", saved.get("started"))
                ran = [ds for ds in only if ds in DATASETS]
                kept_notes = [n for n in saved.get("notes", []) if not n.startswith("This run measured only")
                              and not any(f" {ds} " in f" {n} " or f"the {ds} set" in n for ds in ran)]
                for t, ns in saved.get("task_notes", {}).items():
                    if t not in only:
                        task_notes[t] = ns
                rows[:] = kept + rows
                notes[:] = kept_notes + notes
    # data set order, then task order (the sort is stable: within a task, the order rows ran in)
    rows.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), list(TASKS).index(task_of(r))))
    for row in rows:
        row.setdefault("run_started", started.isoformat())

    # ratios against the NumPyro row of the same data set
    for row in rows:
        if "min_ess" in row and "wall_s" in row:
            row["ess_per_s"] = row["min_ess"] / row["wall_s"]
    for row in rows:
        base = next((b for b in rows if b.get("baseline") and b["dataset"] == row["dataset"]
                     and "ess_per_s" in b), None)
        if base is not None and "ess_per_s" in row and not row.get("baseline"):
            row["ratio"] = row["ess_per_s"] / base["ess_per_s"]
        # logistic: poolwise against the best of the others (NumPyro, PyMC + nutpie)
        if row["dataset"] == "logistic" and row["tool"].startswith("poolwise") and "ess_per_s" in row:
            others = [b["ess_per_s"] for b in rows if b["dataset"] == "logistic"
                      and not b["tool"].startswith("poolwise") and "ess_per_s" in b]
            if others:
                row["ratio_best_other"] = row["ess_per_s"] / max(others)

    for row in rows:
        if row["run_started"] == started.isoformat() and row.get("baseline") and row.get("divergences"):
            notes.append(f"NumPyro on {row['dataset']} had {row['divergences']} divergent transitions at "
                         f"{row['settings']}; its ESS there (and so the ratio) comes from a poorly adapted run and "
                         f"says only that plain NUTS does not get far in that time, not what a full run would give.")
    if merged_from is not None:
        runs = sorted({r["run_started"] for r in rows})
        notes.append(f"This run measured only {', '.join(only)} (`--only`); the other rows are kept from earlier "
                     f"runs ({len(runs)} runs in all, started {', '.join(r[:16] for r in runs)}; each row's "
                     f"`run_started` in the details). The NumPyro ratios and the REML comparisons use rows of one "
                     f"data set measured in the same run; the poolwise laplace row is compared with NumPyro and "
                     f"PyMC + nutpie rows from an earlier run.")
    # REML: statsmodels' (and mixedlm-rs') wall time over each row's, on the same data set in the same run
    for row in rows:
        if task_of(row) != "reml" or "wall_s" not in row:
            continue
        same = [b for b in rows if task_of(b) == "reml" and b["dataset"] == row["dataset"] and "wall_s" in b
                and b.get("run_started") == row.get("run_started")]
        for ref in ("statsmodels", "mixedlm-rs"):
            b = next((b for b in same if b.get("reml_tool") == ref), None)
            if b is not None:
                row[f"x_vs_{ref}"] = b["wall_s"] / row["wall_s"]
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "notes": notes, "task_notes": task_notes, "bare": bare, "started": started.isoformat(),
         "total_s": time.perf_counter() - t_start, "quick": quick, "only": only}, indent=1))
    text = render(rows, notes, bare, started, time.perf_counter() - t_start, quick, args, task_notes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


def _vec(v: Any) -> str:
    return "—" if v is None else ", ".join(f"{x:.4g}" for x in v)


def render(rows: list[dict[str, Any]], notes: list[str], bare: dict[str, Any], started: _dt.datetime,
           total_s: float, quick: bool, args: argparse.Namespace,
           task_notes: dict[str, list[str]] | None = None) -> str:
    task_notes = task_notes or {}
    all_rows = rows
    rows = [r for r in all_rows if task_of(r) not in ("path", "reml")]
    fits = [r for r in all_rows if task_of(r) == "reml"]
    paths = [r for r in all_rows if task_of(r) == "path"]
    mach, ver = machine(), versions()
    L: list[str] = []
    L.append("# poolwise benchmark: poolwise vs plain NumPyro NUTS (and PyMC + nutpie)")
    L.append("")
    if quick:
        L.append("**QUICK SMOKE RUN (`--quick`): 4×100 draws, 5,000-row synthetic set. Not the benchmark.**")
        L.append("")
    L.append(f"- Date: {started:%Y-%m-%d %H:%M %Z}; whole benchmark took {total_s:.0f} s")
    L.append(f"- Machine: {mach['cpus']} CPUs ({mach['affinity']} usable), {mach['cpu']}, {mach['ram']} RAM; "
             f"{mach['platform']}, Python {mach['python']}")
    L.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    L.append(f"- Command: `python benchmarks/run.py{' --quick' if quick else ''} --out {args.out}`")
    L.append("")
    L.append("| data set | tool | settings | rows | groups | wall s | min bulk ESS | ESS/s | peak MiB | "
             "ratio ESS/s vs NumPyro |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            what = "stopped (timeout)" if r.get("timed_out") else "failed"
            L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | | | {what} | | | | |")
            continue
        ratio = "1 (baseline)" if r.get("baseline") else (
            (f"{r['ratio']:,.0f}×" if r["ratio"] >= 10 else f"{r['ratio']:.2f}×") if "ratio" in r else "—")
        L.append(f"| {r['dataset']} | {r['tool']} | {r['settings']} | {r['rows']:,} | {r['groups']:,} | "
                 f"{_fmt(r['wall_s'], 2)} | {_fmt(r.get('min_ess'), 0)} | {_fmt(r.get('ess_per_s'), 1)} | "
                 f"{_fmt(r.get('peak_mib'), 0)} | {ratio} |")
    L.append("")
    if fits or paths:
        L.append("### Point estimates: REML, and the pooling path")
        L.append("")
        L.append("Wall time of one warm call (after a warm-up call in the same fresh process). The estimates "
                 "are the REML fit's: σ the residual SD, τ the group SD(s), cor their correlation (slopes).")
        L.append("")
        L.append("| data set | tool | rows | groups | wall s | × faster than statsmodels | × faster than "
                 "mixedlm-rs | REML log-lik | σ | τ | cor | β |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in fits:
            if "error" in r:
                what = "stopped (timeout)" if r.get("timed_out") else "failed"
                L.append(f"| {r['dataset']} | {r['tool']} | | | {what} | | | | | | | |")
                continue

            def x(k: str) -> str:
                v = r.get(k)
                return "—" if v is None else (f"{v:,.0f}×" if v >= 10 else f"{v:.2f}×")
            groups = "—" if r.get("groups") is None else f"{r['groups']:,}"
            tool = r["tool"] + (" → default method (lbfgs broke down)" if r.get("lbfgs_failed") else "")
            L.append(f"| {r['dataset']} | {tool} | {r['rows']:,} | {groups} | {_fmt(r['wall_s'], 3)} | "
                     f"{x('x_vs_statsmodels')} | {x('x_vs_mixedlm-rs')} | {r['loglik']:,.3f} | {r['sigma']:.5g} | "
                     f"{_vec(r.get('sds'))} | {_fmt(r.get('cor'), 4)} | {_vec(r.get('beta'))} |")
        for r in paths:
            if "error" in r:
                L.append(f"| {r['dataset']} | {r['tool']} | | | failed | | | | | | | |")
                continue
            L.append(f"| {r['dataset']} | {r['tool']} ({r['grid_points']} τ values, {r['route']}) | {r['rows']:,} | "
                     f"{r['groups']:,} | {_fmt(r['wall_s'], 3)} | — | — | | | | | |")
        L.append("")
    L.append("## Targets")
    L.append("")
    checks = []
    for ds in ("radon", "synthetic", "sleepstudy"):
        ex = next((r for r in rows if r["dataset"] == ds and r["tool"] == "poolwise exact"), None)
        ratio = None if ex is None else ex.get("ratio")
        what = "sleepstudy (correlated slopes)" if ds == "sleepstudy" else ds
        checks.append((f"{what}: poolwise exact ≥ 100× NumPyro's ESS/s",
                       None if ratio is None else ratio >= 100, "—" if ratio is None else f"{ratio:,.0f}×"))
    lg = next((r for r in rows if r["dataset"] == "logistic" and r["tool"] == "poolwise laplace"
               and "ess_per_s" in r), None)
    if lg is not None:
        rb = lg.get("ratio_best_other")
        others = [r for r in rows if r["dataset"] == "logistic" and not r["tool"].startswith("poolwise")
                  and "ess_per_s" in r]
        best = max(others, key=lambda r: r["ess_per_s"])["tool"] if others else "—"
        checks.append(("logistic (100,000 rows, correlated slopes): poolwise ≥ 1× the best other's ESS/s — "
                       "measured with `method=\"laplace\"`, an approximation of the posterior checked against "
                       "NUTS (not an exact sampler)", None if rb is None else rb >= 1.0,
                       "—" if rb is None else f"{rb:,.0f}× of {best} ({lg['ess_per_s']:,.1f} vs "
                       f"{max(r['ess_per_s'] for r in others):.3g} ESS/s), poolwise laplace at {lg['settings']}, "
                       f"the others at {others[0]['settings'] if others else '—'}"))
        lg = None  # the nuts row is not the one tested when the laplace row is there
    else:
        lg = next((r for r in rows if r["dataset"] == "logistic" and r["tool"].startswith("poolwise nuts")), None)
    if lg is not None:
        rb = lg.get("ratio_best_other")
        others = [r for r in rows if r["dataset"] == "logistic" and not r["tool"].startswith("poolwise")
                  and "ess_per_s" in r]
        best = max(others, key=lambda r: r["ess_per_s"])["tool"] if others else "—"
        val = "—" if rb is None else f"{rb:.2f}× of {best}, at {lg.get('settings')}"
        ok = None if rb is None else rb >= 1.0
        if "error" in lg:
            ok = False if (lg.get("timed_out") and others) else None
            val = (f"poolwise nuts did not finish {lg.get('settings')} within the timeout; "
                   + ", ".join(f"{r['tool']} finished in {r['wall_s']:.0f} s" for r in others))
        checks.append(("logistic (100,000 rows, correlated slopes): poolwise nuts ≥ 1× the best other's ESS/s",
                       ok, val))
    ex = next((r for r in rows if r["dataset"] == "synthetic" and r["tool"] == "poolwise exact"), None)
    if ex and "wall_s" in ex:
        checks.append((f"{ex['rows']:,}-row fit under 3 s wall time", ex["wall_s"] < 3.0, f"{ex['wall_s']:.2f} s"))
        pk = ex.get("peak_mib")
        checks.append((f"{ex['rows']:,}-row fit under 2 GiB peak memory", None if pk is None else pk < 2048,
                       "—" if pk is None else f"{pk:,.0f} MiB"))
    pth = next((r for r in paths if "wall_s" in r), None)
    checks.append((f"radon pooling path ({pth['grid_points'] if pth else 101} τ values, default grid) under "
                   f"{PATH_TARGET_S:.0f} s wall time", None if pth is None else pth["wall_s"] < PATH_TARGET_S,
                   "—" if pth is None else f"{pth['wall_s']:.3f} s warm, {pth['cold_s']:.2f} s first call"))
    pr = next((r for r in fits if r["dataset"] == "synthetic" and r.get("reml_tool") == "poolwise"
               and "wall_s" in r), None)
    xs = None if pr is None else pr.get("x_vs_statsmodels")
    n_reml = f"{pr['rows']:,}" if pr else f"{SYNTH_ROWS:,}"
    checks.append((f"REML on the {n_reml}-row set: poolwise ≥ {REML_TARGET_X:.0f}× faster than statsmodels MixedLM",
                   None if xs is None else xs >= REML_TARGET_X,
                   "—" if xs is None else f"{xs:,.1f}×: {pr['wall_s']:.3f} s vs "
                   f"{pr['wall_s'] * xs:.2f} s"))
    xr = None if pr is None else pr.get("x_vs_mixedlm-rs")
    rs_why = next((n for n in task_notes.get("reml", []) if "mixedlm-rs was not run" in n), None)
    checks.append((f"REML on the {n_reml}-row set: poolwise at least as fast as mixedlm-rs",
                   None if xr is None else xr >= 1.0,
                   (f"{xr:.2f}×: {pr['wall_s']:.3f} s vs {pr['wall_s'] * xr:.3f} s" if xr is not None
                    else ("mixedlm-rs not run" if rs_why else "—"))))
    for what, ok, val in checks:
        mark = "n/a" if ok is None else ("**holds**" if ok else "**MISSED**")
        L.append(f"- {what}: {mark} ({val})")
    if quick:
        L.append("- (quick run: the 200,000-row targets are not tested by it)")
    L.append("")
    L.append("## How it was measured")
    L.append("")
    L.append("- Every row ran in a fresh Python process. *poolwise exact*: one warm-up `pw.fit(...)` (imports, "
             "caches), then the timed `pw.fit(formula, df, method=\"exact\", seed=0)` — the whole call: "
             "validation, design matrix, reduction, sampling and the conversion to ArviZ InferenceData "
             "(including the pointwise log-likelihood and predictive when they fit the memory budget). "
             "*NumPyro* and *poolwise nuts*: wall time of one run in the process, JIT compilation included.")
    L.append("- Min bulk ESS: `arviz.ess(posterior, method=\"bulk\")`, minimum over every variable and every "
             "element: all coefficients, σ, every group SD, the correlation (slopes models) and every group "
             "value (NumPyro and PyMC: the group values as deterministic sites, u = diag(s)·L·z, or b = τ·z; "
             "the min over the raw z is given in the details as `min_ess_z`).")
    L.append("- Peak MiB: `ru_maxrss` of a fresh process (via `os.wait4`) that loads the data and runs "
             "the fit; for poolwise exact a process that runs one fit only, for the other rows the "
             f"timing process. A bare `import poolwise` process peaks at {_fmt(bare.get('peak_mib'), 0)} MiB.")
    L.append("- Plain NumPyro: a hand-written non-centered model, `MCMC(NUTS(model), num_warmup, num_samples, "
             "num_chains=4, chain_method=\"vectorized\")`, default `target_accept_prob` 0.8 and tree depth 10, "
             "JAX defaults (float32), the same priors as poolwise's defaults:")
    for ds in DATASETS:
        if not any(r["dataset"] == ds for r in rows):
            continue
        try:
            fn = numpyro_priors if ds in ("radon", "synthetic") else slopes_priors
            L.append(f"  - {ds}: {fn(ds, quick)['text']}")
        except Exception as err:  # pragma: no cover - reporting only
            L.append(f"  - {ds}: ({err})")
    L.append("- Correlated slopes (sleepstudy, logistic), NumPyro: s_k ~ half-t (as poolwise's "
             "`sd(...)`), L ~ `LKJCholesky(2, η)` (poolwise's `lkj(η)`), z_j ~ N(0, I₂), u_j = diag(s)·L·z_j, "
             "η_i = β₀ + β₁x_i + u_{g,0} + u_{g,1}x_i; gaussian (σ ~ exponential) or `BernoulliLogits`.")
    L.append("- PyMC + nutpie (logistic): the same model and priors in PyMC (`pm.LKJCholeskyCov(n=2, eta, "
             "sd_dist=HalfStudentT)`, u = z·chol', `pm.Bernoulli(logit_p=η)`), compiled with "
             "`nutpie.compile_pymc_model` (numba backend, the default) and sampled with "
             "`nutpie.sample(chains=4, tune, draws, seed=0)`; wall time includes compilation (`compile_s` in "
             "the details). It runs in its own virtual environment, `benchmarks/_data/_venv_pymc` "
             "(git-ignored), made with `python -m venv benchmarks/_data/_venv_pymc && "
             "benchmarks/_data/_venv_pymc/bin/pip install pymc nutpie`; float64.")
    L.append("- Logistic set: y ~ Bernoulli(logit⁻¹(−0.5 + 0.7·x + a_g + b_g·x)), (a_g, b_g) ~ N(0, Σ) with SDs "
             "0.8 and 0.4 and correlation 0.5, x ~ N(0, 1); 100,000 rows in 2,000 groups, sizes lognormal(0, 1) "
             "scaled to the row count (min 1), fixed seed; `pw.fit(\"y ~ x + (1 + x | g)\", df, "
             "family=\"bernoulli\", method=\"nuts\", seed=0)`. Ratio column: against NumPyro; the target "
             "compares poolwise with the best of NumPyro and PyMC + nutpie.")
    L.append("- sleepstudy: lme4's data (180 rows, 18 subjects), `pw.fit(\"Reaction ~ Days + (Days | Subject)\", "
             "df, method=\"exact\", seed=0)`, 4×1000; NumPyro 4×(1000+1000).")
    L.append("- Synthetic set: y = 1 + 0.5·x1 − 0.3·x2 + b_g + N(0, 1), b_g ~ N(0, 0.5²); group sizes "
             "lognormal(0, 1.5) scaled to the row count (min 1), fixed seed; formula `y ~ x1 + x2 + (1 | g)`.")
    if fits:
        L.append("- REML: `pw.fit(formula, df, method=\"empirical\")` (REML is its default for the gaussian "
                 "family) against `statsmodels.formula.api.mixedlm(fixed, df, groups=df[g], re_formula=...)"
                 ".fit(reml=True, method=[\"lbfgs\"])` and, where it installs, `mixedlm_rs.mixedlm(...)"
                 ".fit(reml=True)` (the same statsmodels-style call; a Rust REML from PyPI); each in its own "
                 "fresh process, one warm-up fit, then the timed fit. statsmodels' and mixedlm-rs' times include "
                 "building the model from the formula; poolwise's is the whole `pw.fit` call, including its "
                 "draws of β and the group values at the estimates. σ = √scale, τ = √diag(cov_re). "
                 "\"× faster\" = the other's wall time / the row's, both measured in the same run. Where "
                 "statsmodels' lbfgs broke down (a non-finite log-likelihood), the row times statsmodels' default "
                 "method instead (the failed attempt is `lbfgs_failed` in the details). poolwise's optimizer "
                 "alone is `optimizer_s` in the details; the rest of its wall time is the 4×1000 draws and the "
                 "InferenceData.")
    if paths:
        L.append("- Pooling path: `pw.pooling_path(\"log_radon ~ floor + (1 | county)\", pw.datasets.radon())`, "
                 "default grid (τ = 0 and 100 log-spaced values), the second call in a fresh process (the first, "
                 "with imports and caches, is `cold_s` in the details).")
    for n in notes:
        L.append(f"- {n}")
    for t in EXTRA_TASKS:
        for n in task_notes.get(t, []):
            L.append(f"- {n}")
    L.append("")
    L.append("## Details")
    L.append("")
    for r in all_rows:
        keep = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                if k not in ("dataset", "tool", "settings", "log")}
        L.append(f"- {r['dataset']} / {r['tool']}: `{json.dumps(keep)}`")
        if "log" in r:
            L.append("```")
            L.append(r["log"])
            L.append("```")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
