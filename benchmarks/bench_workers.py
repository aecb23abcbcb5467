"""Benchmark workers: each runs in a fresh Python process and writes one JSON result.

Called by ``run.py`` as ``python benchmarks/bench_workers.py TASK ARGS_JSON OUT_JSON``; the
parent reads the child's peak RSS with :func:`os.wait4`.  Only the standard library is imported
at the top: the PyMC and Bambi workers run in their own virtual environment (no poolwise there;
they read the data sets from the Parquet files the parent exports).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_data import (CROSSED_FORMULA, DATASETS, LARGE_FORMULA, crossed_floor_query, floor_query, generate_crossed,
                        generate_large, load)


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
                    timed: bool, warm: bool = True, repeats: int = 1) -> dict[str, Any]:
    """Fit with poolwise.  ``timed``: (with ``warm``) a warm-up fit first, then the timed fit, then
    the ESS; otherwise one fit alone (for peak memory).  ``repeats`` > 1 (with ``timed`` and
    ``warm``): the timed fit runs that many times and ``wall_s`` is the median (all in ``times_s``);
    a single sub-second timing swings by 2× with the garbage collector and the machine's other load."""
    import statistics

    import numpy as np

    import poolwise as pw

    if method == "nuts":  # count JAX's import outside the timing, as for the NumPyro row
        import poolwise.infer.nuts  # noqa: F401

    df, formula = load(dataset, quick)
    out: dict[str, Any] = {"rows": len(df)}
    kw: dict[str, Any] = dict(family=DATASETS[dataset][1], seed=0, chains=chains, draws=draws, warmup=warmup)
    if method != "default":  # "default": the method poolwise chooses (reported as "method")
        kw["method"] = method
    if timed and warm:
        t0 = time.perf_counter()
        first = pw.fit(formula, df, **kw)
        out["cold_s"] = time.perf_counter() - t0
        del first
    times = []
    for _ in range(repeats if timed and warm else 1):
        f = None  # the previous fit is freed before the next is timed
        t0 = time.perf_counter()
        f = pw.fit(formula, df, **kw)
        times.append(time.perf_counter() - t0)
    out["wall_s"] = statistics.median(times)
    if len(times) > 1:
        out["times_s"] = times
    out["groups"] = int(np.asarray(f.bound.n_groups).ravel()[0])
    out["sampler_s"] = float(f.draws.info.get("seconds", float("nan")))
    out["method"] = f.method
    if timed:
        out["min_ess"], out["min_ess_at"] = _min_bulk_ess(f.idata.posterior)
        out["eager_pointwise"] = bool(f.eager_pointwise)
        if f.method == "exact":
            out["acceptance_rate"] = f.draws.info.get("acceptance_rate")
        else:
            out["divergences"] = f.draws.info.get("divergences")
            out["target_accept"] = f.draws.info.get("target_accept")
    if method == "nuts":
        out.update(_jax_device())
    return out


def _jax_device() -> dict[str, Any]:
    """JAX's backend and device (a GPU row says where it ran)."""
    import jax

    dev = jax.devices()[0]
    return {"jax_backend": jax.default_backend(), "jax_device": str(getattr(dev, "device_kind", dev))}


def _numpyro_best_cpu(chains: int) -> str:
    """NumPyro at its fastest on a CPU: one virtual XLA device per chain and the chains run in parallel
    (``numpyro.set_host_device_count``, which must come before JAX starts its backend: each worker is a
    fresh process).  On an accelerator (one device) the chains stay vectorized.  Returns the
    ``chain_method`` to use."""
    import numpyro

    numpyro.set_host_device_count(chains)
    import jax

    return "parallel" if jax.default_backend() == "cpu" and jax.local_device_count() >= chains else "vectorized"


