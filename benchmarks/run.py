"""Benchmark: poolwise against NumPyro, PyMC, nutpie, Bambi and statsmodels, side by side in one run.

Tasks (``--only`` names), in the order they run:

* ``radon``, ``synthetic`` (200,000 rows), ``logistic`` (100,000 rows, bernoulli, correlated
  slopes), ``sleepstudy`` (correlated slopes): poolwise (exact and nuts)
  against plain NumPyro NUTS;
* ``path``: radon's pooling path; ``reml``: poolwise ``method="empirical"`` (REML) against
  statsmodels MixedLM (and mixedlm-rs); ``reml_lme4``: warm REML on one grouping factor (Dyestuff,
  sleepstudy, radon, Orthodont) against lme4 in the same run; ``glmm_lme4``: binary and count
  outcomes (cbpp, Contraception, grouseticks) by poolwise's default method against ``glmer``, warm, and
  cbpp's CLI fit cold; ``laplace``: poolwise laplace on the logistic set;
* ``pymc``: the same models in PyMC, sampled by PyMC's default NUTS and by nutpie, on all four
  data sets; ``bambi``: ``bmb.Model(formula, df).fit()`` on radon, synthetic and sleepstudy
  (both in their own virtual environment, ``benchmarks/_data/_venv_pymc``; skipped with a note
  when it is missing);
* ``large``: the exact path on Parquet files generated once (10⁷ rows / 10⁵ groups and 10⁸ rows /
  10⁶ groups, cached under ``benchmarks/_data/``), against the bare DuckDB ``GROUP BY`` of the
  same columns (the floor);
* ``crossed``: several grouping factors, lme4 (R's ``lmer`` / ``glmer``, Debian's ``r-cran-lme4``,
  installed by the task when ``library(lme4)`` fails) in the same run: Penicillin, Pastes, InstEval
  (two models), grouseticks (Poisson), and a 10⁶-row crossed Parquet set against its bare DuckDB
  aggregation (``bench_lme4.py`` holds the R side).

Usage::

    python benchmarks/run.py --out benchmarks/results.md          # the full run (make bench)
    python benchmarks/run.py --quick --out benchmarks/_data/smoke.md   # everything small (minutes)
    python benchmarks/run.py --only sleepstudy,pymc               # re-measure a subset; the other
                                                                  # rows are kept from results.json
    python benchmarks/run.py --only large --large-sets 1e7:1e5    # one large set

Every measurement runs in its own fresh Python process (a worker, ``bench_workers.py``), so that

* peak memory (``ru_maxrss`` of that child, read with :func:`os.wait4`) belongs to one task;
* the plain NumPyro baseline runs with JAX's defaults (float32), untouched by poolwise's NUTS
  path, which switches JAX to float64 when it is imported;
* one task's JIT caches and garbage do not flatter or burden the next.

Each worker has a timeout; a failed or stopped row is recorded (with the end of its log), not
fatal.  The Markdown is written by ``bench_render.py``; the data sets by ``bench_data.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_data import (CROSSED_LARGE, CROSSED_LARGE_QUICK, CROSSED_SEED, CROSSED_WARMUP, DATA_DIR, DATASETS,
                        LARGE_CHUNK_ROWS, LARGE_SEED, LARGE_SETS, LARGE_SETS_QUICK, SYNTH_ROWS, cached_crossed,
                        cached_large, crossed_dir, crossed_glob, crossed_name, export, export_lme4, large_dir,
                        large_glob, large_name, load)
from bench_lme4 import MODELS as LME4_MODELS
from bench_lme4 import ensure_lme4
from bench_render import machine, render, versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "bench_workers.py"

#: warmup+draws per chain of every sampler on the 100,000-row logistic set (NUTS over all rows
#: per gradient; the full 1000+1000 takes far longer than the benchmark's budget on 2 cores)
LOGISTIC_DEFAULT = "50+50"
#: the timed exact fits (sub-second) run this many times in their process; the median counts
EXACT_REPEATS = 5
#: each logistic row is stopped after this many seconds (float64 NUTS needs about 500 s at 4×(50+50))
LOGISTIC_TIMEOUT_S = 900.0
#: the separate virtual environment with PyMC, nutpie and Bambi (git-ignored; made by make bench)
PYMC_VENV = "benchmarks/_data/_venv_pymc"
PYMC_INSTALL = (f"python -m venv {PYMC_VENV} && {PYMC_VENV}/bin/pip install pymc nutpie bambi pyarrow "
                "\"matplotlib<3.11\"")
#: warmup+draws per chain of every other sampler (and poolwise nuts) on the 200,000-row set (the full 1000+1000 takes hours)
NUMPYRO_SYNTH_DEFAULT = "50+50"
#: NumPyro / PyMC / Bambi runs are stopped after this many seconds
NUMPYRO_TIMEOUT_S = 1200.0
#: each large-set row (generation, the floor, the fit) is stopped after this many seconds
LARGE_TIMEOUT_S = 3600.0
#: each crossed row (lme4 or poolwise, one model) is stopped after this many seconds
CROSSED_TIMEOUT_S = 1800.0
#: rows measured elsewhere (a GPU machine), included when the file exists
EXTERNAL_ROWS = "benchmarks/gpu_rows.json"

#: tasks of ``--only`` besides the data sets
EXTRA_TASKS = ("path", "reml", "reml_lme4", "glmm_lme4", "laplace", "pymc", "bambi", "large", "crossed")
TASKS = (*DATASETS, *EXTRA_TASKS)
#: data sets of the REML rows, in order
REML_DATASETS = ("synthetic", "radon", "sleepstudy")
#: the timed REML fits per tool and process (``reml``): the fastest counts; statsmodels takes seconds a fit
#: on the 200,000-row set, hence fewer
REML_REPEATS = {"poolwise": 15, "mixedlm-rs": 15, "statsmodels": 3}
#: the ``reml_lme4`` rows: model key (``bench_lme4.MODELS``) → (label, lme4 fits in its R process (the
#: first is not counted), poolwise's timed warm fits)
REML_LME4_MODELS = {
    "dyestuff": ("Dyestuff", 31, 30),
    "sleepstudy": ("sleepstudy", 31, 30),
    "radon": ("radon", 31, 30),
    "orthodont": ("Orthodont", 31, 30),
}
#: the ``glmm_lme4`` rows: model key (``bench_lme4.MODELS``) → (label, lme4 fits in its R process, warm
#: poolwise fits, whether the CLI's cold fit is timed too)
GLMM_LME4_MODELS = {
    "cbpp": ("cbpp", 31, 10, True),
    "contraception": ("Contraception", 11, 5, False),
    "grouseticks_centred": ("grouseticks (centred HEIGHT)", 11, 1, False),
}
#: data sets of the PyMC and Bambi rows (``--quick``: radon only; compiling each model takes 20–60 s)
PYMC_DATASETS = ("radon", "synthetic", "logistic", "logistic5k", "poisson", "sleepstudy")
#: the 100,000-row GLMM sets: every sampler at ``--logistic``'s settings, each row stopped after ``--logistic-timeout``
BIG_GLMM_SETS = ("logistic", "poisson")
BAMBI_DATASETS = ("radon", "synthetic", "logistic5k", "sleepstudy")
QUICK_OTHER_DATASETS = ("radon",)

Log = Callable[[str], None]


def task_of(row: dict[str, Any]) -> str:
    """The ``--only`` task a row belongs to (rows saved before tasks existed: their data set,
    except PyMC rows, which now belong to ``pymc``)."""
    if "task" in row:
        return str(row["task"])
    if str(row.get("tool", "")).startswith("PyMC"):
        return "pymc"
    return str(row["dataset"])


# ----------------------------------------------------------------------------------------------
# spawning workers


def spawn(task: str, timeout: float | None = None, python: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one worker in a fresh process (in the repository root); its JSON result plus its own
    peak RSS (MiB, of the child and the largest of its own children) and the process's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        res_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        cmd = [python or sys.executable, str(WORKER), task, json.dumps(kwargs), str(res_path)]
        # the benchmark's modules first, then whatever PYTHONPATH the run was given (a source tree)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"))
                                                             if p)}
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                    start_new_session=True)
            status, rusage = _wait(proc, timeout)
        elapsed = time.perf_counter() - t0
        if status != 0 or not res_path.exists():
            # the log names files under the repository: shown relative to it, so that no path
            # of the machine that ran the benchmark ends up in the results
            tail = log_path.read_text(errors="replace").replace(f"{ROOT}/", "")[-3000:]
            timed_out = status == -9 and timeout is not None and elapsed >= timeout
            return {"error": f"worker {task} failed (status {status}) after {elapsed:.0f} s", "log": tail,
                    "timed_out": timed_out, "timeout_s": timeout, "peak_mib": rusage.ru_maxrss / 1024.0}
        out = json.loads(res_path.read_text())
        out["peak_mib"] = rusage.ru_maxrss / 1024.0  # KiB on Linux
        out["process_s"] = elapsed
        return out


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> tuple[int, Any]:
    """Wait for the child with os.wait4 (its own rusage); past the timeout, kill its process group
    (the child and any sampler processes it started)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if deadline is not None and time.monotonic() > deadline:
            _kill_group(proc)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return -9, rusage
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:  # the worker runs in its own session: stop it (and its children) too
            _kill_group(proc)
            raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------------------------
