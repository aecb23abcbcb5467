"""Benchmark: poolwise's exact path against plain NumPyro NUTS, measured side by side in one run.

Usage::

    python benchmarks/run.py --out benchmarks/results.md          # the full run (make bench)
    python benchmarks/run.py --quick --out /tmp/bench.md          # a smoke run (seconds)

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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

RADON_FORMULA = "log_radon ~ floor + (1 | county)"
SYNTH_FORMULA = "y ~ x1 + x2 + (1 | g)"

SYNTH_ROWS = 200_000
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


def load(dataset: str, quick: bool) -> tuple[Any, str]:
    """The data frame and formula of a data set (``radon`` or ``synthetic``)."""
    if dataset == "radon":
        import poolwise.datasets

        return poolwise.datasets.radon(), RADON_FORMULA
    if quick:
        return synthetic(n_rows=5_000, n_groups=100), SYNTH_FORMULA
    return synthetic(), SYNTH_FORMULA


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
    import numpy as np  # noqa: F401

    import poolwise as pw

    if method == "nuts":  # count JAX's import outside the timing, as for the NumPyro row
        import poolwise.infer.nuts  # noqa: F401

    df, formula = load(dataset, quick)
    out: dict[str, Any] = {"rows": len(df)}
    kw = dict(method=method, seed=0, chains=chains, draws=draws, warmup=warmup)
    if timed and warm:
        t0 = time.perf_counter()
        first = pw.fit(formula, df, **kw)
        out["cold_s"] = time.perf_counter() - t0
        del first
    t0 = time.perf_counter()
    f = pw.fit(formula, df, **kw)
    out["wall_s"] = time.perf_counter() - t0
    out["groups"] = f.bound.n_groups
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


WORKERS = {"import": worker_import, "poolwise": worker_poolwise, "numpyro": worker_numpyro}


# ----------------------------------------------------------------------------------------------
# the parent: spawn, measure, tabulate


def spawn(task: str, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one worker in a fresh process; its JSON result plus its own peak RSS (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        res_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", task, "--worker-args",
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
    ap.add_argument("--from-json", help="re-render the Markdown from a saved results .json (no measuring)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.from_json:  # re-render a finished run's table (no measuring)
        saved = json.loads(Path(args.from_json).read_text())
        text = render(saved["rows"], saved["notes"], saved["bare"], _dt.datetime.fromisoformat(saved["started"]),
                      saved["total_s"], saved["quick"], args)
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

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    bare = spawn("import")
    log(f"bare `import poolwise`: peak RSS {bare.get('peak_mib', float('nan')):.0f} MiB")

    for dataset in ("radon", "synthetic"):
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

    # ratios against the NumPyro row of the same data set
    for row in rows:
        if "min_ess" in row and "wall_s" in row:
            row["ess_per_s"] = row["min_ess"] / row["wall_s"]
    for row in rows:
        base = next((b for b in rows if b.get("baseline") and b["dataset"] == row["dataset"]
                     and "ess_per_s" in b), None)
        if base is not None and "ess_per_s" in row and not row.get("baseline"):
            row["ratio"] = row["ess_per_s"] / base["ess_per_s"]

    for row in rows:
        if row.get("baseline") and row.get("divergences"):
            notes.append(f"NumPyro on {row['dataset']} had {row['divergences']} divergent transitions at "
                         f"{row['settings']}; its ESS there (and so the ratio) comes from a poorly adapted run and "
                         f"says only that plain NUTS does not get far in that time, not what a full run would give.")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "notes": notes, "bare": bare, "started": started.isoformat(),
         "total_s": time.perf_counter() - t_start, "quick": quick}, indent=1))
    text = render(rows, notes, bare, started, time.perf_counter() - t_start, quick, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


def render(rows: list[dict[str, Any]], notes: list[str], bare: dict[str, Any], started: _dt.datetime,
           total_s: float, quick: bool, args: argparse.Namespace) -> str:
    mach, ver = machine(), versions()
    L: list[str] = []
    L.append("# poolwise benchmark: exact path vs plain NumPyro NUTS")
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
            L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | | | failed | | | | |")
            continue
        ratio = "1 (baseline)" if r.get("baseline") else (
            (f"{r['ratio']:,.0f}×" if r["ratio"] >= 10 else f"{r['ratio']:.2f}×") if "ratio" in r else "—")
        L.append(f"| {r['dataset']} | {r['tool']} | {r['settings']} | {r['rows']:,} | {r['groups']:,} | "
                 f"{_fmt(r['wall_s'], 2)} | {_fmt(r.get('min_ess'), 0)} | {_fmt(r.get('ess_per_s'), 1)} | "
                 f"{_fmt(r.get('peak_mib'), 0)} | {ratio} |")
    L.append("")
    L.append("## Targets")
    L.append("")
    checks = []
    for ds in ("radon", "synthetic"):
        ex = next((r for r in rows if r["dataset"] == ds and r["tool"] == "poolwise exact"), None)
        ratio = None if ex is None else ex.get("ratio")
        checks.append((f"{ds}: poolwise exact ≥ 100× NumPyro's ESS/s",
                       None if ratio is None else ratio >= 100, "—" if ratio is None else f"{ratio:,.0f}×"))
    ex = next((r for r in rows if r["dataset"] == "synthetic" and r["tool"] == "poolwise exact"), None)
    if ex and "wall_s" in ex:
        checks.append((f"{ex['rows']:,}-row fit under 3 s wall time", ex["wall_s"] < 3.0, f"{ex['wall_s']:.2f} s"))
        pk = ex.get("peak_mib")
        checks.append((f"{ex['rows']:,}-row fit under 2 GiB peak memory", None if pk is None else pk < 2048,
                       "—" if pk is None else f"{pk:,.0f} MiB"))
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
             "element: all coefficients, σ, τ and every group deviation b_j (NumPyro: b = τ·z as a "
             "deterministic site; the min over the raw z is given below).")
    L.append("- Peak MiB: `ru_maxrss` of a fresh process (via `os.wait4`) that loads the data and runs "
             "the fit; for poolwise exact a process that runs one fit only, for the other rows the "
             f"timing process. A bare `import poolwise` process peaks at {_fmt(bare.get('peak_mib'), 0)} MiB.")
    L.append("- Plain NumPyro: a hand-written non-centered model, `MCMC(NUTS(model), num_warmup, num_samples, "
             "num_chains=4, chain_method=\"vectorized\")`, default `target_accept_prob` 0.8 and tree depth 10, "
             "JAX defaults (float32), the same priors as poolwise's defaults:")
    for ds in ("radon", "synthetic"):
        try:
            L.append(f"  - {ds}: {numpyro_priors(ds, quick)['text']}")
        except Exception as err:  # pragma: no cover - reporting only
            L.append(f"  - {ds}: ({err})")
    L.append("- Synthetic set: y = 1 + 0.5·x1 − 0.3·x2 + b_g + N(0, 1), b_g ~ N(0, 0.5²); group sizes "
             "lognormal(0, 1.5) scaled to the row count (min 1), fixed seed; formula `y ~ x1 + x2 + (1 | g)`.")
    for n in notes:
        L.append(f"- {n}")
    L.append("")
    L.append("## Details")
    L.append("")
    for r in rows:
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