def worker_numpyro(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                   priors: dict[str, Any], chain_method: str | None = None) -> dict[str, Any]:
    """Plain NumPyro NUTS, non-centered, JAX defaults (float32 unless the user asks otherwise), chains in
    parallel on one virtual CPU device each (:func:`_numpyro_best_cpu`; ``chain_method`` forces another
    setting, to compare)."""
    chain_method = chain_method or _numpyro_best_cpu(chains)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import pandas as pd

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

    return _run_numpyro(model, (X, g, y), ("beta", "sigma", "tau", "b"), rows=len(df), groups=J, chains=chains,
                        draws=draws, warmup=warmup, chain_method=chain_method)


def _run_numpyro(model: Any, args: tuple[Any, Any, Any], keep: tuple[str, ...], *, rows: int, groups: int,
                 chains: int, draws: int, warmup: int, chain_method: str) -> dict[str, Any]:
    """Run NUTS on ``model(a, b, y=y)`` timed (``args`` = (a, b, y)), and the row of the result: the
    minimum bulk ESS over the ``keep`` quantities (``"cor"``: the LKJ factor's correlation) and over ``z``
    (the non-centered draws), the divergences and the mean number of leapfrog steps."""
    import jax
    import numpy as np
    from numpyro.infer import MCMC, NUTS

    a, b, y = args
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method=chain_method, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), a, b, y=y, extra_fields=("diverging", "num_steps"))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    wall = time.perf_counter() - t0
    import arviz as az

    s = {k: np.asarray(v) for k, v in samples.items()}
    post = {k: (s["L"][..., 1, 0] if k == "cor" else s[k]) for k in keep if k in s or k == "cor"}
    min_ess, at = _min_bulk_ess(az.from_dict(posterior=post).posterior)
    min_ess_z, _ = _min_bulk_ess(az.from_dict(posterior={"z": s["z"]}).posterior)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {
        "rows": rows, "groups": groups, "wall_s": wall, "min_ess": min_ess, "min_ess_at": at,
        "min_ess_z": min_ess_z, "dtype": str(s["beta"].dtype),
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "mean_steps": float(np.asarray(extra["num_steps"]).mean()),
        "chains": chains, "draws": draws, "warmup": warmup, "chain_method": chain_method, **_jax_device(),
    }


def _slopes_arrays(dataset: str, quick: bool, data_path: str | None = None) -> dict[str, Any]:
    """Outcome, predictor and group codes of a ``y ~ x + (1 + x | g)`` data set (NumPy only)."""
    import numpy as np
    import pandas as pd

    df, formula = load(dataset, quick, data_path)
    outcome = formula.split("~")[0].strip()
    x_name = formula.split("~")[1].split("+")[0].strip()
    group = formula.split("|")[1].strip(" )")
    codes, levels = pd.factorize(df[group], sort=True)
    off = re.search(r"offset\((\w+)\)", formula)
    return {"y": df[outcome].to_numpy(dtype=float), "x": df[x_name].to_numpy(dtype=float),
            "g": codes.astype(np.int64), "J": len(levels), "rows": len(df),
            "offset": df[off.group(1)].to_numpy(dtype=float) if off else np.zeros(len(df))}


def worker_numpyro_slopes(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                          priors: dict[str, Any]) -> dict[str, Any]:
    """Plain NumPyro NUTS for ``y ~ x + (1 + x | g)`` with correlated (intercept, slope).

    Non-centered: ``s_k ~ half-t``, ``L ~ LKJCholesky(2, η)``, ``z_j ~ N(0, I)``,
    ``u_j = diag(s) L z_j``; gaussian, bernoulli (logit) or poisson (log, with the offset) likelihood.  JAX defaults (float32), chains in
    parallel on one virtual CPU device each (:func:`_numpyro_best_cpu`).
    """
    chain_method = _numpyro_best_cpu(chains)
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    a = _slopes_arrays(dataset, quick)
    J = a["J"]
    y, x, g, off = jnp.asarray(a["y"]), jnp.asarray(a["x"]), jnp.asarray(a["g"]), jnp.asarray(a["offset"])
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
        elif family == "poisson":
            with numpyro.plate("obs", x.shape[0]):
                numpyro.sample("y", dist.Poisson(jnp.exp(eta + off)), obs=y)
        else:
            with numpyro.plate("obs", x.shape[0]):
                numpyro.sample("y", dist.BernoulliLogits(eta), obs=y)

    return _run_numpyro(model, (x, g, y), ("beta", "sds", "cor", "u", "sigma"), rows=a["rows"], groups=J,
                        chains=chains, draws=draws, warmup=warmup, chain_method=chain_method)


