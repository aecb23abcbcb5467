"""The benchmark's Markdown: the side-by-side tables, the targets, how each row was measured."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_data import (DATASETS, FLOOR_AGGREGATES, LARGE_CHUNK_ROWS, LARGE_FORMULA, LARGE_SETS, LOGISTIC_ROWS,
                        SYNTH_ROWS)

#: the pooling-path target (seconds, warm call)
PATH_TARGET_S = 1.0
#: REML: poolwise at least this many times faster than statsmodels MixedLM on the 200,000-row set
REML_TARGET_X = 20.0
#: the large-set targets: (rows, groups), fit ≤ this × the bare aggregation, peak memory below this (MiB)
LARGE_TARGET_SET = LARGE_SETS[-1]
LARGE_TARGET_X = 1.5
LARGE_TARGET_MIB = 4 * 1024

#: crossed designs: REML / exact warm at most lme4's REML time (Penicillin, Pastes); cold under this (s)
CROSSED_COLD_TARGET_S = 3.0
#: InstEval: exact (4×1000) at most this × lme4's REML time; the large crossed set: ≤ this × its floor
CROSSED_EXACT_X = 3.0
CROSSED_FLOOR_X = 5.0
#: estimates equal to lme4's: REML to this (relative), glmer (Laplace) to that
CROSSED_REML_RTOL = 1e-4
CROSSED_GLMM_RTOL = 1e-3

EXTRA = ("path", "reml", "reml_lme4", "glmm_lme4", "large", "crossed")
#: the ``glmm_lme4`` rows: model key → label; poolwise's default warm at most this many times glmer's
GLMM_LME4_LABELS = {"cbpp": "cbpp", "contraception": "Contraception",
                    "grouseticks_centred": "grouseticks (centred HEIGHT)"}
GLMM_LME4_X = 5.0
#: cbpp's CLI fit in a fresh process under this many seconds
GLMM_COLD_S = 3.0
#: the data sets of the ``reml_lme4`` rows (warm REML at most lme4's wall time), model key → label
REML_LME4_LABELS = {"dyestuff": "Dyestuff", "sleepstudy": "sleepstudy", "radon": "radon", "orthodont": "Orthodont"}
ANCHOR_POINT = "#point-estimates-reml-and-the-pooling-path"
ANCHOR_REML_LME4 = "#one-grouping-factor-warm-reml-against-lme4"
ANCHOR_CROSSED = "#crossed-designs-lme4-in-the-same-run"
ANCHOR_LARGE = "#large-parquet-sets-the-exact-path-against-the-bare-aggregation"


def task_of(row: dict[str, Any]) -> str:
    if "task" in row:
        return str(row["task"])
    if str(row.get("tool", "")).startswith("PyMC"):
        return "pymc"
    return str(row["dataset"])


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
    for name in ("poolwise", "jax", "jaxlib", "numpyro", "arviz", "numpy", "scipy", "pandas", "duckdb", "pyarrow",
                 "statsmodels"):
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
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _x(v: Any) -> str:
    """A ratio: 1,234× / 12× / 1.23× / 0.012×."""
    if v is None:
        return "—"
    if v >= 10:
        return f"{v:,.0f}×"
    if v >= 0.1:
        return f"{v:.2f}×"
    return f"{v:.2g}×"


def _vec(v: Any) -> str:
    return "—" if v is None else ", ".join(f"{x:.4g}" for x in v)


def _int(v: Any) -> str:
    return "" if v is None else f"{v:,}"


def _failed(r: dict[str, Any]) -> str:
    return "stopped (timeout)" if r.get("timed_out") else "failed"


def render(results: dict[str, Any], prior_text: Callable[[str, bool], str] | None = None) -> str:
    """The Markdown of a run (``results``: what run.py saves as .json, plus ``external`` rows)."""
    all_rows: list[dict[str, Any]] = results["rows"]
    notes: list[str] = results.get("notes", [])
    task_notes: dict[str, list[str]] = results.get("task_notes", {})
    external: list[dict[str, Any]] = results.get("external", [])
    quick = bool(results.get("quick"))
    bare = results.get("bare", {})
    started = _dt.datetime.fromisoformat(results["started"])
    rows = [r for r in all_rows if task_of(r) not in EXTRA]
    fits = [r for r in all_rows if task_of(r) == "reml"]
    paths = [r for r in all_rows if task_of(r) == "path"]
    large = [r for r in all_rows if task_of(r) == "large"]
    crossed = [r for r in all_rows if task_of(r) == "crossed"]
    reml_lme4 = [r for r in all_rows if task_of(r) == "reml_lme4"]
    glmm_lme4 = [r for r in all_rows if task_of(r) == "glmm_lme4"]
    mach, ver = results.get("machine") or machine(), results.get("versions") or versions()
    L: list[str] = []
    L.append("# poolwise benchmark: poolwise vs NumPyro, PyMC, nutpie, Bambi and statsmodels MixedLM")
    L.append("")
    if quick:
        L.append("**QUICK SMOKE RUN (`--quick`): 4×100 draws, a 5,000-row synthetic set, a 2,000-row logistic "
                 "set, PyMC and Bambi on radon only, a small Parquet set. Not the benchmark.**")
        L.append("")
    L.append(f"- Date: {started:%Y-%m-%d %H:%M %Z}; whole benchmark took {results.get('total_s', 0):.0f} s")
    L.append(f"- Machine: {mach['cpus']} CPUs ({mach['affinity']} usable), {mach['cpu']}, {mach['ram']} RAM; "
             f"{mach['platform']}, Python {mach['python']}")
    L.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    other_ver = next((r["versions"] for r in all_rows if task_of(r) == "pymc" and "versions" in r), None)
    bambi_ver = next((r["versions"] for r in all_rows if task_of(r) == "bambi" and "versions" in r), None)
    if other_ver or bambi_ver:
        merged = {**(other_ver or {}), **(bambi_ver or {})}
        L.append("- PyMC environment: " + ", ".join(f"{k} {v}" for k, v in merged.items()))
    L.append(f"- Command: `{results.get('command', 'python benchmarks/run.py')}`")
    missing = results.get("not_measured") or []
    if missing:
        L.append(f"- Tasks with no rows in these results: {', '.join(missing)} (`python benchmarks/run.py --only "
                 f"{','.join(missing)}` measures them and keeps the other rows)")
    L.append("")
    L.append(f"Tables: [samplers side by side](#samplers-side-by-side) · [point estimates: REML (statsmodels "
             f"MixedLM, poolwise empirical) and the pooling path]({ANCHOR_POINT}) · [one grouping factor: warm REML "
             f"against lme4]({ANCHOR_REML_LME4}) · [large Parquet sets]"
             f"({ANCHOR_LARGE}) · [crossed designs, lme4 in the same run]({ANCHOR_CROSSED}) · [targets](#targets) · "
             f"[how it was measured](#how-it-was-measured)")
    L.append("")

    # ------------------------------------------------------------------ samplers
    L.append("## Samplers side by side")
    L.append("")
    L.append("Per data set: poolwise (exact, nuts, laplace) and the other samplers on the same model with the same "
             "priors. *× best other* = the row's ESS/s over the best non-poolwise row's of the same data set "
             "(1 = that row); *× NumPyro* = over plain NumPyro's. The REML fits (statsmodels MixedLM, poolwise "
             f"empirical) give point estimates, not draws: they are in [their own table]({ANCHOR_POINT}).")
    L.append("")
    L.append("| data set | tool | settings | rows | groups | wall s | peak MiB | min bulk ESS | ESS/s | "
             "× best other | × NumPyro |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ext_by_ds: dict[str, list[dict[str, Any]]] = {}
    for r in external:
        ext_by_ds.setdefault(r["dataset"], []).append(r)
    devices: dict[str, dict[str, Any]] = {}

    def line(r: dict[str, Any], mark: str = "") -> str:
        tool = r["tool"] + mark
        if "error" in r:
            return (f"| {r['dataset']} | {tool} | {r.get('settings', '')} | | | {_failed(r)} | "
                    f"{_fmt(r.get('peak_mib'), 0)} | | | | |")
        best = r.get("ratio_best_other")
        if best is not None and not r["tool"].startswith("poolwise") and r.get("best_other") == r["tool"]:
            xbest = "1 (best other)"
        else:
            xbest = _x(best)
        xnp = "1 (baseline)" if r.get("baseline") else _x(r.get("ratio"))
        return (f"| {r['dataset']} | {tool} | {r['settings']} | {_int(r.get('rows'))} | {_int(r.get('groups'))} | "
                f"{_fmt(r['wall_s'], 2)} | {_fmt(r.get('peak_mib'), 0)} | {_fmt(r.get('min_ess'), 0)} | "
                f"{_fmt(r.get('ess_per_s'), 1)} | {xbest} | {xnp} |")

    seen: list[str] = []
    for r in rows:
        if r["dataset"] not in seen:
            seen.append(r["dataset"])
    for ds in list(ext_by_ds):
        if ds not in seen:
            seen.append(ds)
    for ds in seen:
        for r in rows:
            if r["dataset"] == ds:
                L.append(line(r))
        for r in ext_by_ds.get(ds, []):
            dev = r.get("device", "another machine")
            devices.setdefault(dev, r)
            L.append(line(r, f" — {dev}†"))
    L.append("")
    bests = []
    for ds in seen:
        cand = [r for r in rows if r["dataset"] == ds and not r["tool"].startswith("poolwise") and "ess_per_s" in r]
        if cand:
            b = max(cand, key=lambda r: r["ess_per_s"])
            bests.append(f"{ds}: {b['tool']} ({_fmt(b['ess_per_s'], 2)} ESS/s)")
    if bests:
        L.append("Best other tool (highest ESS/s of the non-poolwise rows): " + "; ".join(bests) + ".")
        L.append("")
    for dev, r in devices.items():
        L.append(f"† measured on {dev} in a separate run ({str(r.get('measured', '?'))[:16]}, "
                 f"`{r.get('command', '?')}`; rows kept in `{results.get('external_path', 'benchmarks/gpu_rows.json')}`). "
                 "Its ratios are against "
                 "the rows of that run, not this machine's.")
        L.append("")

    # ------------------------------------------------------------------ point estimates
    if fits or paths:
        L.append("## Point estimates: REML and the pooling path")
        L.append("")
        L.append("Wall time: the fastest of several warm calls (after a warm-up call in the same fresh process; "
                 "how many: the details' `times_s`, older rows one call). The estimates "
                 "are the REML fit's: σ the residual SD, τ the group SD(s), cor their correlation (slopes). "
                 "*× best other* = the fastest non-poolwise REML row's wall time over the row's, same data set, "
                 "same run.")
        L.append("")
        L.append("| data set | tool | rows | groups | wall s | peak MiB | × best other | × statsmodels | × mixedlm-rs | "
                 "REML log-lik | σ | τ | cor | β |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in fits:
            if "error" in r:
                L.append(f"| {r['dataset']} | {r['tool']} | | | {_failed(r)} | | | | | | | | | |")
                continue
            groups = "—" if r.get("groups") is None else f"{r['groups']:,}"
            tool = r["tool"] + (" → default method (lbfgs broke down)" if r.get("lbfgs_failed") else "")
            xb = _x(r.get("x_vs_best_other")) if r.get("reml_tool") == "poolwise" else "—"
            L.append(f"| {r['dataset']} | {tool} | {r['rows']:,} | {groups} | {_fmt(r['wall_s'], 3)} | "
                     f"{_fmt(r.get('peak_mib'), 0)} | {xb} | {_x(r.get('x_vs_statsmodels'))} | "
                     f"{_x(r.get('x_vs_mixedlm-rs'))} | {r['loglik']:,.3f} | {r['sigma']:.5g} | "
                     f"{_vec(r.get('sds'))} | {_fmt(r.get('cor'), 4)} | {_vec(r.get('beta'))} |")
        for r in paths:
            if "error" in r:
                L.append(f"| {r['dataset']} | {r['tool']} | | | failed | | | | | | | | | |")
                continue
            L.append(f"| {r['dataset']} | {r['tool']} ({r['grid_points']} τ values, {r['route']}) | {r['rows']:,} | "
                     f"{r['groups']:,} | {_fmt(r['wall_s'], 3)} | {_fmt(r.get('peak_mib'), 0)} | — | — | — | | | | | |")
        L.append("")

    # ------------------------------------------------------------------ large sets
    if large:
        L.append("## Large Parquet sets: the exact path against the bare aggregation")
        L.append("")
        L.append(f"`{LARGE_FORMULA}` on Parquet files generated once and cached (`benchmarks/_data/large_*`); "
                 "*large 1e7_1e5* = 10⁷ rows in 10⁵ groups. "
                 "*× the floor* = the row's wall time over the bare DuckDB `GROUP BY` of the same columns, same "
                 "set, same run (one scan computing, per group, the count, the sums and the sums of products).")
        L.append("")
        L.append("| data set | tool | settings | rows | groups | files | wall s | peak MiB | × the floor | "
                 "min bulk ESS |")
        L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in large:
            files = ""
            if r.get("files"):
                files = f"{r['files']} ({r.get('bytes', 0) / 2**20:,.0f} MiB)"
            if "error" in r:
                L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | {_int(r.get('large_rows'))} | "
                         f"{_int(r.get('large_groups'))} | | {_failed(r)} | {_fmt(r.get('peak_mib'), 0)} | | |")
                continue
            if r["tool"].startswith("generation"):
                wall = _fmt(r.get("wall_s"), 2) + (" (cached)" if r.get("cached") else "")
                gpeak = "—" if r.get("cached") else _fmt(r.get("peak_mib"), 0)
                L.append(f"| {r['dataset']} | {r['tool']} | {r['settings']} | {_int(r.get('rows'))} | "
                         f"{_int(r.get('groups'))} | {files} | {wall} | {gpeak} | — | |")
                continue
            peak = r.get("peak_mib_fit", r.get("peak_mib"))
            ess = _fmt(r.get("min_ess"), 0)
            settings = r["settings"]
            gd = r.get("group_value_draws")
            if gd is not None and r.get("draws") is not None and gd < r["draws"]:
                settings += f" (group values {r.get('chains', 4)}×{gd})"
            L.append(f"| {r['dataset']} | {r['tool']} | {settings} | {_int(r.get('rows'))} | "
                     f"{_int(r.get('groups'))} | | {_fmt(r['wall_s'], 2)} | {_fmt(peak, 0)} | "
                     f"{'1 (the floor)' if r['tool'].startswith('DuckDB') else _x(r.get('x_floor'))} | {ess} |")
        L.append("")

    # ------------------------------------------------------------------ one factor against lme4
    if reml_lme4:
        L.extend(reml_lme4_section(reml_lme4))
    if glmm_lme4:
        L.extend(glmm_lme4_section(glmm_lme4))

    # ------------------------------------------------------------------ crossed designs
    if crossed:
        L.extend(crossed_section(crossed))

    # ------------------------------------------------------------------ targets
    L.append("## Targets")
    L.append("")
    checks: list[tuple[str, bool | None, str]] = []
    for ds in ("radon", "synthetic", "sleepstudy"):
        ex = next((r for r in rows if r["dataset"] == ds and r["tool"] == "poolwise exact"), None)
        ratio = None if ex is None else ex.get("ratio")
        what = "sleepstudy (correlated slopes)" if ds == "sleepstudy" else ds
        checks.append((f"{what}: poolwise exact ≥ 100× NumPyro's ESS/s",
                       None if ratio is None else ratio >= 100, "—" if ratio is None else f"{ratio:,.0f}×"))
    checks.extend(_pg_checks(rows))
    lg = next((r for r in rows if r["dataset"] == "logistic" and r["tool"] == "poolwise laplace"
               and "ess_per_s" in r), None)
    others = [r for r in rows if r["dataset"] == "logistic" and not r["tool"].startswith("poolwise")
              and "ess_per_s" in r]
    if lg is not None:
        rb = lg.get("ratio_best_other")
        best = max(others, key=lambda r: r["ess_per_s"]) if others else None
        checks.append(("logistic (100,000 rows, correlated slopes): poolwise ≥ 1× the best other's ESS/s — "
                       "measured with `method=\"laplace\"`, an approximation of the posterior checked against "
                       "NUTS (not an exact sampler)", None if rb is None else rb >= 1.0,
                       "—" if rb is None or best is None else f"{_x(rb)} of {best['tool']} ({lg['ess_per_s']:,.1f} vs "
                       f"{best['ess_per_s']:.3g} ESS/s), poolwise laplace at {lg['settings']}, "
                       f"{best['tool']} at {best['settings']}"))
    else:
        nuts = next((r for r in rows if r["dataset"] == "logistic" and r["tool"].startswith("poolwise nuts")), None)
        if nuts is not None:
            rb = nuts.get("ratio_best_other")
            ok = None if rb is None else rb >= 1.0
            val = "—" if rb is None else f"{_x(rb)} of {nuts.get('best_other')}, at {nuts.get('settings')}"
            if "error" in nuts:
                ok = False if (nuts.get("timed_out") and others) else None
                val = (f"poolwise nuts did not finish {nuts.get('settings')} within the timeout; "
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
                   "—" if xs is None or pr is None else f"{xs:,.1f}×: {pr['wall_s']:.3f} s vs "
                   f"{pr['wall_s'] * xs:.2f} s"))
    xr = None if pr is None else pr.get("x_vs_mixedlm-rs")
    rs_why = next((n for n in task_notes.get("reml", []) if "mixedlm-rs was not run" in n), None)
    checks.append((f"REML on the {n_reml}-row set: poolwise at least as fast as mixedlm-rs",
                   None if xr is None else xr >= 1.0,
                   (f"{xr:.2f}×: {pr['wall_s']:.3f} s vs {pr['wall_s'] * xr:.3f} s" if xr is not None and pr
                    else ("mixedlm-rs not run" if rs_why else "—"))))
    # the large sets
    tr, tg = LARGE_TARGET_SET
    fits_large = [r for r in large if r["tool"].startswith("poolwise")]
    target_row = next((r for r in fits_large if (r.get("large_rows"), r.get("large_groups")) == (tr, tg)), None)
    quick_row = None if target_row is not None or not quick else next(iter(fits_large), None)
    shown = target_row or quick_row
    label = "10⁸ rows / 10⁶ groups" if (tr, tg) == (100_000_000, 1_000_000) else f"{tr:,} rows / {tg:,} groups"
    if quick_row is not None:
        label += f" (quick run: measured on {quick_row['dataset']} instead, not the target)"
    if shown is None or "error" in shown:
        why = "not run" if shown is None else f"{_failed(shown)}: {shown.get('error')}"
        checks.append((f"{label} from Parquet: total fit ≤ {LARGE_TARGET_X}× the bare aggregation",
                       False if shown is not None else None, why))
        checks.append((f"{label} from Parquet: peak memory < {LARGE_TARGET_MIB / 1024:.0f} GiB",
                       False if shown is not None and not shown.get("timed_out") else None,
                       why if shown is None else f"{why} (peak {_fmt(shown.get('peak_mib'), 0)} MiB)"))
    else:
        x = shown.get("x_floor")
        floor = next((r for r in large if r["dataset"] == shown["dataset"] and r["tool"].startswith("DuckDB")
                      and "wall_s" in r), None)
        checks.append((f"{label} from Parquet: total fit ≤ {LARGE_TARGET_X}× the bare aggregation",
                       None if x is None else x <= LARGE_TARGET_X,
                       "—" if x is None or floor is None else f"{_x(x)}: {shown['wall_s']:.2f} s vs "
                       f"{floor['wall_s']:.2f} s"))
        pk = shown.get("peak_mib_fit", shown.get("peak_mib"))
        checks.append((f"{label} from Parquet: peak memory < {LARGE_TARGET_MIB / 1024:.0f} GiB",
                       None if pk is None else pk < LARGE_TARGET_MIB, "—" if pk is None else f"{pk:,.0f} MiB"))
    for r in fits_large:
        if r is shown or "error" in r or r.get("x_floor") is None:
            continue
        checks.append((f"({r['dataset']}, not a target) total fit / bare aggregation; peak memory", None,
                       f"{_x(r['x_floor'])}; {_fmt(r.get('peak_mib_fit', r.get('peak_mib')), 0)} MiB"))
    checks.extend(reml_lme4_checks(reml_lme4, quick))
    checks.extend(glmm_lme4_checks(glmm_lme4))
    checks.extend(crossed_checks(crossed, quick))
    for what, ok, val in checks:
        mark = "n/a" if ok is None else ("**holds**" if ok else "**MISSED**")
        L.append(f"- {what}: {mark} ({val})")
    if quick:
        L.append("- (quick run: the 200,000-row and large-set targets are not tested by it)")
    L.append("")

    # ------------------------------------------------------------------ how it was measured
    L.extend(how_measured(rows, fits, paths, large, external, bare, quick, prior_text))
    for n in notes:
        L.append(f"- {n}")
    for t in ("path", "reml", "reml_lme4", "glmm_lme4", "laplace", "pymc", "bambi", "large", "crossed"):
        for n in task_notes.get(t, []):
            L.append(f"- {n}")
    L.append("")
    L.append("## Details")
    L.append("")
    for r in all_rows + external:
        keep = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                if k not in ("dataset", "tool", "settings", "log", "model", "bambi_priors", "r_code", "cold_code",
                             "query")}
        L.append(f"- {r['dataset']} / {r['tool']}: `{json.dumps(keep)}`")
        if "log" in r:
            L.append("```")
            L.append(r["log"])
            L.append("```")
    L.append("")
    return "\n".join(L)


def how_measured(rows: list[dict[str, Any]], fits: list[dict[str, Any]], paths: list[dict[str, Any]],
                 large: list[dict[str, Any]], external: list[dict[str, Any]], bare: dict[str, Any], quick: bool,
                 prior_text: Callable[[str, bool], str] | None) -> list[str]:
    """What each row measures."""
    L = ["## How it was measured", ""]
    L.append("- Every row ran in a fresh Python process (a worker, `benchmarks/bench_workers.py`), with a timeout; "
             "a failed or stopped row is recorded with the end of its log (in the details), not fatal.")
    L.append("- *poolwise exact*: one warm-up `pw.fit(...)` (imports, caches), then the timed `pw.fit(formula, df, "
             "method=\"exact\", seed=0)` five times in the process, the median counting (all five in `times_s`: "
             "one sub-second timing swings by up to 2× with the garbage collector) — the whole call: validation, "
             "design matrix, reduction, sampling and the "
             "conversion to ArviZ InferenceData (including the pointwise log-likelihood and predictive when they "
             "fit the memory budget); 4×1000 draws. *poolwise nuts*: one `pw.fit(..., method=\"nuts\")` in the "
             "process, JIT compilation included, at the settings of the other samplers on the data set, with "
             "poolwise's default retry at a higher target acceptance when transitions diverge (every attempt "
             "counts in its wall time). *NumPyro*: wall time of one `MCMC.run` in the process, JIT "
             "compilation included.")
    L.append("- Min bulk ESS: `arviz.ess(posterior, method=\"bulk\")`, minimum over every variable and every "
             "element: all coefficients, σ, every group SD, the correlation (slopes models) and every group "
             "value (NumPyro and PyMC: the group values as deterministic sites, u = diag(s)·L·z, or b = τ·z; "
             "the min over the raw z is given in the details as `min_ess_z`; Bambi: every variable it keeps, "
             "its group values included). ESS/s = min bulk ESS / wall s.")
    L.append("- *× best other*: the row's ESS/s over the highest ESS/s among the non-poolwise rows of the same data "
             "set (NumPyro, PyMC default, PyMC + nutpie, Bambi) as they stand in the table; *× NumPyro*: over the "
             "plain NumPyro row's. Settings are given per row: where the others ran shortened settings, their "
             "ESS/s is from those settings.")
    L.append("- Peak MiB: `ru_maxrss` of a fresh process (via `os.wait4`) that loads the data and runs "
             "the fit; for poolwise exact a process that runs one fit only, for the other rows the "
             "timing process. For samplers that run chains in child processes (PyMC's default sampler, Bambi) "
             "it is the largest single process (the worker or one of its children), not their sum. A bare "
             f"`import poolwise` process peaks at {_fmt(bare.get('peak_mib'), 0)} MiB.")
    base = [r for r in rows if r.get("baseline") and "wall_s" in r]
    old = [r["dataset"] for r in base if not r.get("chain_method")]
    L.append("- Plain NumPyro: a hand-written non-centered model, `MCMC(NUTS(model), num_warmup, num_samples, "
             "num_chains=4, chain_method=\"parallel\")` after `numpyro.set_host_device_count(4)` (before JAX "
             "starts its backend, in the worker's fresh process): NumPyro's fastest CPU setting, each chain on its "
             "own virtual CPU device, the four in parallel (`chain_method` in the details; on an accelerator, one "
             "device, the chains are vectorized); default `target_accept_prob` 0.8 and tree depth 10, JAX defaults "
             "(float32), the same priors as poolwise's defaults:")
    if old:
        L.append(f"  - the NumPyro rows of {', '.join(old)} were measured before this setting, with "
                 "`chain_method=\"vectorized\"` (one device, the chains batched), slower on a CPU: re-measure them "
                 "(`--only` those data sets) before reading their ratios")
    for ds in DATASETS:
        if not any(r["dataset"] == ds for r in rows) or prior_text is None:
            continue
        try:
            L.append(f"  - {ds}: {prior_text(ds, quick)}")
        except Exception as err:  # pragma: no cover - reporting only
            L.append(f"  - {ds}: ({err})")
    L.append("- Random intercept (radon, synthetic), NumPyro and PyMC: β ~ N(m0, s0), σ ~ exponential, "
             "τ ~ half-t (poolwise's `sd(Intercept|g)`), z_j ~ N(0, 1), b_j = τ·z_j, y_i ~ N(x_i'β + b_g[i], σ). "
             "Correlated slopes (sleepstudy, logistic): s_k ~ half-t (as poolwise's `sd(...)`), L ~ "
             "`LKJCholesky(2, η)` (poolwise's `lkj(η)`), z_j ~ N(0, I₂), u_j = diag(s)·L·z_j, "
             "η_i = β₀ + β₁x_i + u_{g,0} + u_{g,1}x_i; gaussian (σ ~ exponential) or `BernoulliLogits`.")
    # every kind of row is described, measured in these results or not
    L.append("- PyMC rows: the same models and priors in PyMC (`pm.HalfStudentT` τ and b = τ·z; slopes: "
             "`pm.LKJCholeskyCov(n=2, eta, sd_dist=HalfStudentT)`, u = z·chol'; `pm.Normal` or "
             "`pm.Bernoulli(logit_p=η)`), float64, in their own virtual environment "
             "`benchmarks/_data/_venv_pymc` (git-ignored; `make bench` makes it with `pip install pymc nutpie "
             "bambi pyarrow \"matplotlib<3.11\"`: arviz-plots, which Bambi needs, does not import with "
             "matplotlib 3.11). The data sets are handed over as Parquet files (`benchmarks/_data/sets/`), "
             "read outside the timing. Wall time: building the model, compiling it and sampling.")
    L.append("  - *PyMC NUTS (default sampler)*: `pm.sample(draws, tune, chains=4, random_seed=0, "
             "progressbar=False, compute_convergence_checks=False)`, every other option PyMC's default: "
             "NUTS with `target_accept` 0.8, `jitter+adapt_diag` init, pytensor's C backend, "
             "`cores = min(4, CPUs)` (2 here: two chains at a time in child processes). pytensor caches the "
             "compiled C code on disk between runs, so a first run on a fresh machine takes longer.")
    L.append("  - *PyMC + nutpie*: the model compiled with `nutpie.compile_pymc_model` (numba backend, the "
             "default) and sampled with `nutpie.sample(chains=4, tune, draws, seed=0)`; `compile_s` in the "
             "details.")
    L.append("- *Bambi*: `bmb.Model(formula, df, family, priors=..., center_predictors=False).fit(draws, tune, "
             "chains=4, random_seed=0, progressbar=False, compute_convergence_checks=False)` — the lme4 formula "
             "of the row as is, Bambi's default inference (PyMC's NUTS, as the default-sampler row) and its "
             "default non-centered group terms. Priors: poolwise's defaults in Bambi's terms — each coefficient "
             "`Normal(mu, sigma)`, `sigma` `Exponential(lam)`, each group term `Normal(0, HalfStudentT(nu, "
             "sigma))`; `center_predictors=False` so that the intercept's prior is on the same intercept as "
             "poolwise's (Bambi's default centers the predictors). On sleepstudy Bambi's `(Days | Subject)` "
             "has independent intercept and slope terms (Bambi has no correlation parameter), so its model is "
             "not quite the others'. Wall time: `bmb.Model(...)` and `.fit(...)`.")
    L.append("- Logistic set: y ~ Bernoulli(logit⁻¹(−0.5 + 0.7·x + a_g + b_g·x)), (a_g, b_g) ~ N(0, Σ) with SDs "
             f"0.8 and 0.4 and correlation 0.5, x ~ N(0, 1); {LOGISTIC_ROWS:,} rows in 2,000 groups, sizes "
             "lognormal(0, 1) scaled to the row count (min 1), fixed seed; `pw.fit(\"y ~ x + (1 + x | g)\", df, "
             "family=\"bernoulli\", method=\"nuts\", seed=0)`. The target compares poolwise with the best other "
             "row (NumPyro, PyMC default, PyMC + nutpie).")
    L.append("- sleepstudy: lme4's data (180 rows, 18 subjects), `pw.fit(\"Reaction ~ Days + (Days | Subject)\", "
             "df, method=\"exact\", seed=0)`, 4×1000; the others 4×(1000+1000).")
    L.append("- Synthetic set: y = 1 + 0.5·x1 − 0.3·x2 + b_g + N(0, 1), b_g ~ N(0, 0.5²); group sizes "
             "lognormal(0, 1.5) scaled to the row count (min 1), fixed seed; formula `y ~ x1 + x2 + (1 | g)`.")
    L.append("- REML (the statsmodels MixedLM rows): `pw.fit(formula, df, method=\"empirical\")` (REML is its "
             "default for the gaussian family) against `statsmodels.formula.api.mixedlm(fixed, df, "
             "groups=df[g], re_formula=...).fit(reml=True, method=[\"lbfgs\"])` and, where it installs, "
             "`mixedlm_rs.mixedlm(...).fit(reml=True)` (the same statsmodels-style call; a Rust REML from PyPI); "
             "each in its own fresh process, one warm-up fit, then the timed fits (the fastest counts; "
             "`times_s` in the details). statsmodels' and mixedlm-rs' "
             "times include building the model from the formula; poolwise's is the whole `pw.fit` call from "
             "the pandas frame (validation, reduction, the REML search; an empirical fit makes its draws of β "
             "and the group values only when they are first used). σ = √scale, τ = √diag(cov_re). "
             "\"× faster\" = the other's wall time / the row's, both measured in the same run. Where "
             "statsmodels' lbfgs broke down (a non-finite log-likelihood), the row times statsmodels' default "
             "method instead (the failed attempt is `lbfgs_failed` in the details). poolwise's reduction and "
             "REML search together are `optimizer_s` in the details (`evaluations`: the σ-profiled criterion's, "
             "a batched grid of 211 values of log(τ²/σ²) and the Newton steps after it); the rest of its wall "
             "time is reading and checking the frame. Point estimates have no ESS, so these rows are not in the samplers' table.")
    L.append("- Pooling path: `pw.pooling_path(\"log_radon ~ floor + (1 | county)\", pw.datasets.radon())`, "
             "default grid (τ = 0 and 100 log-spaced values), the second call in a fresh process (the first, "
             "with imports and caches, is `cold_s` in the details).")
    aggs = ", ".join(f"`{a}`" for a in FLOOR_AGGREGATES)
    L.append("- Large sets, *generation*: the synthetic set's model with integer group ids `g`, written with "
             f"NumPy and pyarrow in chunks of {LARGE_CHUNK_ROWS:,} rows, one snappy Parquet file per chunk "
             "(each chunk takes a multivariate-hypergeometric share of every group's remaining rows and is "
             "shuffled: rows in random order, memory O(groups + chunk)); made once and cached under "
             "`benchmarks/_data/large_<rows>_<groups>/` with a manifest (made again when the generator's "
             "settings change). Its wall time and peak are those of the run that made it (or \"cached\").")
    L.append(f"- Large sets, *DuckDB GROUP BY (the floor)*: `SELECT g, {aggs} FROM read_parquet('<dir>/*.parquet') "
             "GROUP BY g`, fetched into NumPy arrays (`fetchnumpy`), DuckDB's defaults (threads = CPUs), in a "
             "fresh process: one untimed run (the files into the OS cache), then timed runs; the fastest "
             "counts (all in `times_s`).")
    L.append("- Large sets, *poolwise exact (Parquet glob)*: `pw.fit(\"y ~ x1 + x2 + (1 | g)\", "
             "\"<dir>/*.parquet\", method=\"exact\", seed=0)` — poolwise's defaults (4×1000 draws) — in a fresh "
             "process after one warm-up fit on a 10,000-row Parquet set (imports, caches); wall time of the "
             "whole call, from the path to the finished Fit (reading, reduction, sampling, InferenceData). Peak "
             "MiB: the process's `ru_maxrss` right after that call (`peak_mib_fit`; the process's final peak, "
             "after the ESS, is `peak_mib`). Min bulk ESS over β, σ, τ and 1,000 group values drawn at random "
             "(where poolwise keeps fewer draws of the group values than of the rest, to bound memory, the "
             "settings column says so and their ESS is over those draws). "
             "*× the floor* = its wall time / the floor's, same set, same run.")
    L.append("- Rows marked † come from `benchmarks/gpu_rows.json`: measured in a separate run on another "
             "machine (`python benchmarks/run.py --only logistic --device-note \"<device>\" --out <file>` "
             "there, which adds the run's rows to that file), the same workers and settings; their "
             "ratios are against the rows of that run.")
    return L


# ----------------------------------------------------------------------------------------------
# crossed designs


def _levels(r: dict[str, Any]) -> str:
    """The levels per grouping factor, largest first (lme4 and poolwise list the factors in different orders)."""
    g = r.get("groups")
    if isinstance(g, dict):
        return ", ".join(f"{k} {v:,}" for k, v in sorted(g.items(), key=lambda kv: -(kv[1] or 0)) if v is not None)
    if r.get("levels"):
        return " × ".join(f"{v:,}" for v in r["levels"])
    return ""


def _rel(v: Any) -> str:
    return "—" if v is None else f"{v:.1e}"


def _crit(r: dict[str, Any]) -> str:
    """The fit's criterion: lme4's REML criterion (or −2 log-lik of glmer); poolwise's −2 × its log-lik."""
    est = r.get("estimates") or {}
    if r.get("crossed_tool") == "lme4":
        v = est.get("REMLcrit", None if est.get("logLik") is None else -2.0 * est["logLik"])
    else:
        ll = (r.get("info") or {}).get("loglik")
        v = None if ll is None else -2.0 * ll
    return "—" if v is None else f"{v:,.6f}"


