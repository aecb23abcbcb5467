"""NUTS against the exact collapsed path, on the same simulated data and priors.

Tolerances come from Monte Carlo standard errors (ArviZ's ``mcse``) of both sets of draws:
posterior means agree within 4·√(mcse_nuts² + mcse_exact²), posterior SDs within 10 % of the
exact SD plus 4 Monte Carlo standard errors.  Each check also asserts that its tolerance is
small against the posterior SD, so that a wrong model cannot pass for want of precision.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pytest

import poolwise.data
from poolwise.errors import ConvergenceWarning
from poolwise.infer import Draws, run
from poolwise.infer import nuts
from poolwise.spec import BoundSpec, ModelSpec

CHAINS, WARMUP, DRAWS = 4, 500, 1000


def _frame() -> pd.DataFrame:
    """12 groups of 1..20 rows: y = 1 + 0.5 x + b_g + e, τ = 0.7, σ = 1 (se column for se())."""
    rng = np.random.default_rng(42)
    sizes = np.round(np.linspace(1, 20, 12)).astype(int)
    g = np.repeat(np.arange(12), sizes)
    x = rng.normal(size=g.size)
    b = rng.normal(0.0, 0.7, 12)
    s = rng.uniform(0.5, 1.5, g.size)
    y = 1.0 + 0.5 * x + b[g] + rng.normal(size=g.size) * s
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j:02d}" for j in g], "s": s})


def _bind(formula: str, pooling: str | float = "hierarchical") -> BoundSpec:
    return ModelSpec(formula, pooling=pooling).bind(poolwise.data.read_table(_frame()))


def _mcse(arr: np.ndarray, method: str) -> float:
    return float(az.mcse(az.convert_to_dataset({"v": arr}), method=method)["v"])


def _quantities(d: Draws, groups: tuple[int, ...]) -> dict[str, np.ndarray]:
    out = {f"beta[{k}]": d.beta[:, :, k] for k in range(d.beta.shape[2])}
    if d.sigma is not None:
        out["sigma"] = d.sigma
    if d.tau is not None:
        out["tau"] = d.tau
    if d.b is not None:
        out.update({f"b[{j}]": d.b[:, :, j] for j in groups})
    return out


def _agree(n: Draws, e: Draws, groups: tuple[int, ...] = (0, 5, 11), *, sds: bool = True) -> list[str]:
    """Compare posterior means (and SDs); return the failures (printed on success with -s)."""
    qn, qe = _quantities(n, groups), _quantities(e, groups)
    assert qn.keys() == qe.keys()
    fails = []
    for name in qn:
        a, b = qn[name], qe[name]
        sd_e = float(b.std())
        tol = 4.0 * np.hypot(_mcse(a, "mean"), _mcse(b, "mean"))
        diff = abs(float(a.mean()) - float(b.mean()))
        # power: the tolerance must be a small fraction of the posterior SD
        assert tol < 0.35 * sd_e, f"{name}: tolerance {tol:.3g} too wide against sd {sd_e:.3g}"
        line = f"{name}: mean nuts {a.mean():.4f} exact {b.mean():.4f} |diff| {diff:.4f} tol {tol:.4f}"
        if diff > tol:
            fails.append(line)
        if sds:
            tol_sd = 0.1 * sd_e + 4.0 * np.hypot(_mcse(a, "sd"), _mcse(b, "sd"))
            diff_sd = abs(float(a.std()) - sd_e)
            line += f"; sd nuts {a.std():.4f} exact {sd_e:.4f} |diff| {diff_sd:.4f} tol {tol_sd:.4f}"
            if diff_sd > tol_sd:
                fails.append(line)
        print(line)
    return fails


Case = tuple[str, str | float]
CASES: dict[str, Case] = {
    "hierarchical": ("y ~ x + (1 | g)", "hierarchical"),
    "fixed": ("y ~ x + (1 | g)", 2.0),
    "pooled": ("y ~ x + (1 | g)", "pooled"),
    "se": ("y | se(s) ~ 1 + (1 | g)", "hierarchical"),
}


@functools.cache
def _nuts_run(case: str) -> tuple[BoundSpec, Draws]:
    """One NUTS run per case, shared by the tests (each model structure compiles its own sampler)."""
    bound = _bind(*CASES[case])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return bound, nuts.sample(bound, seed=0, chains=CHAINS, warmup=WARMUP, draws=DRAWS)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request: pytest.FixtureRequest) -> tuple[str, BoundSpec, Draws, Draws]:
    bound, d_nuts = _nuts_run(request.param)
    d_exact = run(bound, method="exact", seed=1, chains=4, draws=1000)
    return request.param, bound, d_nuts, d_exact


def test_nuts_agrees_with_exact(pair: tuple[str, BoundSpec, Draws, Draws]) -> None:
    case, bound, n, e = pair
    assert n.method == "nuts"
    assert n.info["divergences"][-1] == 0
    fails = _agree(n, e)
    assert not fails, "\n".join(fails)


def test_shapes_follow_pooling(pair: tuple[str, BoundSpec, Draws, Draws]) -> None:
    case, bound, n, _ = pair
    C, D, J, p = CHAINS, DRAWS, bound.n_groups, len(bound.coef_names)
    assert n.beta.shape == (C, D, p)
    assert (n.sigma is None) == (case == "se")
    if n.sigma is not None:
        assert n.sigma.shape == (C, D) and (n.sigma > 0).all()
    assert (n.tau is None) == (case in ("fixed", "pooled"))
    if n.tau is not None:
        assert n.tau.shape == (C, D) and (n.tau > 0).all()
    assert (n.b is None) == (case == "pooled")
    if n.b is not None:
        assert n.b.shape == (C, D, J)
    for key in ("diverging", "acceptance_rate", "n_steps", "tree_depth", "energy", "lp"):
        assert n.sample_stats[key].shape == (C, D), key
    assert n.sample_stats["diverging"].dtype == bool
    assert np.isfinite(n.sample_stats["lp"]).all()
    assert n.info["target_accept"] == (0.8, 0.95, 0.99)[n.info["retries"]] and n.info["seconds"] > 0
    assert len(n.info["divergences"]) == n.info["retries"] + 1


def test_same_seed_same_draws_different_seed_different() -> None:
    bound, a = _nuts_run("pooled")  # seed 0, shared with the agreement test
    b = nuts.sample(bound, seed=0, chains=CHAINS, warmup=WARMUP, draws=DRAWS)
    c = nuts.sample(bound, seed=1, chains=2, warmup=100, draws=100)
    assert a.sigma is not None and b.sigma is not None and c.sigma is not None
    np.testing.assert_array_equal(a.beta, b.beta)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    np.testing.assert_array_equal(a.sample_stats["lp"], b.sample_stats["lp"])
    assert not np.array_equal(a.beta[:2, :100], c.beta)
    assert not np.array_equal(a.sigma[:2, :100], c.sigma)


def test_new_data_of_the_same_shapes_reuses_the_compiled_sampler() -> None:
    """A second fit on new data (same shapes) runs the cached program: no new cache entry, no new
    compilation of it (its JAX cache holds one executable), different draws; and a cached run
    does not depend on the runs before it (same seed, same draws)."""
    df = _frame()
    first = _bind("y ~ x + (1 | g)")
    second = ModelSpec("y ~ x + (1 | g)").bind(poolwise.data.read_table(df.assign(y=df["y"] * 1.5 - 0.3)))
    assert second.priors["sigma"] != first.priors["sigma"]  # default priors follow the data's scale
    settings = {"seed": 3, "chains": 2, "warmup": 60, "draws": 40}
    a = nuts.sample(first, **settings)
    n_cached = len(nuts._RUN_CACHE)
    key = next(reversed(nuts._RUN_CACHE))
    b = nuts.sample(second, **settings)
    c = nuts.sample(first, **settings)
    assert len(nuts._RUN_CACHE) == n_cached and next(reversed(nuts._RUN_CACHE)) == key
    assert nuts._RUN_CACHE[key].compiles == 1  # compiled once for the three fits
    assert not np.allclose(a.beta, b.beta)
    np.testing.assert_array_equal(a.beta, c.beta)
    assert a.sigma is not None and c.sigma is not None and a.tau is not None and c.tau is not None
    np.testing.assert_array_equal(a.sigma, c.sigma)
    np.testing.assert_array_equal(a.tau, c.tau)


def test_parallel_chains_draw_as_the_vectorized_chains() -> None:
    """Chains on a CPU device each (the default where JAX has a device per chain, which importing
    poolwise asks for) start from the same keys and run the same NUTS as NumPyro's vectorized
    chains: the same draws up to rounding, each chain at its own pace; the same seed, the same
    draws.  (target_accept 0.99: no retry, one program per method.)"""
    if nuts._chain_devices(2) is None:
        pytest.skip("JAX was started before poolwise was imported: one CPU device")
    bound = _bind("y ~ x + (1 | g)")
    settings: dict[str, Any] = {"seed": 5, "chains": 2, "warmup": 40, "draws": 30, "target_accept": 0.99}
    par = nuts.sample(bound, **settings)
    again = nuts.sample(bound, chain_method="parallel", **settings)
    vec = nuts.sample(bound, chain_method="vectorized", **settings)
    assert par.info["chain_method"] == "parallel" and vec.info["chain_method"] == "vectorized"
    np.testing.assert_array_equal(par.beta, again.beta)
    assert not np.allclose(par.beta[0], par.beta[1])  # two chains, not one twice
    assert vec.sigma is not None and par.sigma is not None and vec.tau is not None and par.tau is not None
    for a, b in [(par.beta, vec.beta), (par.sigma, vec.sigma), (par.tau, vec.tau)]:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(par.sample_stats["n_steps"], vec.sample_stats["n_steps"])
    with pytest.raises(ValueError, match="chain_method"):
        nuts.sample(bound, chain_method="sequential", **settings)


def test_importing_poolwise_asks_for_a_cpu_device_per_core_and_keeps_the_users_flags() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(poolwise.__file__).resolve().parents[1])
    code = "import poolwise, jax; print(jax.local_device_count('cpu'))"

    def devices(**env: str) -> int:
        environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        environ["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**environ, **env},
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    assert devices() == max(4, os.cpu_count() or 1)
    assert devices(XLA_FLAGS="--xla_force_host_platform_device_count=2") == 2


def test_compiled_samplers_are_least_recently_used_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import OrderedDict

    monkeypatch.setattr(nuts, "_RUN_CACHE", OrderedDict())
    model = nuts._structural_model(nuts._structure(_bind("y ~ x + (1 | g)")))
    runs = [nuts._compiled_run(model, ("shapes", i), chains=1, draws=10, warmup=10, target_accept=0.8,
                               max_tree_depth=10) for i in range(nuts.CACHE_SIZE + 3)]  # traced lazily: cheap
    assert len(nuts._RUN_CACHE) == nuts.CACHE_SIZE
    assert nuts._compiled_run(model, ("shapes", nuts.CACHE_SIZE + 2), chains=1, draws=10, warmup=10,
                              target_accept=0.8, max_tree_depth=10) is runs[-1]
    assert nuts._compiled_run(model, ("shapes", 0), chains=1, draws=10, warmup=10, target_accept=0.8,
                              max_tree_depth=10) is not runs[0]  # evicted, made anew
    assert len(nuts._RUN_CACHE) == nuts.CACHE_SIZE
    nuts.clear_cache()
    assert not nuts._RUN_CACHE


def test_structure_excludes_the_data() -> None:
    """Bound specs that differ only in their data and the priors' arguments share one model
    function (and so one sampler)."""
    df = _frame()
    a = _bind("y ~ x + (1 | g)")
    b = ModelSpec("y ~ x + (1 | g)").bind(poolwise.data.read_table(df.assign(x=df["x"] + 2.0)))
    assert nuts._structural_model(nuts._structure(a)) is nuts._structural_model(nuts._structure(b))
    c = ModelSpec("y ~ x + (1 | g)", priors={"sd(Intercept|g)": "half_student_t(3, 5)"}).bind(poolwise.data.read_table(df))
    assert nuts._structure(c) == nuts._structure(a)
    d = ModelSpec("y ~ x + (1 | g)", priors={"sd(Intercept|g)": "half_normal(1)"}).bind(poolwise.data.read_table(df))
    assert nuts._structure(d) != nuts._structure(a)  # another prior family
    pooled = _bind("y ~ x + (1 | g)", "pooled")
    assert nuts._structure(pooled) != nuts._structure(a)


def _fake_run(counts: list[int], calls: list[float]) -> Callable[..., Any]:
    """A stand-in for one MCMC run that diverges ``counts[i]`` times at attempt i."""

    def fake(model: Any, y: Any, key: Any, *, chains: int, draws: int, warmup: int, target_accept: float,
             max_tree_depth: int, **_: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        k = counts[len(calls)]
        calls.append(target_accept)
        div = np.zeros((chains, draws), dtype=bool)
        div.flat[:k] = True
        ones = np.ones((chains, draws))
        samples = {"beta": np.zeros((chains, draws, 2)), "sigma": ones, "sd(Intercept|g)": ones,
                   "u(g)": np.zeros((chains, draws, 12, 1))}
        extra = {"diverging": div, "accept_prob": ones, "num_steps": 7 * ones, "energy": ones,
                 "potential_energy": ones}
        return samples, extra

    return fake


def test_divergences_raise_target_accept_then_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    bound = _bind("y ~ x + (1 | g)")
    calls: list[float] = []
    monkeypatch.setattr(nuts, "_run_once", _fake_run([30, 20, 12], calls))
    stages: list[tuple[str, float]] = []
    with pytest.warns(ConvergenceWarning) as rec:
        d = nuts.sample(bound, seed=0, chains=4, draws=1000, progress=lambda s, f: stages.append((s, f)))
    assert calls == [0.8, 0.95, 0.99]
    assert d.info["divergences"] == [30, 20, 12] and d.info["retries"] == 2 and d.info["target_accept"] == 0.99
    msg = str(rec[0].message)
    assert "12 of 4000 draws diverged even at target_accept=0.99" in msg
    assert "sd(Intercept|g) may be biased" in msg and 'method="exact"' in msg
    assert rec[0].filename == __file__  # stacklevel points at the caller's line
    assert stages == [("warmup+sampling", 0.0), ("done", 1.0)]
    assert d.sample_stats["tree_depth"][0, 0] == 3


def test_divergences_fixed_by_retry_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    bound = _bind("y ~ x + (1 | g)")
    calls: list[float] = []
    monkeypatch.setattr(nuts, "_run_once", _fake_run([5, 0], calls))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        d = nuts.sample(bound, seed=0, chains=4, draws=1000, target_accept=0.9)
    assert calls == [0.9, 0.95]
    assert d.info["divergences"] == [5, 0] and d.info["retries"] == 1 and d.info["target_accept"] == 0.95


def test_priors_map_to_numpyro() -> None:
    from poolwise.priors import parse_prior

    x = np.array([0.3, 1.0, 2.5])
    for text in ["normal(1, 2)", "student_t(3, 1, 2)", "half_normal(2)", "half_student_t(3, 2.5)",
                 "half_cauchy(1.5)", "exponential(0.7)"]:
        prior = parse_prior(text)
        np.testing.assert_allclose(np.asarray(nuts._to_numpyro(prior).log_prob(x)), prior.logpdf(x),
                                   rtol=1e-10, err_msg=text)