def _intercept_arrays(dataset: str, quick: bool, data_path: str | None = None) -> dict[str, Any]:
    """Outcome, design matrix (intercept first) and group codes of a ``y ~ x… + (1 | g)`` data set."""
    import numpy as np
    import pandas as pd

    df, formula = load(dataset, quick, data_path)
    outcome = formula.split("~")[0].strip()
    group = formula.split("|")[1].strip(" )")
    preds = [t.strip() for t in formula.split("~")[1].split("+") if "|" not in t and t.strip() not in ("1", "")]
    X = np.column_stack([np.ones(len(df))] + [df[c].to_numpy(dtype=float) for c in preds])
    codes, levels = pd.factorize(df[group], sort=True)
    return {"y": df[outcome].to_numpy(dtype=float), "X": X, "g": codes.astype(np.int64), "J": len(levels),
            "rows": len(df)}


def worker_pymc(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                priors: dict[str, Any], sampler: str = "nutpie", data_path: str | None = None) -> dict[str, Any]:
    """PyMC's model of the data set, sampled by PyMC's default NUTS or by nutpie (runs in the PyMC venv).

    The same non-centered parametrization and priors as the NumPyro rows.  Random intercept
    (radon, synthetic): ``β ~ N(m0, s0)``, ``σ ~ Exponential``, ``τ ~ HalfStudentT``, ``z ~ N(0, 1)``,
    ``b = τ z``.  Correlated slopes (sleepstudy, logistic): ``LKJCholeskyCov`` with ``η`` and
    half-t SDs, ``u = z Lᵀ`` (L the Cholesky factor of the covariance).

    ``sampler``: ``"pymc"`` = ``pm.sample(draws, tune, chains, random_seed=0)`` with every other
    option at PyMC's default (NUTS, pytensor's C backend, ``cores = min(4, CPUs)`` processes);
    ``"nutpie"`` = ``nutpie.compile_pymc_model`` (numba) then ``nutpie.sample``.  Wall time:
    model construction, compilation and sampling.
    """
    import numpy as np
    import pymc as pm

    family = DATASETS[dataset][1]
    slopes = "(1 |" not in DATASETS[dataset][0]
    a = _slopes_arrays(dataset, quick, data_path) if slopes else _intercept_arrays(dataset, quick, data_path)
    J = a["J"]
    t0 = time.perf_counter()
    with pm.Model() as model:
        g = a["g"]
        if slopes:
            beta = pm.Normal("beta", mu=np.asarray(priors["m0"]), sigma=np.asarray(priors["s0"]), shape=2)
            sd_dist = pm.HalfStudentT.dist(nu=np.asarray(priors["sd_df"]), sigma=np.asarray(priors["sd_scale"]),
                                           shape=2)
            chol, corr, sds = pm.LKJCholeskyCov("chol", n=2, eta=priors["eta"], sd_dist=sd_dist,
                                                compute_corr=True)
            pm.Deterministic("sds", sds)
            pm.Deterministic("cor", corr[0, 1])
            z = pm.Normal("z", 0.0, 1.0, shape=(J, 2))
            u = pm.Deterministic("u", z @ chol.T)
            x = a["x"]
            eta = beta[0] + beta[1] * x + u[g, 0] + u[g, 1] * x + a["offset"]
        else:
            X = a["X"]
            beta = pm.Normal("beta", mu=np.asarray(priors["m0"]), sigma=np.asarray(priors["s0"]), shape=X.shape[1])
            tau = pm.HalfStudentT("tau", nu=priors["tau_df"], sigma=priors["tau_scale"])
            z = pm.Normal("z", 0.0, 1.0, shape=J)
            b = pm.Deterministic("b", tau * z)
            eta = pm.math.dot(X, beta) + b[g]
        if family == "gaussian":
            sigma = pm.Exponential("sigma", lam=priors["sigma_rate"])
            pm.Normal("y", mu=eta, sigma=sigma, observed=a["y"])
        elif family == "poisson":
            pm.Poisson("y", mu=pm.math.exp(eta), observed=a["y"])
        else:
            pm.Bernoulli("y", logit_p=eta, observed=a["y"])
    out: dict[str, Any] = {"sampler": sampler}
    if sampler == "nutpie":
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        out["compile_s"] = time.perf_counter() - t0
        idata = nutpie.sample(compiled, chains=chains, draws=draws, tune=warmup, seed=0, progress_bar=False)
    elif sampler == "pymc":
        with model:
            idata = pm.sample(draws=draws, tune=warmup, chains=chains, random_seed=0, progressbar=False,
                              compute_convergence_checks=False)
    else:
        raise ValueError(sampler)
    wall = time.perf_counter() - t0
    post = idata.posterior
    keep = [v for v in ("beta", "sigma", "tau", "sds", "cor", "b", "u") if v in post]
    min_ess, at = _min_bulk_ess(post[keep])
    min_ess_z, _ = _min_bulk_ess(post[["z"]])
    out.update({
        "rows": a["rows"], "groups": J, "wall_s": wall, "min_ess": min_ess,
        "min_ess_at": at, "min_ess_z": min_ess_z, "dtype": str(np.asarray(post["beta"]).dtype),
        "chains": chains, "draws": draws, "warmup": warmup,
    })
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        out["divergences"] = int(np.asarray(stats["diverging"]).sum())
    if stats is not None and "n_steps" in stats:
        out["mean_steps"] = float(np.asarray(stats["n_steps"]).mean())
    out["versions"] = _versions("pymc", "nutpie", "pytensor", "numba")
    if sampler == "pymc":
        out["cores"] = min(4, _cpus())
    return out