# poolwise's default priors, for the hand-written models


def numpyro_priors(dataset: str, quick: bool) -> dict[str, Any]:
    """The priors poolwise uses for a random-intercept data set (its defaults)."""
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


def slopes_priors(dataset: str, quick: bool) -> dict[str, Any]:
    """poolwise's default priors for a ``y ~ x + (1 + x | g)`` model."""
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


def model_priors(dataset: str, quick: bool) -> dict[str, Any]:
    """The hand-written models' priors of a data set (random intercept or correlated slopes)."""
    return numpyro_priors(dataset, quick) if "(1 |" in DATASETS[dataset][0] else slopes_priors(dataset, quick)


def bambi_priors(dataset: str, quick: bool) -> tuple[dict[str, Any], list[str]]:
    """poolwise's default priors in Bambi's names and terms, and what could not be carried over.

    Coefficients → ``Normal(mu, sigma)``, σ → ``Exponential(lam)``, a group SD ``sd(T|G)`` → the
    group term ``1|G`` or ``T|G`` as ``Normal(0, HalfStudentT(nu, sigma))``.  Bambi has no
    correlation between group terms, so an ``lkj`` prior has no counterpart.
    """
    import poolwise.data
    from poolwise.spec import ModelSpec

    df, formula = load(dataset, quick)
    bound = ModelSpec(formula, family=DATASETS[dataset][1]).bind(poolwise.data.read_table(df))
    out: dict[str, Any] = {}
    missing: list[str] = []
    for name, p in bound.priors.items():
        if name in bound.coef_names and p.dist == "normal":
            m, s = p.mean_sd()
            out[name] = ["Normal", {"mu": m, "sigma": s}]
        elif name == "sigma" and p.dist == "exponential":
            out["sigma"] = ["Exponential", {"lam": p.kwargs["rate"]}]
        elif name.startswith("sd(") and p.dist == "half_student_t":
            term, group = name[3:-1].split("|")
            key = f"{'1' if term == 'Intercept' else term}|{group}"
            out[key] = ["Normal", {"mu": 0.0, "sigma": ["HalfStudentT", {"nu": p.kwargs["df"],
                                                                         "sigma": p.kwargs["sigma"]}]}]
        else:
            missing.append(f"{name} ~ {p}")
    return out, missing


# ----------------------------------------------------------------------------------------------
# the tasks


def run_intercept(args: argparse.Namespace, dataset: str, quick: bool, chains: int, draws: int, warmup: int,
                  rows: list[dict[str, Any]], notes: list[str], log: Log) -> None:
    """radon / synthetic: poolwise exact and nuts against plain NumPyro NUTS."""
    pri = numpyro_priors(dataset, quick)
    # poolwise exact: warm-up fit + timed fit (+ ESS) in one process ...
    r = spawn("poolwise", dataset=dataset, method="exact", quick=quick, chains=chains, draws=draws,
              warmup=warmup, timed=True, repeats=EXACT_REPEATS)
    # ... and peak memory of one fit alone, in a fresh process
    m = spawn("poolwise", dataset=dataset, method="exact", quick=quick, chains=chains, draws=draws,
              warmup=warmup, timed=False)
    if "error" not in r:
        r["peak_mib_timed_process"] = r.pop("peak_mib")
        r["peak_mib"] = m.get("peak_mib")
        r["one_fit_process_s"] = m.get("process_s")
    rows.append({"dataset": dataset, "tool": "poolwise exact", "settings": f"{chains}×{draws}", **r})
    log(f"{dataset}: poolwise exact {json.dumps(r)[:2000]}")

    nw, nd = other_settings(args, dataset, quick, warmup, draws)
    if not quick:  # full NUTS of poolwise at the same settings as the other samplers
        run_poolwise_nuts(args, dataset, chains, nw, nd, rows, notes, log)

    if dataset == "synthetic" and args.skip_numpyro_synthetic:
        notes.append("NumPyro was not run on the synthetic set (--skip-numpyro-synthetic).")
        return
    if dataset == "synthetic" and not quick and (nw, nd) != (warmup, draws):
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
    rows.append({"dataset": dataset, "tool": f"NumPyro NUTS ({r.get('dtype', 'float32')})",
                 "settings": f"{chains}×({nw}+{nd})", "baseline": True, **r})
    log(f"{dataset}: NumPyro {json.dumps(r)[:2000]}")


def run_poolwise_nuts(args: argparse.Namespace, dataset: str, chains: int, warmup: int, draws: int,
                      rows: list[dict[str, Any]], notes: list[str], log: Log) -> None:
    """poolwise ``method="nuts"`` (full NUTS, float64, its default retries at a higher target
    acceptance when transitions diverge) at the settings of the other samplers on the data set."""
    timeout = other_timeout(args, dataset)
    r = spawn("poolwise", dataset=dataset, method="nuts", quick=False, chains=chains, draws=draws,
              warmup=warmup, timed=True, warm=False, timeout=timeout)
    tool = "poolwise nuts (float64)"
    if "error" in r and r.get("timed_out"):
        notes.append(f"{tool} on {dataset} did not finish {chains}×({warmup}+{draws}) within {timeout:.0f} s "
                     f"and was stopped; it has no ESS/s.")
    elif r.get("divergences") and len(r["divergences"]) > 1:
        notes.append(f"{tool} on {dataset}: transitions diverged at target_accept 0.8, so poolwise ran again at "
                     f"a higher target (divergences per attempt {r['divergences']}, final target "
                     f"{r.get('target_accept')}); its wall time includes every attempt.")
    rows.append({"dataset": dataset, "tool": tool, "settings": f"{chains}×({warmup}+{draws})", **r})
    log(f"{dataset}: poolwise nuts {json.dumps(r)[:2000]}")


def other_settings(args: argparse.Namespace, dataset: str, quick: bool, warmup: int, draws: int) -> tuple[int, int]:
    """(warmup, draws) per chain of the non-poolwise samplers on a data set: the full settings, except
    on the synthetic and logistic sets (``--numpyro-synthetic``, ``--logistic``) and in ``--quick``."""
    if quick:
        return (50, 50) if dataset in BIG_GLMM_SETS else (warmup, draws)
    if dataset == "synthetic":
        w, d = (int(v) for v in args.numpyro_synthetic.split("+"))
        return w, d
    if dataset in BIG_GLMM_SETS:
        w, d = (int(v) for v in args.logistic.split("+"))
        return w, d
    return warmup, draws