def crossed_section(crossed: list[dict[str, Any]]) -> list[str]:
    """The crossed designs' tables: lme4 beside poolwise; the large set beside its floor."""
    L = ["## Crossed designs (lme4 in the same run)", ""]
    L.append("Several grouping factors. lme4 is R's `lmer` (REML) / `glmer` (Laplace) at its defaults, run in the "
             "same benchmark run on the same CSV poolwise reads. *wall s* = the fastest warm fit in one process "
             "(lme4: after a first fit in the same R process; poolwise: after a first `pw.fit` in the same Python "
             "process); *cold s* = a fresh process as a user runs it (`Rscript -e 'library(lme4); …'`, "
             "`python -m poolwise fit data.csv -f … --method …`), start-up included. *× lme4* = the row's time "
             "over lme4's (below 1: faster). *vs lme4* = the largest relative difference of the estimates from "
             "lme4's (SDs and correlations, σ, β). *criterion*: lme4's REML criterion (glmer: −2 log-lik), "
             "poolwise's −2 × its REML (Laplace) log-likelihood.")
    L.append("")
    small = [r for r in crossed if r.get("crossed_model") != "large"]
    L.extend(_lme4_table(small))
    ver = next((r["versions"] for r in small if r.get("crossed_tool") == "lme4" and r.get("versions")), None)
    if ver:
        L.append("")
        L.append(f"lme4 {ver.get('lme4')} (Matrix {ver.get('Matrix')}), {ver.get('R')}: Debian's `r-cran-lme4`. The "
                 "R script of each lme4 row (`r_code`) is in the results .json. *min bulk ESS*: "
                 "`arviz.ess(method=\"bulk\")`, the minimum over β, σ, the SDs and correlations (over the group "
                 "values too: `min_ess_values` in the details).")
    L.append("")
    L.extend(_crossed_large_table(crossed))
    return L