def worker_bambi(dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                 priors: dict[str, Any], data_path: str | None = None) -> dict[str, Any]:
    """``bmb.Model(formula, df, family, priors=…, center_predictors=False).fit(draws, tune, chains,
    random_seed=0)`` (runs in the PyMC venv; Bambi's default inference, PyMC's NUTS).

    ``priors``: name → ``[distribution, {parameter: value or [distribution, {…}]}]``, poolwise's
    defaults in Bambi's names.  ``center_predictors=False`` so that the intercept's prior means
    what poolwise's does (the intercept at x = 0).  Wall time: model construction, build,
    compilation and sampling.  Min bulk ESS over every posterior variable Bambi keeps (the
    coefficients, σ, the group SDs and the group values; the non-centered offsets are omitted
    by Bambi's default ``omit_offsets=True``).
    """
    import bambi as bmb
    import numpy as np

    df, formula = load(dataset, quick, data_path)
    family = DATASETS[dataset][1]

    def prior(spec: Any) -> Any:
        name, kw = spec
        return bmb.Prior(name, **{k: (prior(v) if isinstance(v, list) else v) for k, v in kw.items()})

    t0 = time.perf_counter()
    model = bmb.Model(formula, df, family=family, priors={k: prior(v) for k, v in priors.items()},
                      center_predictors=False)
    idata = model.fit(draws=draws, tune=warmup, chains=chains, random_seed=0, progressbar=False,
                      compute_convergence_checks=False)
    wall = time.perf_counter() - t0
    post = idata.posterior
    keep = [v for v in post.data_vars if not any(str(d).endswith("__obs__") for d in post[v].dims)
            and not str(v).endswith("_offset")]
    min_ess, at = _min_bulk_ess(post[keep])
    out: dict[str, Any] = {"rows": len(df), "groups": int(df[formula.split("|")[-1].strip(" )")].nunique()),
                           "wall_s": wall, "min_ess": min_ess, "min_ess_at": at, "variables": sorted(map(str, keep)),
                           "dtype": str(np.asarray(post[keep[0]]).dtype), "chains": chains, "draws": draws,
                           "warmup": warmup, "cores": min(4, _cpus())}
    out["model"] = str(model)
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        out["divergences"] = int(np.asarray(stats["diverging"]).sum())
    if stats is not None and "n_steps" in stats:
        out["mean_steps"] = float(np.asarray(stats["n_steps"]).mean())
    out["versions"] = _versions("bambi", "pymc", "pytensor", "formulae")
    return out


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
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