def other_timeout(args: argparse.Namespace, dataset: str) -> float:
    return args.logistic_timeout if dataset in BIG_GLMM_SETS else args.numpyro_timeout


def run_logistic(args: argparse.Namespace, quick: bool, chains: int, rows: list[dict[str, Any]],
                 notes: list[str], log: Log, ds: str = "logistic") -> None:
    """poolwise's default method, poolwise nuts and plain NumPyro on a GLMM set: the 100,000-row logistic
    or poisson one (NUTS at ``--logistic``'s shortened settings) or ``logistic5k`` (everything at
    4×(1000+1000))."""
    big = ds in BIG_GLMM_SETS
    nw, nd = other_settings(args, ds, quick, 1000, 1000) if big else ((100, 100) if quick else (1000, 1000))
    settings = f"{chains}×({nw}+{nd})"
    pri = slopes_priors(ds, quick)
    timeout = args.logistic_timeout if big else args.numpyro_timeout
    if big and not quick and (nw, nd) != (1000, 1000):
        notes.append(
            f"Every sampler on the {ds} set ran at {settings}, not 4×(1000+1000): each gradient is a pass "
            f"over all 100,000 rows and NUTS takes up to hundreds per iteration, so the full run would "
            f"take far longer than this benchmark's budget on this machine. ESS/s is as measured at these "
            f"settings; nothing is extrapolated. Short warmup means less adaptation, for every sampler alike.")

    def add(tool: str, r: dict[str, Any], baseline: bool = False) -> None:
        if "error" in r and r.get("timed_out"):
            notes.append(f"{tool} on the {ds} set did not finish {settings} within {timeout:.0f} s and was "
                         f"stopped; it has no ESS/s.")
        rows.append({"dataset": ds, "tool": tool, "settings": settings, "baseline": baseline, **r})
        log(f"{ds}: {tool} {json.dumps(r)[:2000]}")

    # poolwise's default there (bernoulli: exact, Pólya-Gamma Gibbs, no compilation), at the full settings
    pw_w, pw_d = (50, 50) if quick else (1000, 1000)
    r = spawn("poolwise", dataset=ds, method="default", quick=quick, chains=chains, draws=pw_d, warmup=pw_w,
              timed=True, warm=False, timeout=timeout)
    tool = ("poolwise exact (Pólya-Gamma)" if DATASETS[ds][1] == "bernoulli"
            else f"poolwise default ({r.get('method', '?')})")
    rows.append({"dataset": ds, "tool": tool, "settings": f"{chains}×({pw_w}+{pw_d})", **r})
    log(f"{ds}: {tool} {json.dumps(r)[:2000]}")
    if quick:
        add("poolwise nuts (float64)", spawn("poolwise", dataset=ds, method="nuts", quick=quick, chains=chains,
                                             draws=nd, warmup=nw, timed=True, warm=False, timeout=timeout))
    else:
        run_poolwise_nuts(args, ds, chains, nw, nd, rows, notes, log)
    r = spawn("numpyro_slopes", dataset=ds, quick=quick, chains=chains, draws=nd, warmup=nw, priors=pri,
              timeout=timeout)
    add(f"NumPyro NUTS ({r.get('dtype', 'float32')})", r, baseline=True)


def run_sleepstudy(args: argparse.Namespace, quick: bool, chains: int, draws: int, warmup: int,
                   rows: list[dict[str, Any]], notes: list[str], log: Log) -> None:
    """poolwise exact and nuts against plain NumPyro NUTS on sleepstudy with correlated (intercept, slope)."""
    ds = "sleepstudy"
    pri = slopes_priors(ds, quick)
    r = spawn("poolwise", dataset=ds, method="exact", quick=quick, chains=chains, draws=draws, warmup=warmup,
              timed=True, repeats=EXACT_REPEATS)
    m = spawn("poolwise", dataset=ds, method="exact", quick=quick, chains=chains, draws=draws, warmup=warmup,
              timed=False)
    if "error" not in r:
        r["peak_mib_timed_process"] = r.pop("peak_mib")
        r["peak_mib"] = m.get("peak_mib")
        r["one_fit_process_s"] = m.get("process_s")
    rows.append({"dataset": ds, "tool": "poolwise exact", "settings": f"{chains}×{draws}", **r})
    log(f"{ds}: poolwise exact {json.dumps(r)[:2000]}")
    if not quick:
        run_poolwise_nuts(args, ds, chains, warmup, draws, rows, notes, log)
    r = spawn("numpyro_slopes", dataset=ds, quick=quick, chains=chains, draws=draws, warmup=warmup, priors=pri,
              timeout=args.numpyro_timeout)
    rows.append({"dataset": ds, "tool": f"NumPyro NUTS ({r.get('dtype', 'float32')})",
                 "settings": f"{chains}×({warmup}+{draws})", "baseline": True, **r})
    log(f"{ds}: NumPyro {json.dumps(r)[:2000]}")


def run_path(quick: bool, rows: list[dict[str, Any]], task_notes: dict[str, list[str]], log: Log) -> None:
    """The pooling path of radon with its default grid (no competitor: no other tool has one)."""
    r = spawn("path", dataset="radon", quick=quick)
    rows.append({"dataset": "radon", "task": "path", "tool": "poolwise pooling_path",
                 "settings": f"{r.get('grid_points', '?')} grid points", **r})
    log(f"radon: pooling path {json.dumps(r)[:2000]}")
    task_notes.setdefault("path", []).append(
        "Pooling path: no other tool computes one, so it has no competitor row; the equivalent by hand "
        "would be one fixed-τ fit per grid point.")


def _has_mixedlm_rs() -> tuple[bool, str]:
    """Whether mixedlm-rs imports in this Python, and why not."""
    chk = subprocess.run([sys.executable, "-c", "import mixedlm_rs; print(mixedlm_rs.__version__)"],
                         capture_output=True, text=True)
    if chk.returncode == 0:
        return True, chk.stdout.strip()
    return False, (chk.stderr.strip().splitlines() or ["import failed"])[-1]


def run_reml(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]],
             task_notes: dict[str, list[str]], log: Log) -> None:
    """REML fits of poolwise, statsmodels MixedLM and (when it imports) mixedlm-rs, same data, same run."""
    notes = task_notes.setdefault("reml", [])
    have_rs, why = _has_mixedlm_rs()
    if not have_rs:
        notes.append(f"REML: mixedlm-rs was not run: it does not import in this environment ({why}); install it "
                     f"with `.venv/bin/pip install mixedlm-rs`.")
    tools = ["poolwise", "statsmodels"] + (["mixedlm-rs"] if have_rs else [])
    names = {"poolwise": "poolwise REML (empirical)", "statsmodels": "statsmodels MixedLM REML (lbfgs)",
             "mixedlm-rs": "mixedlm-rs REML"}
    for ds in REML_DATASETS:
        for tool in tools:
            n = 2 if quick else REML_REPEATS[tool]
            r = spawn("reml", dataset=ds, tool=tool, quick=quick, repeats=n, timeout=args.numpyro_timeout)
            rows.append({"dataset": ds, "task": "reml", "tool": names[tool], "reml_tool": tool,
                         "settings": f"REML, min of {n} warm fits", **r})
            log(f"{ds}: REML {tool} {json.dumps(r)[:2000]}")
            if "error" in r:
                notes.append(f"REML: {names[tool]} failed on {ds}: {r['error']} (log in the details).")