def reml_lme4_section(rows: list[dict[str, Any]]) -> list[str]:
    """One grouping factor: warm REML of lme4 and poolwise, same CSV, same run."""
    L = ["## One grouping factor: warm REML against lme4", ""]
    L.append("lme4's `lmer(..., REML = TRUE)` at its defaults and poolwise's `pw.fit(formula, df, "
             "method=\"empirical\", seed=0)` (REML; the estimates only, no draws until asked) on the same CSV, in "
             "the same run. *wall s* = the fastest of the warm fits in one process (lme4: after a first fit in "
             "the same R process, each timed by `Sys.time()`; poolwise: after a first `pw.fit` in the same Python "
             "process, each the whole call from the pandas frame). *× lme4* = the row's time over lme4's (below 1: "
             "faster). *vs lme4* = the largest relative difference of the estimates from lme4's (SDs and "
             "correlations, σ, β). *criterion*: lme4's REML criterion, poolwise's −2 × its REML log-likelihood.")
    L.append("")
    L.extend(_lme4_table(rows))
    ver = next((r["versions"] for r in rows if r.get("crossed_tool") == "lme4" and r.get("versions")), None)
    if ver:
        L.append("")
        L.append(f"lme4 {ver.get('lme4')} (Matrix {ver.get('Matrix')}), {ver.get('R')}. The R script of each lme4 "
                 "row (`r_code`) is in the results .json.")
    L.append("")
    return L