def worker_reml(dataset: str, tool: str, quick: bool, repeats: int = 1) -> dict[str, Any]:
    """One REML fit (Gaussian) by ``tool``: poolwise (method="empirical"), statsmodels MixedLM or mixedlm-rs.

    Every tool: one warm-up fit of the same model first (imports, caches, JIT), then ``repeats`` timed
    fits, each the whole call (statsmodels and mixedlm-rs: model construction from the formula
    included); ``wall_s`` is the fastest (``times_s`` all of them).  The
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

        def timed() -> tuple[Any, list[float]]:
            times, res = [], None
            for _ in range(max(1, repeats)):
                res = None
                t0 = time.perf_counter()
                res = one()
                times.append(time.perf_counter() - t0)
            return res, times

        res, times = timed()
        wall = min(times)
        failed = None
        if tool == "statsmodels" and not np.isfinite(res.llf):
            # lbfgs broke down (seen on radon: intercept 0, log-lik inf); time statsmodels' default instead
            failed = {"wall_s": wall, "llf": float(res.llf), "beta": [float(v) for v in np.asarray(res.fe_params)]}
            sm_method.clear()
            one()
            res, times = timed()
            wall = min(times)
    out: dict[str, Any] = {"rows": len(df), "cold_s": cold, "wall_s": wall, "times_s": times}
    if failed is not None:
        out["lbfgs_failed"] = failed
        out["method"] = "statsmodels default (lbfgs failed)"
    if tool == "poolwise":
        info = res.info
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
    kw: dict[str, Any] = dict(family=DATASETS[dataset][1], method="laplace", seed=0, chains=chains, draws=draws)
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


def worker_gen_large(rows: int, groups: int, seed: int, chunk_rows: int) -> dict[str, Any]:
    """Write one large Parquet set (:func:`bench_data.generate_large`); its manifest."""
    return generate_large(rows, groups, seed=seed, chunk_rows=chunk_rows)


def worker_floor(glob: str, repeats: int = 2) -> dict[str, Any]:
    """The bare DuckDB aggregation of the large set's columns (:func:`bench_data.floor_query`).

    One untimed run first (it reads the files into the OS cache, as the poolwise row finds them),
    then ``repeats`` timed runs; ``wall_s`` is the fastest.  Each run is the whole query with the
    result fetched into NumPy arrays (one row per group); DuckDB's default settings (threads = CPUs).
    """
    import duckdb

    con = duckdb.connect()
    query = floor_query(glob)
    times, res = [], None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        res = con.execute(query).fetchnumpy()
        times.append(time.perf_counter() - t0)
    assert res is not None
    threads = con.execute("SELECT current_setting('threads')").fetchone()
    return {"wall_s": min(times[1:]), "first_s": times[0], "times_s": times, "groups": int(len(res["g"])),
            "rows": int(res["a0"].sum()), "threads": None if threads is None else int(threads[0]),
            "duckdb": duckdb.__version__, "query": query}


def worker_poolwise_large(glob: str, warmup_glob: str, draws: int | None = None, chains: int | None = None,
                          ess_groups: int = 1000) -> dict[str, Any]:
    """``pw.fit(LARGE_FORMULA, glob, method="exact", seed=0)`` on the Parquet files (poolwise's defaults
    otherwise, unless ``draws`` / ``chains`` are given).

    One warm-up fit on a small Parquet set first (imports, caches; not timed), then the timed fit:
    the whole call, from the path to the finished Fit.  ``peak_mib_fit`` is this process's peak
    RSS right after the timed fit (``getrusage``), before the ESS is computed.  Min bulk ESS over
    the coefficients, σ, τ and ``ess_groups`` group values drawn at random (seed 0): the ESS of
    every group value would need copies of a (chains, draws, groups) array.
    """
    import resource

    import numpy as np

    import poolwise as pw

    kw: dict[str, Any] = {"method": "exact", "seed": 0}
    if draws is not None:
        kw["draws"] = draws
    if chains is not None:
        kw["chains"] = chains
    t0 = time.perf_counter()
    first = pw.fit(LARGE_FORMULA, warmup_glob, **kw)
    warm = time.perf_counter() - t0
    del first
    t0 = time.perf_counter()
    f = pw.fit(LARGE_FORMULA, glob, **kw)
    wall = time.perf_counter() - t0
    peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    d = f.draws
    out: dict[str, Any] = {"wall_s": wall, "warmup_fit_s": warm, "peak_mib_fit": peak_fit,
                           "groups": int(np.asarray(f.bound.n_groups).ravel()[0]), "rows": int(f.bound.n_obs),
                           "chains": d.n_chains, "draws": d.n_draws}
    out["info"] = {k: v for k, v in (d.info or {}).items() if isinstance(v, (int, float, str, bool))}
    post: dict[str, Any] = {}
    for k, name in enumerate(f.bound.coef_names):
        post[str(name)] = np.asarray(d.beta[..., k])
    if d.sigma is not None:
        post["sigma"] = np.asarray(d.sigma)
    blocks = d.block_draws()
    if blocks and blocks[0].sd is not None:
        post["tau"] = np.asarray(blocks[0].sd[..., 0])
    values = blocks[0].values if blocks else None
    if values is not None:
        J = values.shape[2]
        idx = np.sort(np.random.default_rng(0).choice(J, size=min(J, ess_groups), replace=False))
        post["b"] = np.asarray(values[:, :, idx, 0])
        out["ess_groups"] = int(len(idx))
    import arviz as az

    # one data set per variable: the group values may hold fewer draws than β (a memory budget)
    best, where = float("inf"), ""
    for name, arr in post.items():
        e, at = _min_bulk_ess(az.convert_to_dataset({name: arr}))
        if e < best:
            best, where = e, at
        if name == "b":
            out["group_value_draws"] = int(arr.shape[1])
    out["min_ess"], out["min_ess_at"] = best, where
    return out


# ----------------------------------------------------------------------------------------------
# the crossed designs: lme4 in the same run


def _to_plain(v: Any) -> Any:
    """NumPy arrays and scalars (nested in dicts, lists, tuples) as plain JSON values."""
    if isinstance(v, dict):
        return {str(k): _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def worker_lme4(model: str, csv: str, repeats: int, reml: bool = True, cold: bool = False) -> dict[str, Any]:
    """lme4 in R (``bench_lme4``): one ``Rscript`` reads the CSV and fits ``repeats`` times; ``wall_s`` is the
    fastest fit after the first (warm), ``first_s`` the first (lme4 loaded, the fit's code not yet run).
    ``cold``: also a fresh ``Rscript -e 'library(lme4); …; system.time(fit)'``, timed as a process."""
    import bench_lme4 as bl

    m = bl.MODELS[model]
    fig, code, process = bl.fit_in_r(m, csv, reml=reml, repeats=repeats)
    est = bl.figures_summary(fig)
    times = est.pop("times_s")
    out: dict[str, Any] = {
        "rows": int(float(fig["data.rows"][0])), "wall_s": min(times[1:]) if len(times) > 1 else times[0],
        "first_s": times[0], "times_s": times, "rscript_process_s": process, "formula": m.formula,
        "estimates": {k: est[k] for k in ("fixef", "sd", "cor", "sigma", "REMLcrit", "deviance", "logLik",
                                          "messages") if k in est},
        "groups": {g: v.get("n_levels") for g, v in bl.ranef_summary(fig).items()},
        "versions": {"R": fig["R.version"][0], "lme4": fig["lme4.version"][0], "Matrix": fig["Matrix.version"][0]},
        "r_code": code,
    }
    if cold:
        c = bl.cold_in_r(m, csv)
        out["cold_s"] = c["process_s"]
        out["cold_fit_s"] = c["fit_elapsed_s"]
        out["cold_code"] = c["code"]
    return out


def _min_ess_split(posterior: Any, group_vars: list[str]) -> dict[str, Any]:
    """Min bulk ESS over β, σ, the SDs and correlations (``min_ess``) and over the group values too
    (``min_ess_all``)."""
    hyper = [v for v in posterior.data_vars if v not in group_vars]
    out: dict[str, Any] = {}
    out["min_ess"], out["min_ess_at"] = _min_bulk_ess(posterior[hyper])
    values = [v for v in group_vars if v in posterior.data_vars]
    if values:
        e, at = _min_bulk_ess(posterior[values])
        out["min_ess_values"], out["min_ess_values_at"] = e, at
        out["min_ess_all"] = min(out["min_ess"], e)
    return out


def _cli_fit(data: str, formula: str, method: str, family: str) -> dict[str, Any]:
    """``python -m poolwise fit DATA -f FORMULA --method METHOD`` in a fresh process, as a user runs it."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "poolwise", "fit", data, "-f", formula, "--seed", "0"]
    if method != "default":  # "default": the method poolwise chooses for the model
        cmd += ["--method", method]
    if family != "gaussian":
        cmd += ["--family", family]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"cold_cli_s": wall, "cold_cli_rc": proc.returncode,
                           "cold_cli_command": " ".join(["python", *cmd[1:]])}
    if proc.returncode != 0:
        out["cold_cli_error"] = (proc.stdout + proc.stderr)[-1500:]
    return out