def run_reml_lme4(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]],
                  task_notes: dict[str, list[str]], log: Log) -> None:
    """Warm REML on one grouping factor, lme4 in the same run: ``lmer`` (R) and ``pw.fit(...,
    method="empirical")`` on the same CSV, each the fastest of many warm fits in one process (the
    crossed rows' workers)."""
    models = {k: (label, r_rep, p_rep, False) for k, (label, r_rep, p_rep) in REML_LME4_MODELS.items()}
    _run_against_lme4(args, quick, rows, task_notes.setdefault("reml_lme4", []), log, "reml_lme4", models,
                      what="REML against lme4", r_tool="lme4 lmer REML", method="empirical",
                      quick_reps=(3, 2), pw_settings="min of {} warm fits")


def run_glmm_lme4(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]],
                  task_notes: dict[str, list[str]], log: Log) -> None:
    """Binary and count outcomes against glmer in the same run: ``glmer`` (R, Laplace) and poolwise's
    default method (``pw.fit(formula, df, family=..., seed=0)``, 4×1000 draws) on the same CSV, warm (the
    fastest of several fits in one process, after a first), and cbpp's CLI fit in a fresh process."""
    _run_against_lme4(args, quick, rows, task_notes.setdefault("glmm_lme4", []), log, "glmm_lme4",
                      GLMM_LME4_MODELS, what="GLMMs against glmer", r_tool="lme4 glmer (Laplace)",
                      method="default", quick_reps=(3, 1), pw_settings="4×1000, min of {} warm fits")


def _run_against_lme4(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]], notes: list[str],
                      log: Log, task: str, models: dict[str, tuple[str, int, int, bool]], *, what: str,
                      r_tool: str, method: str, quick_reps: tuple[int, int], pw_settings: str) -> None:
    """lme4 (when R has it) and poolwise's ``method`` on each model's CSV, same run: ``models`` maps a
    model key (``bench_lme4.MODELS``) to (label, lme4 fits in its R process, warm poolwise fits, whether
    the CLI's cold fit is timed too)."""
    have_r, why = ensure_lme4(install=not args.no_install_r)
    if not have_r:
        notes.append(f"{what}: the lme4 rows were not run: lme4 is not available ({why}); on Debian "
                     f"`apt-get install r-cran-lme4` (the task tries it itself unless `--no-install-r`).")
        log(f"{task}: no lme4 ({why}); poolwise rows only")
    for key, (label, r_rep, p_rep, cold) in models.items():
        if quick:
            r_rep, p_rep = quick_reps
        model = LME4_MODELS[key]
        csv = export_lme4(model.data, quick)
        base = {"dataset": label, "task": task, "crossed_model": key, "formula": model.pw_formula}
        if have_r:
            r = spawn("lme4", model=key, csv=csv, repeats=r_rep, timeout=args.crossed_timeout)
            rows.append({**base, "tool": r_tool, "crossed_tool": "lme4",
                         "settings": f"min of {r_rep - 1} warm fits", **r})
            log(f"{label}: lme4 {json.dumps({k: v for k, v in r.items() if 'code' not in k})[:1500]}")
            if "error" in r:
                notes.append(f"{what}: lme4 on {label} failed ({r['error']}; log in the details).")
        extra = {"cold_cli": True} if cold else {}
        r = spawn("crossed_fit", model=key, csv=csv, method=method, repeats=p_rep, timeout=args.crossed_timeout,
                  **extra)
        tool = "poolwise empirical (REML)" if method == "empirical" else f"poolwise default ({r.get('method', '?')})"
        rows.append({**base, "tool": tool, "crossed_tool": method, "settings": pw_settings.format(p_rep), **r})
        log(f"{label}: poolwise {method} {json.dumps(r)[:1500]}")
        if "error" in r:
            notes.append(f"{what}: poolwise on {label} failed ({r['error']}; log in the details).")


def run_laplace(args: argparse.Namespace, quick: bool, chains: int, rows: list[dict[str, Any]],
                task_notes: dict[str, list[str]], log: Log) -> None:
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
            "(near) independent, so its ESS measures the approximation's draws, not MCMC mixing.")
        if r.get("constant"):
            notes.append(f"poolwise laplace: {', '.join(r['constant'])} are constant across the draws (point "
                         "estimates) and have no ESS; the min ESS is over the other quantities.")
    rows.append({"dataset": ds, "task": "laplace", "tool": "poolwise laplace", "settings": f"{chains}×{draws}",
                 **r})
    log(f"{ds}: poolwise laplace {json.dumps(r)[:2000]}")


def _pymc_python(args: argparse.Namespace, notes: list[str], need: str) -> str | None:
    """The PyMC venv's Python when it imports ``need``, else ``None`` (with a note saying why)."""
    py = Path(args.pymc_python)
    py = py if py.is_absolute() else ROOT / py
    if not py.exists():
        notes.append(f"{need} rows were not run: no Python at `{args.pymc_python}` (made by `make bench`, or by "
                     f"hand: `{PYMC_INSTALL}`).")
        return None
    chk = subprocess.run([str(py), "-c", f"import {need.lower()}"], capture_output=True, text=True, cwd=ROOT)
    if chk.returncode != 0:
        why = (chk.stderr.strip().splitlines() or ["import failed"])[-1]
        notes.append(f"{need} rows were not run: `import {need.lower()}` fails in `{args.pymc_python}` ({why}); "
                     f"install it with `{PYMC_VENV}/bin/pip install {need.lower()}`.")
        return None
    return str(py)


def run_pymc(args: argparse.Namespace, quick: bool, chains: int, draws: int, warmup: int,
             rows: list[dict[str, Any]], task_notes: dict[str, list[str]], log: Log) -> None:
    """PyMC's default NUTS and nutpie on the four data sets, the models and priors of the NumPyro rows."""
    notes = task_notes.setdefault("pymc", [])
    py = _pymc_python(args, notes, "PyMC")
    if py is None:
        log("pymc: skipped (no PyMC environment)")
        return
    has_nutpie = subprocess.run([py, "-c", "import nutpie"], capture_output=True).returncode == 0
    if not has_nutpie:
        notes.append(f"PyMC + nutpie rows were not run: nutpie does not import in `{args.pymc_python}`.")
    shortened = []
    for ds in QUICK_OTHER_DATASETS if quick else PYMC_DATASETS:
        nw, nd = other_settings(args, ds, quick, warmup, draws)
        if not quick and (nw, nd) != (warmup, draws):
            shortened.append(f"{ds} at {chains}×({nw}+{nd})")
        pri = model_priors(ds, quick)
        path = export(ds, quick)
        for sampler in ("pymc", "nutpie") if has_nutpie else ("pymc",):
            tool = "PyMC NUTS (default sampler)" if sampler == "pymc" else "PyMC + nutpie"
            r = spawn("pymc", python=py, dataset=ds, quick=quick, chains=chains, draws=nd, warmup=nw, priors=pri,
                      sampler=sampler, data_path=os.path.relpath(path, ROOT), timeout=other_timeout(args, ds))
            if "error" in r:
                what = "was stopped after" if r.get("timed_out") else "failed within"
                notes.append(f"{tool} on {ds} {what} {other_timeout(args, ds):.0f} s at {chains}×({nw}+{nd}) "
                             f"({r['error']}; log in the details); it has no ESS/s.")
            rows.append({"dataset": ds, "task": "pymc", "tool": tool, "settings": f"{chains}×({nw}+{nd})", **r})
            log(f"{ds}: {tool} {json.dumps(r)[:2000]}")
    if shortened:
        notes.append("PyMC (both samplers) ran with the same shortened settings as NumPyro where full runs would "
                     f"take hours on this machine: {', '.join(shortened)}. ESS/s is as measured at those settings; "
                     "nothing is extrapolated.")