#: issue 15's targets for poolwise's exact default (Pólya-Gamma) on the logistic sets: × the best other's ESS/s
PG_TARGET_X = {"logistic5k": 1.0, "logistic": 10.0, "poisson": 5.0}
#: and the 100,000-row set's wall time at 4×1000 kept draws
PG_TARGET_S = 60.0


def _pg_checks(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """poolwise's exact default on the logistic sets: at least PG_TARGET_X × the best other sampler's ESS/s;
    the 100,000-row fit under PG_TARGET_S."""
    checks: list[tuple[str, bool | None, str]] = []
    for ds, x in PG_TARGET_X.items():
        r = next((r for r in rows if r["dataset"] == ds and r["tool"].startswith(("poolwise exact", "poolwise default"))),
                 None)
        if r is None:
            continue
        what = (f"{ds} ({_int(r.get('rows'))} rows, correlated slopes): poolwise's default ({r['tool'][9:]}) "
                f"≥ {x:g}× the best other's ESS/s")
        if "error" in r:
            checks.append((what, False, _failed(r)))
            continue
        rb = r.get("ratio_best_other")
        checks.append((what, None if rb is None else rb >= x,
                       "—" if rb is None else f"{_x(rb)} of {r.get('best_other')} ({r['ess_per_s']:,.1f} ESS/s at "
                                              f"{r['settings']})"))
        if ds == "logistic":
            checks.append((f"{ds}: poolwise's default at {r['settings']} under {PG_TARGET_S:g} s",
                           r["wall_s"] < PG_TARGET_S, f"{r['wall_s']:.1f} s"))
    return checks


def glmm_lme4_section(rows: list[dict[str, Any]]) -> list[str]:
    """Binary and count outcomes: glmer and poolwise's default method, same CSV, same run."""
    L = ["## Binary and count outcomes against glmer", ""]
    L.append("lme4's `glmer(..., family)` (Laplace, nAGQ = 1) at its defaults and poolwise's `pw.fit(formula, df, "
             "family=..., seed=0)` with the method poolwise chooses for the model (its name in the tool column; "
             "exact methods draw 4×1000 from the posterior, glmer gives the Laplace estimates) on the same CSV, in "
             "the same run. *wall s* = the fastest of the warm fits in one process (as the REML rows); *cold s* "
             "(poolwise): `python -m poolwise fit <csv> -f ...` in a fresh process, timed whole; lme4's: its "
             "first fit in a fresh R process. *× lme4* = the row's time over glmer's.")
    L.append("")
    L.extend(_lme4_table(rows))
    L.append("")
    return L


def _lme4_pair(rows: list[dict[str, Any]], key: str, tool: str, what: str, task: str,
               checks: list[tuple[str, bool | None, str]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """poolwise's row (``crossed_tool`` = ``tool``) and lme4's of a model, or ``None`` after adding the
    check's line saying why there is nothing to compare (not run, or a run that failed)."""
    ref = next((r for r in rows if r.get("crossed_model") == key and r.get("crossed_tool") == "lme4"), None)
    r = next((r for r in rows if r.get("crossed_model") == key and r.get("crossed_tool") == tool), None)
    if r is None or ref is None:
        checks.append((what + f" (`--only {task}`)", None, "not run"))
        return None
    if "error" in r or "error" in ref:
        bad = r if "error" in r else ref
        checks.append((what, False if "error" in r else None, f"{bad['tool']}: {_failed(bad)}"))
        return None
    return r, ref


def glmm_lme4_checks(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """poolwise's default warm at most 5× glmer's wall time; cbpp's cold CLI fit under 3 s."""
    checks: list[tuple[str, bool | None, str]] = []
    for key, label in GLMM_LME4_LABELS.items():
        what = f"{label}: poolwise's default, warm, at most {GLMM_LME4_X:g}× glmer's wall time"
        pair = _lme4_pair(rows, key, "default", what, "glmm_lme4", checks)
        if pair is None:
            continue
        r, ref = pair
        x = r.get("x_lme4")
        checks.append((what, None if x is None else x <= GLMM_LME4_X,
                       "—" if x is None else f"{_x(x)}: {r['wall_s']:.3f} s ({r.get('method', '?')}) vs glmer "
                                             f"{ref['wall_s']:.3f} s"))
        if r.get("cold_cli_s") is not None:
            cold = float(r["cold_cli_s"])
            checks.append((f"{label}: the CLI's fit in a fresh process under {GLMM_COLD_S:g} s",
                           None if r.get("cold_cli_rc") else cold < GLMM_COLD_S,
                           "failed" if r.get("cold_cli_rc") else f"{cold:.2f} s"))
    return checks


def reml_lme4_checks(rows: list[dict[str, Any]], quick: bool) -> list[tuple[str, bool | None, str]]:
    """Warm REML on each one-factor set at most lme4's wall time, and the estimates equal to lme4's."""
    checks: list[tuple[str, bool | None, str]] = []
    for key, label in REML_LME4_LABELS.items():
        what = f"Warm REML on {label} at most lme4's wall time"
        pair = _lme4_pair(rows, key, "empirical", what, "reml_lme4", checks)
        if pair is None:
            continue
        r, ref = pair
        x = r.get("x_lme4")
        checks.append((what, None if x is None else x <= 1.0,
                       "—" if x is None else f"{_x(x)}: {r['wall_s'] * 1e3:.1f} ms vs lme4 {ref['wall_s'] * 1e3:.1f} ms"))
        vs = r.get("vs_lme4")
        worst = None if not vs else max(vs.values())
        # both maximize the same REML criterion: where the estimates differ by more, the lower criterion
        # says whose optimum is the better one (lme4's optimizer stops earlier on flat directions)
        mine, theirs = _crit_value(r), _crit_value(ref)
        gain = None if mine is None or theirs is None else mine - theirs
        ok = None if worst is None else (worst <= CROSSED_REML_RTOL or (gain is not None and gain < 0.0))
        val = "—" if not vs else ", ".join(f"{k} {v:.1e}" for k, v in vs.items())
        if gain is not None:
            val += f"; criterion poolwise − lme4 {gain:+.1e}"
        checks.append((f"{label}: REML estimates equal to lme4's to {CROSSED_REML_RTOL:g} (relative), or "
                       f"poolwise's REML criterion lower (lme4 stopped short)", ok, val))
    return checks


def _crit_value(r: dict[str, Any]) -> float | None:
    """The row's REML criterion as a number (lme4's ``REMLcrit``; poolwise's −2 × its log-likelihood)."""
    if r.get("crossed_tool") == "lme4":
        v = (r.get("estimates") or {}).get("REMLcrit")
        return None if v is None else float(v)
    ll = (r.get("info") or {}).get("loglik")
    return None if ll is None else -2.0 * float(ll)


def _lme4_table(rows: list[dict[str, Any]]) -> list[str]:
    """lme4's rows beside poolwise's: times, ratios, the estimates' differences and the criteria."""
    L = ["| data set | tool | settings | rows | levels | wall s | first s | cold s | peak MiB | × lme4 | "
         "× lme4 cold | min bulk ESS (β, σ, SDs) | vs lme4: SDs, σ, β | criterion |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | | | {_failed(r)} | | | "
                     f"{_fmt(r.get('peak_mib'), 0)} | | | | | |")
            continue
        cold = r.get("cold_s", r.get("cold_cli_s"))
        if r.get("cold_cli_rc"):
            cold_txt = "failed"
        else:
            cold_txt = _fmt(cold, 2) if cold is not None else ""
        vs = r.get("vs_lme4")
        vs_txt = "" if vs is None else ", ".join(_rel(vs.get(k)) for k in ("sd", "sigma", "beta"))
        lme4 = r.get("crossed_tool") == "lme4"
        ess = _fmt(r.get("min_ess"), 0) if r.get("min_ess") is not None else ""
        L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | {_int(r.get('rows'))} | {_levels(r)} | "
                 f"{_fmt(r['wall_s'], 3)} | {_fmt(r.get('first_s'), 3)} | {cold_txt} | {_fmt(r.get('peak_mib'), 0)} | "
                 f"{'1 (lme4)' if lme4 else _x(r.get('x_lme4'))} | {'' if lme4 else _x(r.get('x_lme4_cold'))} | "
                 f"{ess} | {vs_txt} | {_crit(r)} |")
    return L


def _crossed_large_table(crossed: list[dict[str, Any]]) -> list[str]:
    L: list[str] = []
    big = [r for r in crossed if r.get("crossed_model") == "large"]
    if big:
        L.append("A large crossed design from Parquet (generated once, cached under `benchmarks/_data/crossed_*`): "
                 "`y ~ 1 + (1 | g1) + (1 | g2)`; *× the floor* = the fit's wall time over the bare DuckDB "
                 "aggregation of the same columns (per nonzero (g1, g2) pair and per level: count, Σy, Σy²; "
                 "one scan), same run. Peak MiB of the fit: the process's `ru_maxrss` right after the fit.")
        L.append("")
        L.append("| data set | tool | settings | rows | levels | files | wall s | peak MiB | × the floor | "
                 "min bulk ESS (β, σ, SDs) |")
        L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in big:
            files = f"{r['files']} ({(r.get('bytes') or 0) / 2**20:,.0f} MiB)" if r.get("files") else ""
            if "error" in r:
                L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | {_int(r.get('large_rows'))} | "
                         f"{_levels(r)} | {files} | {_failed(r)} | {_fmt(r.get('peak_mib'), 0)} | | |")
                continue
            floor = r.get("crossed_tool") == "floor"
            L.append(f"| {r['dataset']} | {r['tool']} | {r.get('settings', '')} | {_int(r.get('large_rows'))} | "
                     f"{_levels(r)} | {files} | {_fmt(r['wall_s'], 2)} | "
                     f"{_fmt(r.get('peak_mib_fit', r.get('peak_mib')), 0)} | "
                     f"{'1 (the floor)' if floor else _x(r.get('x_floor'))} | {_fmt(r.get('min_ess'), 0)} |")
        L.append("")
    return L


def crossed_checks(crossed: list[dict[str, Any]], quick: bool) -> list[tuple[str, bool | None, str]]:
    """The issue's targets for several grouping factors, from the crossed rows."""
    checks: list[tuple[str, bool | None, str]] = []
    if not crossed:
        return [("crossed designs against lme4 (`--only crossed`)", None, "not run")]

    def row(model: str, tool: str) -> dict[str, Any] | None:
        return next((r for r in crossed if r.get("crossed_model") == model and r.get("crossed_tool") == tool), None)

    def timing(r: dict[str, Any] | None, ref: dict[str, Any] | None, limit: float) -> tuple[bool | None, str]:
        if r is None or ref is None:
            return None, "not run"
        if "error" in r or "error" in ref:
            bad = r if "error" in r else ref
            return (False if "error" in r else None), f"{bad['tool']}: {_failed(bad)}"
        x = r.get("x_lme4")
        return (None if x is None else x <= limit,
                f"{_x(x)}: {r['wall_s']:.3g} s vs lme4 {ref['wall_s']:.3g} s")

    q = " (quick run: first 5,000 rows)" if quick else ""
    ref = row("insteval", "lme4")
    ok, val = timing(row("insteval", "empirical"), ref, 1.0)
    checks.append((f"InstEval `y ~ 1 + (1|s) + (1|d)`{q}: REML at most lme4's wall time", ok, val))
    ex = row("insteval", "exact")
    ok, val = timing(ex, ref, CROSSED_EXACT_X)
    if ex is not None and "error" not in ex:
        val += f"; min bulk ESS of β, σ, SDs {_fmt(ex.get('min_ess'), 0)} at {ex.get('settings')}"
        if ex.get("min_ess_values") is not None:
            val += f", of the group values {_fmt(ex.get('min_ess_values'), 0)}"
    checks.append((f"InstEval{q}: full exact posterior (4×1000) at most {CROSSED_EXACT_X:.0f}× lme4's REML time",
                   ok, val))
    ok, val = timing(row("insteval_service", "empirical"), row("insteval_service", "lme4"), 1.0)
    checks.append((f"InstEval `y ~ service + (1|s) + (1|d) + (1|dept)`{q}: REML at most lme4's wall time", ok, val))
    for model, label in (("penicillin", "Penicillin"), ("pastes", "Pastes")):
        ref = row(model, "lme4")
        for tool, what in (("empirical", "REML"), ("exact", "exact Bayes")):
            r = row(model, tool)
            ok, val = timing(r, ref, 1.0)
            checks.append((f"{label}: {what} warm at most lme4's REML time", ok, val))
            if r is not None and "error" not in r:
                c = r.get("cold_cli_s")
                bad = bool(r.get("cold_cli_rc"))
                checks.append((f"{label}: {what} cold (a fresh `python -m poolwise fit`) under "
                               f"{CROSSED_COLD_TARGET_S:.0f} s", None if c is None else (not bad and
                                                                                         c < CROSSED_COLD_TARGET_S),
                               "—" if c is None else f"{c:.2f} s" + (" (the command failed)" if bad else "")
                               + (f"; lme4 cold {ref['cold_s']:.2f} s" if ref and ref.get("cold_s") else "")))
    for model, label, tol in (("penicillin", "Penicillin", CROSSED_REML_RTOL), ("pastes", "Pastes", CROSSED_REML_RTOL),
                              ("insteval", "InstEval", CROSSED_REML_RTOL),
                              ("insteval_service", "InstEval (service, dept)", CROSSED_REML_RTOL),
                              ("grouseticks", "grouseticks (glmer, Laplace)", CROSSED_GLMM_RTOL)):
        r = row(model, "empirical")
        vs = None if r is None else r.get("vs_lme4")
        worst = None if not vs else max(vs.values())
        checks.append((f"{label}{q if model.startswith('insteval') else ''}: estimates equal to lme4's to {tol:g} "
                       f"(relative)", None if worst is None else worst <= tol,
                       "—" if not vs else ", ".join(f"{k} {v:.1e}" for k, v in vs.items())))
    fit = next((r for r in crossed if r.get("crossed_model") == "large" and r.get("crossed_tool") == "exact"), None)
    label = "10⁶-row crossed set (10⁴ × 10³ levels)" if not quick else "crossed Parquet set (quick: small, not the target)"
    if fit is None or "error" in fit:
        why = "not run" if fit is None else f"{_failed(fit)}: {fit.get('error')}"
        checks.append((f"{label}: exact fit ≤ {CROSSED_FLOOR_X:.0f}× the bare aggregation", None if fit is None else False,
                       why))
        checks.append((f"{label}: peak memory < {LARGE_TARGET_MIB / 1024:.0f} GiB", None, why))
    else:
        x = fit.get("x_floor")
        checks.append((f"{label}: exact fit ≤ {CROSSED_FLOOR_X:.0f}× the bare aggregation",
                       None if x is None else x <= CROSSED_FLOOR_X, "—" if x is None else f"{_x(x)}: {fit['wall_s']:.2f} s"))
        pk = fit.get("peak_mib_fit", fit.get("peak_mib"))
        checks.append((f"{label}: peak memory < {LARGE_TARGET_MIB / 1024:.0f} GiB",
                       None if pk is None else pk < LARGE_TARGET_MIB, "—" if pk is None else f"{pk:,.0f} MiB"))
    return checks