def worker_crossed_fit(model: str, csv: str, method: str, repeats: int = 5, cold_cli: bool = False,
                       chains: int = 4, draws: int = 1000, warmup_rows: int | None = None) -> dict[str, Any]:
    """``pw.fit(formula, df, method=..., seed=0)`` on the CSV lme4 reads (as a pandas frame): the first
    fit in the process (``first_s``: imports done, caches cold; on the first ``warmup_rows`` rows only
    when given, for the large sets), then ``repeats`` timed fits; ``wall_s`` the fastest (as lme4's
    row), ``median_s`` their median.  Empirical: the estimates; exact: min bulk ESS.  ``cold_cli``: the
    CLI on the CSV in a fresh process, timed whole."""
    import statistics

    import numpy as np
    import pandas as pd

    import bench_lme4 as bl

    m = bl.MODELS[model]
    df = pd.read_csv(csv)
    import poolwise as pw

    kw: dict[str, Any] = dict(family=m.pw_family, seed=0, chains=chains, draws=draws)
    if method != "default":  # "default": the method poolwise chooses for the model
        kw["method"] = method
    t0 = time.perf_counter()
    f = pw.fit(m.pw_formula, df if warmup_rows is None else df.iloc[:warmup_rows], **kw)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        f = None
        t0 = time.perf_counter()
        f = pw.fit(m.pw_formula, df, **kw)
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"rows": len(df), "formula": m.pw_formula, "times_s": times,
                           "first_s" if warmup_rows is None else f"first_s_{warmup_rows}_rows": first,
                           "wall_s": min(times) if times else first,
                           "median_s": statistics.median(times) if times else first,
                           "groups": {b.factor: int(b.n_groups) for b in f.bound.blocks}}
    info = f.info or {}
    out["info"] = {k: _to_plain(v) for k, v in info.items() if k != "estimates"
                   and isinstance(v, (int, float, str, bool, np.floating, np.integer))}
    if "estimates" in info:
        out["estimates"] = _to_plain(info["estimates"])
    out["method"] = str(f.method)
    if f.method not in ("empirical", "laplace"):
        out.update(_min_ess_split(f.idata.posterior, list(f.group_vars)))
        out["chains"], out["draws"] = f.n_chains, f.n_draws
    summ = f.summary(groups=False)  # an empirical fit's: the estimates (no draws made); a Bayesian one's: means
    if "estimate" in summ:
        out["point_estimates"] = {str(n): float(v) for n, v in summ["estimate"].items()}
    else:
        out["posterior_means"] = {str(n): float(v) for n, v in summ["mean"].items()}
    if cold_cli:
        out.update(_cli_fit(csv, m.pw_formula, method, m.pw_family))
    return out