def run_bambi(args: argparse.Namespace, quick: bool, chains: int, draws: int, warmup: int,
              rows: list[dict[str, Any]], task_notes: dict[str, list[str]], log: Log) -> None:
    """``bmb.Model(formula, df, priors=poolwise's defaults).fit(...)`` on radon, synthetic and sleepstudy."""
    notes = task_notes.setdefault("bambi", [])
    py = _pymc_python(args, notes, "Bambi")
    if py is None:
        log("bambi: skipped (no Bambi in the PyMC environment)")
        return
    shortened = []
    for ds in QUICK_OTHER_DATASETS if quick else BAMBI_DATASETS:
        nw, nd = other_settings(args, ds, quick, warmup, draws)
        if not quick and (nw, nd) != (warmup, draws):
            shortened.append(f"{ds} at {chains}×({nw}+{nd})")
        pri, missing = bambi_priors(ds, quick)
        if missing:
            notes.append(f"Bambi on {ds}: no counterpart for {'; '.join(missing)} — Bambi models the group terms "
                         "of `(Days | Subject)` as independent (no correlation parameter), so its model has one "
                         "parameter fewer than poolwise's and the others'.")
        path = export(ds, quick)
        r = spawn("bambi", python=py, dataset=ds, quick=quick, chains=chains, draws=nd, warmup=nw, priors=pri,
                  data_path=os.path.relpath(path, ROOT), timeout=other_timeout(args, ds))
        if "error" in r:
            what = "was stopped after" if r.get("timed_out") else "failed within"
            notes.append(f"Bambi on {ds} {what} {other_timeout(args, ds):.0f} s at {chains}×({nw}+{nd}) "
                         f"({r['error']}; log in the details); it has no ESS/s.")
        rows.append({"dataset": ds, "task": "bambi", "tool": "Bambi (PyMC NUTS)", "settings": f"{chains}×({nw}+{nd})",
                     "bambi_priors": pri, **r})
        log(f"{ds}: Bambi {json.dumps(r)[:2000]}")
    if shortened:
        notes.append("Bambi ran with the same shortened settings as NumPyro where a full run would take hours on "
                     f"this machine: {', '.join(shortened)}. ESS/s is as measured; nothing is extrapolated.")


def parse_large_sets(text: str | None, quick: bool) -> list[tuple[int, int]]:
    """``"1e7:1e5,1e8:1e6"`` → [(10⁷, 10⁵), (10⁸, 10⁶)]; the defaults when ``text`` is empty."""
    if not text:
        return list(LARGE_SETS_QUICK if quick else LARGE_SETS)
    out = []
    for item in text.split(","):
        rows, groups = (int(float(v)) for v in item.split(":"))
        if rows < groups or groups < 2:
            raise SystemExit(f"--large-sets: {item!r} needs rows ≥ groups ≥ 2")
        out.append((rows, groups))
    return out


def run_large(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]],
              task_notes: dict[str, list[str]], log: Log) -> None:
    """The exact path on large Parquet sets: generation (once, cached), the bare DuckDB aggregation
    (the floor), then ``pw.fit(formula, "<dir>/*.parquet", method="exact", seed=0)``."""
    notes = task_notes.setdefault("large", [])
    warm = (10_000, 100)
    if cached_large(*warm) is None:
        r = spawn("gen_large", rows=warm[0], groups=warm[1], seed=LARGE_SEED, chunk_rows=LARGE_CHUNK_ROWS,
                  timeout=600)
        if "error" in r:
            notes.append(f"Large sets: the warm-up set could not be made: {r['error']}.")
            return
    warm_glob = os.path.relpath(large_glob(*warm), ROOT)
    for n_rows, n_groups in parse_large_sets(args.large_sets, quick):
        ds = f"large {large_name(n_rows, n_groups)}"
        base = {"dataset": ds, "task": "large", "large_rows": n_rows, "large_groups": n_groups}
        glob = os.path.relpath(large_glob(n_rows, n_groups), ROOT)
        man = cached_large(n_rows, n_groups)
        if man is None:
            log(f"{ds}: generating {n_rows:,} rows in {n_groups:,} groups under "
                f"{os.path.relpath(large_dir(n_rows, n_groups), ROOT)}")
            r = spawn("gen_large", rows=n_rows, groups=n_groups, seed=LARGE_SEED, chunk_rows=LARGE_CHUNK_ROWS,
                      timeout=args.large_timeout)
            rows.append({**base, "tool": "generation (NumPy + pyarrow, in chunks)",
                         "settings": f"{LARGE_CHUNK_ROWS:,} rows a chunk", "cached": False,
                         **({"wall_s": r.get("generate_s")} if "error" not in r else {}), **r})
            log(f"{ds}: generation {json.dumps(r)[:2000]}")
            if "error" in r:
                notes.append(f"{ds}: generation failed ({r['error']}); no rows for this set.")
                continue
        else:
            rows.append({**base, "tool": "generation (NumPy + pyarrow, in chunks)",
                         "settings": f"{LARGE_CHUNK_ROWS:,} rows a chunk", "cached": True, **man,
                         "wall_s": man.get("generate_s")})
            log(f"{ds}: cached ({man['files']} files, {man['bytes'] / 2**20:,.0f} MiB)")
        r = spawn("floor", glob=glob, repeats=args.floor_repeats, timeout=args.large_timeout)
        rows.append({**base, "tool": "DuckDB GROUP BY (the floor)", "settings": "one scan", **r})
        log(f"{ds}: floor {json.dumps({k: v for k, v in r.items() if k != 'query'})[:2000]}")
        if args.large_floor_only:
            notes.append(f"{ds}: only generation and the bare aggregation were run (`--large-floor-only`).")
            continue
        kw: dict[str, Any] = {}
        if args.large_draws:
            kw["draws"] = args.large_draws
        r = spawn("poolwise_large", glob=glob, warmup_glob=warm_glob, timeout=args.large_timeout, **kw)
        if "error" in r:
            what = "was stopped after" if r.get("timed_out") else "failed within"
            notes.append(f"poolwise exact on {ds} {what} {args.large_timeout:.0f} s ({r['error']}; peak "
                         f"{r.get('peak_mib', float('nan')):,.0f} MiB; log in the details).")
        settings = f"{r.get('chains', 4)}×{r.get('draws', args.large_draws or 1000)}"
        rows.append({**base, "tool": "poolwise exact (Parquet glob)", "settings": settings, **r})
        log(f"{ds}: poolwise exact {json.dumps(r)[:2000]}")


#: the crossed task's data sets: model key → (table label, lme4 repeats in its R process, poolwise repeats of
#: empirical and exact in their process; exact None = no exact row)
CROSSED_MODELS = {
    "penicillin": ("Penicillin", 20, 10, 5),
    "pastes": ("Pastes", 20, 10, 5),
    "insteval": ("InstEval", 2, 1, 1),
    "insteval_service": ("InstEval (service, dept)", 2, 1, None),
    "grouseticks": ("grouseticks (Poisson)", 10, 5, None),
}
#: InstEval's poolwise rows warm up on this many of its first rows (imports, JIT, caches), then time one fit
CROSSED_WARMUP_ROWS = 2_000
#: the crossed rows with a cold run (a fresh process, as the CLI runs) beside the warm one
CROSSED_COLD = ("penicillin", "pastes")