def worker_gen_crossed(rows: int, n1: int, n2: int, seed: int, chunk_rows: int) -> dict[str, Any]:
    """Write one crossed Parquet set (:func:`bench_data.generate_crossed`); its manifest."""
    return generate_crossed(rows, n1, n2, seed=seed, chunk_rows=chunk_rows)


def worker_crossed_floor(glob: str, repeats: int = 2) -> dict[str, Any]:
    """The bare DuckDB aggregation of the crossed set (:func:`bench_data.crossed_floor_query`): one
    untimed run, then ``repeats`` timed runs fetched into NumPy; ``wall_s`` the fastest."""
    import duckdb

    con = duckdb.connect()
    query = crossed_floor_query(glob)
    times, res = [], None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        res = con.execute(query).fetchnumpy()
        times.append(time.perf_counter() - t0)
    assert res is not None
    import numpy as np

    pairs = int(np.sum(~np.ma.getmaskarray(res["g1"]) & ~np.ma.getmaskarray(res["g2"])))
    threads = con.execute("SELECT current_setting('threads')").fetchone()
    return {"wall_s": min(times[1:]), "first_s": times[0], "times_s": times, "result_rows": int(len(res["n"])),
            "pairs": pairs, "threads": None if threads is None else int(threads[0]), "duckdb": duckdb.__version__,
            "query": query}