def run_crossed(args: argparse.Namespace, quick: bool, chains: int, rows: list[dict[str, Any]],
                task_notes: dict[str, list[str]], log: Log) -> None:
    """Several grouping factors, lme4 in the same run: lme4 REML / glmer against poolwise
    ``method="empirical"`` (REML, Laplace) and ``"exact"``; the large crossed Parquet set against its floor."""
    notes = task_notes.setdefault("crossed", [])
    have_r, why = ensure_lme4(install=not args.no_install_r)
    if have_r:
        log(f"crossed: lme4 available ({why})")
    else:
        notes.append(f"Crossed designs: the lme4 rows were not run: lme4 is not available ({why}); on Debian "
                     f"`apt-get install r-cran-lme4` (the task tries it itself unless `--no-install-r`).")
        log(f"crossed: no lme4 ({why}); poolwise rows only")
    draws = 100 if quick else 1000
    for key, (label, r_rep, e_rep, x_rep) in CROSSED_MODELS.items():
        model = LME4_MODELS[key]
        csv = export_lme4(model.data, quick)
        ds = label + (" (first 5,000 rows)" if quick and model.data == "InstEval" else "")
        base = {"dataset": ds, "task": "crossed", "crossed_model": key, "formula": model.pw_formula}
        cold = key in CROSSED_COLD
        glmm = model.family is not None
        if have_r:
            r = spawn("lme4", model=key, csv=csv, repeats=r_rep, cold=cold, timeout=args.crossed_timeout)
            tool = "lme4 glmer (Laplace)" if glmm else "lme4 lmer REML"
            rows.append({**base, "tool": tool, "crossed_tool": "lme4",
                         "settings": (f"min of {r_rep - 1} warm fits" if r_rep > 2 else
                                      "one warm fit" if r_rep == 2 else "one fit"), **r})
            log(f"{ds}: {tool} {json.dumps({k: v for k, v in r.items() if 'code' not in k})[:1500]}")
        methods = [("empirical", e_rep)] + ([("exact", x_rep)] if x_rep is not None else [])
        for method, rep in methods:
            big = model.data == "InstEval"
            if args.crossed_fast and big and method == "exact":
                continue  # kept from the saved results (--crossed-fast)
            r = spawn("crossed_fit", model=key, csv=csv, method=method, repeats=rep, cold_cli=cold, chains=chains,
                      draws=draws, warmup_rows=CROSSED_WARMUP_ROWS if big else None, timeout=args.crossed_timeout)
            if method == "empirical":
                tool = "poolwise empirical (Laplace)" if glmm else "poolwise empirical (REML)"
                settings = f"min of {rep} warm fits" if rep > 1 else "one warm fit"
                if big:
                    settings = f"one fit, after a warm-up fit on {CROSSED_WARMUP_ROWS:,} rows"
            else:
                tool = "poolwise exact"
                settings = f"{chains}×{draws}" + (f", min of {rep} warm fits" if rep > 1 else ", one warm fit")
                if big:
                    settings = f"{chains}×{draws}, one fit, after a warm-up fit on {CROSSED_WARMUP_ROWS:,} rows"
            if "error" in r:
                what = (f"was stopped after {args.crossed_timeout:.0f} s (`--crossed-timeout`)" if r.get("timed_out")
                        else f"failed ({r['error']}; log in the details)")
                notes.append(f"Crossed designs: {tool} on {ds} {what}.")
            rows.append({**base, "tool": tool, "crossed_tool": method, "settings": settings, **r})
            log(f"{ds}: {tool} {json.dumps(r)[:1500]}")
    run_crossed_large(args, quick, rows, notes, log)


def run_crossed_large(args: argparse.Namespace, quick: bool, rows: list[dict[str, Any]], notes: list[str],
                      log: Log) -> None:
    """The large crossed Parquet set: generation (once, cached), the bare DuckDB aggregation (the floor),
    then ``pw.fit("y ~ 1 + (1 | g1) + (1 | g2)", "<dir>/*.parquet", method="exact", seed=0)``."""
    for size in (CROSSED_WARMUP, CROSSED_LARGE_QUICK if quick else CROSSED_LARGE):
        if cached_crossed(*size) is None:
            log(f"crossed: generating {size[0]:,} rows, {size[1]:,} × {size[2]:,} levels under "
                f"{os.path.relpath(crossed_dir(*size), ROOT)}")
            r = spawn("gen_crossed", rows=size[0], n1=size[1], n2=size[2], seed=CROSSED_SEED,
                      chunk_rows=LARGE_CHUNK_ROWS, timeout=args.crossed_timeout)
            if "error" in r:
                notes.append(f"Crossed designs: the Parquet set of {size[0]:,} rows could not be made: {r['error']}.")
                return
    n_rows, n1, n2 = CROSSED_LARGE_QUICK if quick else CROSSED_LARGE
    ds = crossed_name(n_rows, n1, n2)
    man = cached_crossed(n_rows, n1, n2) or {}
    base = {"dataset": ds, "task": "crossed", "crossed_model": "large", "large_rows": n_rows, "levels": [n1, n2],
            "files": man.get("files"), "bytes": man.get("bytes")}
    glob = os.path.relpath(crossed_glob(n_rows, n1, n2), ROOT)
    r = spawn("crossed_floor", glob=glob, repeats=args.floor_repeats, timeout=args.crossed_timeout)
    rows.append({**base, "tool": "DuckDB GROUP BY (the floor)", "crossed_tool": "floor",
                 "settings": "pairs and levels, one scan", **r})
    log(f"{ds}: floor {json.dumps({k: v for k, v in r.items() if k != 'query'})[:1500]}")
    if args.crossed_fast:
        return  # the exact fit's row is kept from the saved results
    kw: dict[str, Any] = {}
    if quick:
        kw["draws"] = 100
    r = spawn("poolwise_crossed_large", glob=glob, warmup_glob=os.path.relpath(crossed_glob(*CROSSED_WARMUP), ROOT),
              timeout=args.crossed_timeout, **kw)
    if "error" in r:
        what = "was stopped after" if r.get("timed_out") else "failed within"
        notes.append(f"Crossed designs: poolwise exact on {ds} {what} {args.crossed_timeout:.0f} s ({r['error']}; peak "
                     f"{r.get('peak_mib', float('nan')):,.0f} MiB; log in the details).")
    rows.append({**base, "tool": "poolwise exact (Parquet glob)", "crossed_tool": "exact",
                 "settings": f"{r.get('chains', 4)}×{r.get('draws', kw.get('draws', 1000))}", **r})
    log(f"{ds}: poolwise exact {json.dumps(r)[:1500]}")


# ----------------------------------------------------------------------------------------------
# rows measured elsewhere (a GPU machine)


def load_external(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    p = p if p.is_absolute() else ROOT / p
    if not p.exists():
        return []
    return list(json.loads(p.read_text()).get("rows", []))


def save_external(path: str, new_rows: list[dict[str, Any]], device: str, started: str, argv: list[str]) -> None:
    """Add this run's rows to the external-rows file, marked with the device; same (data set, tool,
    device) rows are replaced."""
    p = Path(path)
    p = p if p.is_absolute() else ROOT / p
    old = load_external(path)
    mark = [{**r, "device": device, "measured": started, "command": "python benchmarks/run.py " + " ".join(argv)}
            for r in new_rows if r.get("run_started") == started]
    keys = {(r["dataset"], r["tool"], r["device"]) for r in mark}
    kept = [r for r in old if (r["dataset"], r["tool"], r.get("device")) not in keys]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"rows": kept + mark}, indent=1))


# ----------------------------------------------------------------------------------------------
# ratios


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ESS/s; the ratio to the NumPyro row and to the best non-poolwise sampler of the same data set;
    REML: the others' wall time over each row's; large sets: the fit over the floor."""
    samplers = [r for r in rows if task_of(r) not in ("path", "reml", "large", "crossed")]
    for row in rows:
        if "min_ess" in row and "wall_s" in row and row.get("wall_s"):
            row["ess_per_s"] = row["min_ess"] / row["wall_s"]
    for row in samplers:
        row.pop("ratio", None)
        row.pop("ratio_best_other", None)
        if "ess_per_s" not in row:
            continue
        base = next((b for b in samplers if b.get("baseline") and b["dataset"] == row["dataset"]
                     and "ess_per_s" in b), None)
        if base is not None and not row.get("baseline"):
            row["ratio"] = row["ess_per_s"] / base["ess_per_s"]
        others = [b for b in samplers if b["dataset"] == row["dataset"] and not b["tool"].startswith("poolwise")
                  and "ess_per_s" in b]
        if others:
            best = max(others, key=lambda b: b["ess_per_s"])
            row["ratio_best_other"] = row["ess_per_s"] / best["ess_per_s"]
            row["best_other"] = best["tool"]
    for row in rows:
        if task_of(row) != "reml" or "wall_s" not in row:
            continue
        same = [b for b in rows if task_of(b) == "reml" and b["dataset"] == row["dataset"] and "wall_s" in b
                and b.get("run_started") == row.get("run_started")]
        for ref in ("statsmodels", "mixedlm-rs"):
            b = next((b for b in same if b.get("reml_tool") == ref), None)
            if b is not None:
                row[f"x_vs_{ref}"] = b["wall_s"] / row["wall_s"]
        others = [b for b in same if b.get("reml_tool") != "poolwise"]
        if others:
            best = min(others, key=lambda b: b["wall_s"])
            row["x_vs_best_other"] = best["wall_s"] / row["wall_s"]
            row["best_other"] = best["tool"]
    for row in rows:
        if task_of(row) != "large" or "wall_s" not in row or not row["tool"].startswith("poolwise"):
            continue
        floor = next((b for b in rows if task_of(b) == "large" and b["dataset"] == row["dataset"]
                      and b["tool"].startswith("DuckDB") and "wall_s" in b
                      and b.get("run_started") == row.get("run_started")), None)
        if floor is not None:
            row["x_floor"] = row["wall_s"] / floor["wall_s"]
    crossed_ratios(rows)


def crossed_ratios(rows: list[dict[str, Any]]) -> None:
    """Crossed rows: each poolwise row's wall time over lme4's (same model, same run; ``x_lme4``, the
    cold ones over lme4's cold process, ``x_lme4_cold``), the largest relative difference of its
    estimates from lme4's (``vs_lme4``), and the large set's fit over its floor (``x_floor``)."""
    crossed = [r for r in rows if task_of(r) in ("crossed", "reml_lme4", "glmm_lme4")]
    for row in crossed:
        for k in ("x_lme4", "x_lme4_cold", "x_floor", "vs_lme4"):
            row.pop(k, None)
        if "wall_s" not in row or row.get("crossed_tool") in ("lme4", "floor"):
            continue
        same = [b for b in crossed if b.get("crossed_model") == row.get("crossed_model") and "wall_s" in b
                and b.get("run_started") == row.get("run_started")]
        ref = next((b for b in same if b.get("crossed_tool") == "lme4"), None)
        if ref is not None and ref.get("wall_s"):
            row["x_lme4"] = row["wall_s"] / ref["wall_s"]
            if row.get("cold_cli_s") is not None and ref.get("cold_s"):
                row["x_lme4_cold"] = row["cold_cli_s"] / ref["cold_s"]
            if row.get("crossed_tool") == "empirical":
                row["vs_lme4"] = estimates_vs_lme4(row, ref)
        floor = next((b for b in same if b.get("crossed_tool") == "floor"), None)
        if floor is not None and floor.get("wall_s"):
            row["x_floor"] = row["wall_s"] / floor["wall_s"]


def _slow_crossed(row: dict[str, Any]) -> bool:
    """A crossed row ``--crossed-fast`` does not measure: InstEval's exact fit, the large set's exact fit."""
    return row.get("crossed_tool") == "exact" and (row.get("crossed_model") in ("insteval", "large"))


def estimates_vs_lme4(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """The largest relative difference of poolwise's estimates from lme4's (absolute where lme4's is 0):
    the SDs and σ by name (the empirical fit's summary rows ``sd(term|group)``, ``sigma``: its point
    estimates), β in order (both treatment coding, intercept first) from the REML / Laplace estimates."""
    est = ref.get("estimates") or {}
    mine = row.get("point_estimates") or row.get("posterior_means") or {}
    out: dict[str, float] = {}
    sds = [(mine.get(k), v) for k, v in (est.get("sd") or {}).items()]
    if est.get("cor"):
        sds += [(mine.get(k), v) for k, v in est["cor"].items()]
    if sds and all(a is not None for a, _ in sds):
        out["sd"] = max(_rel_diff(a, b) for a, b in sds)
    if "sigma" in mine and est.get("sigma") is not None and ref.get("tool", "").startswith("lme4 lmer"):
        out["sigma"] = abs(mine["sigma"] - est["sigma"]) / est["sigma"]
    beta = (row.get("estimates") or {}).get("beta")
    fixef = list((est.get("fixef") or {}).values())
    if isinstance(beta, list) and len(beta) == len(fixef) and fixef:
        out["beta"] = max(_rel_diff(float(a), b) for a, b in zip(beta, fixef))
    return out


def _rel_diff(a: float, b: float) -> float:
    """|a − b| / |b|; the absolute difference where lme4's value is 0 (an SD on the boundary)."""
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


# ----------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results.md", help="Markdown file to write (and its .json)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run, everything small: 4×100 draws (+100 warmup), a 5,000-row synthetic set, a "
                         "2,000-row logistic set, PyMC and Bambi on radon only, one 10⁶-row / 10⁴-group Parquet set; "
                         "no poolwise-nuts row on radon")
    ap.add_argument("--numpyro-synthetic", default=NUMPYRO_SYNTH_DEFAULT, metavar="WARMUP+DRAWS",
                    help="warmup+draws per chain of NumPyro, PyMC and Bambi on the 200,000-row set (default "
                         "%(default)s; the full 1000+1000 takes hours on 2 cores)")
    ap.add_argument("--numpyro-timeout", type=float, default=NUMPYRO_TIMEOUT_S,
                    help="stop a NumPyro / PyMC / Bambi / REML run after this many seconds (default %(default)s)")
    ap.add_argument("--skip-numpyro-synthetic", action="store_true", help="do not run NumPyro on the synthetic set")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help=f"run only these tasks ({', '.join(TASKS)}; repeat or comma-separate; path = radon's "
                         "pooling path, reml = REML vs statsmodels (and mixedlm-rs), reml_lme4 = warm REML on Dyestuff, "
                         "sleepstudy, radon and Orthodont vs lme4, glmm_lme4 = cbpp, Contraception and grouseticks "
                         "(poolwise's default method) vs glmer, laplace = poolwise laplace on "
                         "the logistic set, pymc = PyMC default sampler and nutpie, bambi = Bambi, large = the "
                         "Parquet sets); the rows of the others are kept from the saved results .json next to --out")
    ap.add_argument("--no-merge", action="store_true", help="with --only: do not keep the other tasks' rows")
    ap.add_argument("--logistic", default=LOGISTIC_DEFAULT, metavar="WARMUP+DRAWS",
                    help="warmup+draws per chain of every sampler on the 100,000-row logistic set "
                         "(default %(default)s)")
    ap.add_argument("--logistic-timeout", type=float, default=LOGISTIC_TIMEOUT_S,
                    help="stop each logistic row after this many seconds (default %(default)s)")
    ap.add_argument("--pymc-python", default=f"{PYMC_VENV}/bin/python",
                    help="Python with pymc, nutpie and bambi for the PyMC and Bambi rows (default %(default)s, "
                         "relative to the repository root; made by make bench); the rows are skipped, with a "
                         "note, when it is missing")
    ap.add_argument("--large-sets", metavar="ROWS:GROUPS[,...]",
                    help="the large Parquet sets (default 1e7:1e5,1e8:1e6; --quick: 1e6:1e4)")
    ap.add_argument("--large-timeout", type=float, default=LARGE_TIMEOUT_S,
                    help="stop each large-set row (generation, floor, fit) after this many seconds "
                         "(default %(default)s)")
    ap.add_argument("--large-floor-only", action="store_true",
                    help="large sets: generate and time the bare aggregation only, no poolwise fit")
    ap.add_argument("--large-draws", type=int, help="draws per chain of the large-set fits (default: poolwise's)")
    ap.add_argument("--floor-repeats", type=int, default=2,
                    help="timed runs of the bare aggregation after one untimed run; the fastest counts "
                         "(default %(default)s)")
    ap.add_argument("--external-rows", default=EXTERNAL_ROWS, metavar="FILE",
                    help="rows measured in a separate run on another machine (a GPU), included in the table "
                         "when the file exists (default %(default)s)")
    ap.add_argument("--device-note", metavar="TEXT",
                    help="this run is on another device (e.g. \"1× NVIDIA H200, jax[cuda12]\"): also write its "
                         "rows to --external-rows, marked \"measured on TEXT\", for the main run's table")
    ap.add_argument("--crossed-fast", action="store_true",
                    help="with --only crossed: skip the slow exact rows (InstEval, the large Parquet set) and keep "
                         "their rows from the saved results .json (marked with the run they come from)")
    ap.add_argument("--crossed-timeout", type=float, default=CROSSED_TIMEOUT_S,
                    help="stop each crossed-design row (a model's lme4 fits, poolwise's fits, the large crossed set's "
                         "generation, floor and fit) after this many seconds (default %(default)s)")
    ap.add_argument("--no-install-r", action="store_true",
                    help="crossed: do not try `apt-get install r-cran-lme4` when lme4 is missing (its rows are "
                         "skipped, with a note)")
    ap.add_argument("--from-json", help="re-render the Markdown from a saved results .json (no measuring)")
    args = ap.parse_args(argv)

    if args.from_json:  # re-render a finished run's table (no measuring)
        saved = json.loads(Path(args.from_json).read_text())
        add_ratios(saved["rows"])
        saved["not_measured"] = [t for t in TASKS if not any(task_of(r) == t for r in saved["rows"])]
        saved["external"] = load_external(args.external_rows)
        saved["external_path"] = args.external_rows
        text = render(saved, prior_text=_prior_text)
        Path(args.out).write_text(text)
        print(text)
        return 0

    quick = args.quick
    chains = 4
    draws, warmup = (100, 100) if quick else (1000, 1000)
    started = _dt.datetime.now().astimezone()
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    task_notes: dict[str, list[str]] = {}  # notes of the tasks besides the data sets

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    bare = spawn("import")
    log(f"bare `import poolwise`: peak RSS {bare.get('peak_mib', float('nan')):.0f} MiB")

    only = _parse_only(args.only)
    for dataset in ("radon", "synthetic"):
        if dataset in only:
            run_intercept(args, dataset, quick, chains, draws, warmup, rows, notes, log)
    for dataset in ("logistic", "logistic5k", "poisson"):
        if dataset in only:
            run_logistic(args, quick, chains, rows, notes, log, ds=dataset)
    if "sleepstudy" in only:
        run_sleepstudy(args, quick, chains, draws, warmup, rows, notes, log)
    if "path" in only:
        run_path(quick, rows, task_notes, log)
    if "reml" in only:
        run_reml(args, quick, rows, task_notes, log)
    if "reml_lme4" in only:
        run_reml_lme4(args, quick, rows, task_notes, log)
    if "glmm_lme4" in only:
        run_glmm_lme4(args, quick, rows, task_notes, log)
    if "laplace" in only:
        run_laplace(args, quick, chains, rows, task_notes, log)
    if "pymc" in only:
        run_pymc(args, quick, chains, draws, warmup, rows, task_notes, log)
    if "bambi" in only:
        run_bambi(args, quick, chains, draws, warmup, rows, task_notes, log)
    if "large" in only:
        run_large(args, quick, rows, task_notes, log)
    if "crossed" in only:
        run_crossed(args, quick, chains, rows, task_notes, log)
    for row in rows:
        row.setdefault("run_started", started.isoformat())

    # rows of the tasks not run now come from the saved results (--only)
    merged_from = None
    if set(only) != set(TASKS) and not args.no_merge:
        saved_path = Path(args.out).with_suffix(".json")
        if saved_path.exists():
            saved = json.loads(saved_path.read_text())
            if bool(saved.get("quick")) == quick:
                merged_from = saved.get("started")
                # large sets not measured now keep their rows (``--only large --large-sets 1e8:1e6``
                # replaces that set's rows only)
                now_large = {r["dataset"] for r in rows if task_of(r) == "large"}
                kept = [r for r in saved["rows"] if task_of(r) not in only
                        or (task_of(r) == "large" and r["dataset"] not in now_large)
                        or (args.crossed_fast and task_of(r) == "crossed" and _slow_crossed(r))]
                kept_large = {r["dataset"] for r in kept if task_of(r) == "large"}
                if kept_large:
                    old_large = [n for n in saved.get("task_notes", {}).get("large", [])
                                 if any(ds in n for ds in kept_large)]
                    task_notes["large"] = old_large + task_notes.get("large", [])
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
    order = {ds: i for i, ds in enumerate(DATASETS)}
    rows.sort(key=lambda r: (order.get(r["dataset"], len(order)), TASKS.index(task_of(r))
                             if task_of(r) in TASKS else len(TASKS)))

    add_ratios(rows)
    for row in rows:
        if row["run_started"] == started.isoformat() and row.get("baseline") and row.get("divergences"):
            notes.append(f"NumPyro on {row['dataset']} had {row['divergences']} divergent transitions at "
                         f"{row['settings']}; its ESS there (and so the ratio) comes from a poorly adapted run and "
                         f"says only that plain NUTS does not get far in that time, not what a full run would give.")
    if merged_from is not None:
        runs = sorted({r["run_started"] for r in rows})
        notes.append(f"This run measured only {', '.join(only)} (`--only`); the other rows are kept from earlier "
                     f"runs ({len(runs)} runs in all, started {', '.join(r[:16] for r in runs)}; each row's "
                     f"`run_started` in the details). Ratios compare rows of one data set as they stand in the "
                     f"table, which may come from different runs (each row's `run_started`); the REML and "
                     f"large-set ratios use rows of the same run only.")
    if args.device_note:
        save_external(args.external_rows, rows, args.device_note, started.isoformat(), argv)
        log(f"rows of this run written to {args.external_rows} (measured on {args.device_note})")
    results = {"rows": rows, "notes": notes, "task_notes": task_notes, "bare": bare, "started": started.isoformat(),
               "total_s": time.perf_counter() - t_start, "quick": quick, "only": only,
               "command": "python benchmarks/run.py " + " ".join(argv), "device_note": args.device_note,
               "machine": machine(), "versions": versions()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    results["not_measured"] = [t for t in TASKS if not any(task_of(r) == t for r in rows)]
    results["external"] = [] if args.device_note else load_external(args.external_rows)
    results["external_path"] = args.external_rows
    text = render(results, prior_text=_prior_text)
    out.write_text(text)
    print(text)
    return 0


def _prior_text(dataset: str, quick: bool) -> str:
    """poolwise's default priors of a data set, as text (for the report)."""
    return str(model_priors(dataset, quick)["text"])


def _parse_only(values: list[str] | None) -> list[str]:
    """The tasks named by ``--only`` (all when none), in the order they run."""
    if not values:
        return list(TASKS)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise SystemExit(f"--only: unknown task(s) {bad}; choose from {list(TASKS)}")
    return [d for d in TASKS if d in names]


if __name__ == "__main__":
    sys.exit(main())