def worker_poolwise_crossed_large(glob: str, warmup_glob: str, draws: int | None = None) -> dict[str, Any]:
    """``pw.fit(CROSSED_FORMULA, glob, method="exact", seed=0)`` on the Parquet files, after one warm-up
    fit on a small crossed set; ``peak_mib_fit`` = this process's peak RSS right after the timed fit.
    Min bulk ESS over β, σ and both SDs."""
    import resource

    import numpy as np

    import poolwise as pw

    kw: dict[str, Any] = {"method": "exact", "seed": 0}
    if draws is not None:
        kw["draws"] = draws
    t0 = time.perf_counter()
    first = pw.fit(CROSSED_FORMULA, warmup_glob, **kw)
    warm = time.perf_counter() - t0
    del first
    t0 = time.perf_counter()
    f = pw.fit(CROSSED_FORMULA, glob, **kw)
    wall = time.perf_counter() - t0
    peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out: dict[str, Any] = {"wall_s": wall, "warmup_fit_s": warm, "peak_mib_fit": peak_fit,
                           "groups": {b.factor: int(b.n_groups) for b in f.bound.blocks}, "rows": int(f.bound.n_obs),
                           "chains": f.draws.n_chains, "draws": f.draws.n_draws}
    out["info"] = {k: _to_plain(v) for k, v in (f.draws.info or {}).items()
                   if isinstance(v, (int, float, str, bool, np.floating, np.integer))}
    post = f.idata.posterior
    hyper = [v for v in post.data_vars if v not in set(f.group_vars)]
    out["min_ess"], out["min_ess_at"] = _min_bulk_ess(post[hyper])
    return out


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "import": worker_import, "poolwise": worker_poolwise, "numpyro": worker_numpyro,
    "numpyro_slopes": worker_numpyro_slopes, "pymc": worker_pymc, "bambi": worker_bambi, "path": worker_path,
    "reml": worker_reml, "laplace": worker_laplace, "gen_large": worker_gen_large, "floor": worker_floor,
    "poolwise_large": worker_poolwise_large, "lme4": worker_lme4, "crossed_fit": worker_crossed_fit,
    "gen_crossed": worker_gen_crossed, "crossed_floor": worker_crossed_floor,
    "poolwise_crossed_large": worker_poolwise_crossed_large,
}


def _plain(v: Any) -> Any:
    """NumPy scalars and arrays as plain JSON values."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def main(argv: list[str]) -> int:
    task, args, out = argv
    result = WORKERS[task](**json.loads(args))
    Path(out).write_text(json.dumps(result, default=_plain))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
