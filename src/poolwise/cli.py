"""The ``poolwise`` command: a thin Typer shell over the library, with Rich output.

Flags map one to one to library arguments; every check on their values is the library's.  A
:class:`~poolwise.errors.PoolwiseError` becomes one or two lines ``error: …`` on stderr and exit
status 2; any other exception is a bug and keeps its traceback.  Output paths are checked
before any fitting (writable, no link, none twice, an existing file only with ``--force``) and
each file is written to a temporary name and renamed into place (:mod:`poolwise.output`); Ctrl-C
stops the run and exits 130 with nothing half written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .compare import POOLINGS, Comparison, compare, pooling_factors
from .errors import PoolwiseError, PriorError, SpecError
from .fit import Fit, fit
from .output import check_folder, check_outputs, number, write_file
from .profile import (PROFILE_MAX_GROUP_VALUES, PROFILE_MAX_GROUP_VALUES_GLMM, PROFILE_MAX_PARAMETERS,
                      PROFILE_MAX_ROWS_GLMM)

__all__ = ["app", "main"]

app = typer.Typer(
    name="poolwise",
    help="Pooled, unpooled and hierarchical models of grouped data, side by side.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: groups listed by ``poolwise compare`` (the full table goes to DIR/table.csv)
SHOWN_GROUPS = 20

FIT_FILES = ("fit.nc", "summary.csv", "pooling_factors.csv")
COMPARE_FILES = ("comparison.png", "comparison.svg", "table.csv", "loo.csv",
                 *(f"{p}.nc" for p in POOLINGS))

# -- shared options ----------------------------------------------------------------------------
DataArg = Annotated[Path, typer.Argument(
    help="CSV or Parquet file, or a quoted glob of them ('trips/*.parquet'), read with DuckDB.", show_default=False)]
EngineOpt = Annotated[str | None, typer.Option(
    help="duckdb | spark: where a gaussian model's rows are reduced to per-group statistics (default duckdb; "
         "spark uses the active or a new SparkSession).", show_default=False)]
FormulaOpt = Annotated[str, typer.Option("--formula", "-f", help='lme4 formula, e.g. "y ~ x + (1 | g)".',
                                         show_default=False)]
FamilyOpt = Annotated[str | None, typer.Option(
    help="gaussian | student_t | bernoulli | binomial | poisson | negative_binomial (default: binomial for a "
         "cbind(successes, failures) outcome, else gaussian).", show_default=False)]
MethodOpt = Annotated[str | None, typer.Option(help=(
    "exact | nuts | empirical | laplace:\n\n"
    "exact: the exact posterior, group values integrated out (default for gaussian, and for bernoulli and "
    "binomial with one grouping factor: Pólya-Gamma Gibbs);\n\n"
    "nuts: NUTS on the full model, any family (default for the others);\n\n"
    "empirical: lme4's estimates, REML/ML (gaussian) or Laplace ML (bernoulli, binomial, poisson);\n\n"
    "laplace: group values integrated out by Laplace's approximation, hyperparameters sampled."),
    show_default=False)]
RemlOpt = Annotated[bool | None, typer.Option("--reml/--ml", help=(
    "REML (the default of --method empirical) or maximum-likelihood estimates, as lme4's REML=TRUE/FALSE; "
    "implies --method empirical.  --ml is the only choice for the non-gaussian families."), show_default=False)]
WeightsOpt = Annotated[str | None, typer.Option(help=(
    "Column of prior weights per row, as lme4's weights=: a gaussian row's residual variance is sigma²/w; "
    "another family's row log-likelihood is multiplied by w."), show_default=False, metavar="COL")]
SeedOpt = Annotated[int, typer.Option(help="Random seed: the same seed gives the same draws.")]
ChainsOpt = Annotated[int, typer.Option(help="Number of chains.")]
DrawsOpt = Annotated[int, typer.Option(help="Draws per chain.")]
WarmupOpt = Annotated[int, typer.Option(help="Warm-up draws per chain (nuts only).")]
PriorOpt = Annotated[list[str] | None, typer.Option(
    "--prior", help="NAME=PRIOR, e.g. 'sd(Intercept|g)=half_normal(2)'; repeatable.", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option(help="Folder to write results to (created if missing).",
                                             show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help=(
    "Overwrite files that exist in --out (and --report); a link is never written through."))]
PointwiseOpt = Annotated[bool, typer.Option("--pointwise", help=(
    "Also write the pointwise log-likelihood and posterior predictive (draws × rows) into the NetCDF "
    "files of --out (for az.loo and PPC elsewhere); they are most of a file's size."))]
ReportOpt = Annotated[Path | None, typer.Option(
    help="Write a self-contained HTML report (figures, tables, the recommendation) to this file.",
    show_default=False)]


@app.command("fit", short_help="Fit one model under one pooling.", help=(
    "Fit one model under one pooling; print its summary and priors. With --out DIR, write DIR/fit.nc "
    "(ArviZ NetCDF), DIR/summary.csv (with the group rows) and DIR/pooling_factors.csv."))
def fit_command(
    data: DataArg,
    formula: FormulaOpt,
    pooling: Annotated[list[str] | None, typer.Option(
        metavar="SETTING",
        help="hierarchical | pooled | unpooled | a positive number (a fixed group SD), for every group term; "
             "or per term TERM=SETTING, the term as the formula writes it or its grouping factor, e.g. "
             "--pooling '1|s=hierarchical' --pooling '1|d=pooled' (repeatable, or comma-separated: "
             "'1|s=hierarchical,1|d=pooled'); terms not named are hierarchical. [default: hierarchical]",
        show_default=False)] = None,
    family: FamilyOpt = None,
    method: MethodOpt = None,
    reml: RemlOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    chains: ChainsOpt = 4,
    draws: DrawsOpt = 1000,
    warmup: WarmupOpt = 1000,
    prior: PriorOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    engine: EngineOpt = None,
    pointwise: PointwiseOpt = False,
    intervals: Annotated[str, typer.Option(
        help="Confidence intervals of an empirical fit's SDs, correlations and sigma: profile (profile "
             "likelihood, as lme4's confint), wald (on the log and atanh scales, fast) or auto: profile unless "
             f"the model is large (over {PROFILE_MAX_GROUP_VALUES} group values or {PROFILE_MAX_PARAMETERS} "
             f"variance parameters; a GLMM over {PROFILE_MAX_GROUP_VALUES_GLMM} group values or "
             f"{PROFILE_MAX_ROWS_GLMM:,} rows), then wald with a note.")] = "auto",
) -> None:
    """Fit one model under one pooling; print its summary and priors.

    With --out DIR, write DIR/fit.nc (NetCDF, ArviZ), DIR/summary.csv (with group rows) and
    DIR/pooling_factors.csv.
    """
    with _errors():
        method, options = _estimation(formula, family, method, reml)
        targets, _ = _check_outputs(out, FIT_FILES, None, force)
        priors = _parse_priors(prior)
        with _progress() as step:
            f = fit(formula, os.fspath(data), family=family, pooling=_join_pooling(pooling), priors=priors,
                    weights=weights, method=method, seed=seed, chains=chains, draws=draws, warmup=warmup,
                    progress=step, engine=engine, spark=_spark_session() if engine == "spark" else None, **options)
            step("summary and convergence diagnostics", 1.0)
            summary = f.summary(groups=False, intervals=intervals)
            notes = list(summary.attrs.get("notes", f.notes()))
        console = _stdout()
        console.print(repr(f), markup=False, highlight=False)
        console.print(_summary_table(summary))
        if f.method != "empirical":  # estimates use no priors
            console.print(_priors_table(f))
        for note in notes:
            console.print(f"note: {note}", markup=False, highlight=False)
        if out is not None:
            with _progress() as step:
                step(f"writing {out}", 0.0)
                f.to_netcdf(targets["fit.nc"], overwrite=force, pointwise=pointwise)
                write_file(targets["summary.csv"], f.summary(intervals=intervals).to_csv, overwrite=force)
                # one term: indexed by group; several: by (term, group), with each term's factor
                pf = f.pooling_factors() if sum(b.q for b in f.bound.blocks) == 1 else pooling_factors(f)
                write_file(targets["pooling_factors.csv"], pf.to_csv, overwrite=force)
            _print_written(console, targets.values())


@app.command("compare", short_help="Fit pooled, unpooled and hierarchical; compare them.", help=(
    "Fit the pooled, unpooled and hierarchical models and compare them: per-group estimates, PSIS-LOO "
    "and the population distribution. With --out DIR, write DIR/comparison.png and .svg (the three "
    "panels), DIR/table.csv, DIR/loo.csv and DIR/{pooled,unpooled,hierarchical}.nc. With --report FILE, "
    "write one self-contained HTML report with the recommendation, and print the recommendation."))
def compare_command(
    data: DataArg,
    formula: FormulaOpt,
    family: FamilyOpt = None,
    method: MethodOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    chains: ChainsOpt = 4,
    draws: DrawsOpt = 1000,
    warmup: WarmupOpt = 1000,
    prior: PriorOpt = None,
    out: OutOpt = None,
    report: ReportOpt = None,
    force: ForceOpt = False,
    pointwise: PointwiseOpt = False,
) -> None:
    """Fit the pooled, unpooled and hierarchical models and compare them.

    Prints per-group estimates (the smallest groups first), PSIS-LOO of each pooling and the
    population distribution.  With --out DIR, write DIR/comparison.png and .svg (the three
    panels), DIR/table.csv, DIR/loo.csv and DIR/{pooled,unpooled,hierarchical}.nc.  With
    --report FILE, write the HTML report (:func:`poolwise.report.write_report`) and print the
    recommendation.
    """
    with _errors():
        targets, report_path = _check_outputs(out, COMPARE_FILES, report, force)
        priors = _parse_priors(prior)
        with _progress() as step:
            cmp = compare(formula, os.fspath(data), family=family, priors=priors, weights=weights, method=method,
                          seed=seed, chains=chains, draws=draws, warmup=warmup, progress=step)
            step("per-group table and pooling factors", 1.0)
            table = cmp.table()
            step("PSIS-LOO", 1.0)
            loo = cmp.loo()
            step("convergence diagnostics", 1.0)
            notes = {name: fitted.notes() for name, fitted in cmp.fits.items()}
        console = _stdout()
        console.print(repr(cmp), markup=False, highlight=False)
        for factor, term, frame in _factor_tables(cmp, table):
            console.print(_groups_table(cmp, frame, factor, term))
            if len(frame) > SHOWN_GROUPS:
                where = f"; all of them in {targets['table.csv']}" if out is not None else " (use --out for all)"
                of = f"{factor} groups" if len(cmp.factors) > 1 else "groups"
                console.print(f"{SHOWN_GROUPS} smallest of {len(frame)} {of} shown{where}.", markup=False,
                              highlight=False)
        console.print(_loo_table(loo))
        for term in cmp.factor_terms:
            console.print(_population_line(cmp.population(term), term if len(cmp.factor_terms) > 1 else None),
                          markup=False, highlight=False)
        for name, said in notes.items():
            for note in said:
                console.print(f"note ({name}): {note}", markup=False, highlight=False)
        if out is not None:
            from .plots import plot_comparison

            with _progress() as step:
                step("drawing the figure", 0.0)
                fig = plot_comparison(cmp)
                step(f"writing {out}", 0.5)
                write_file(targets["comparison.png"], lambda tmp: fig.savefig(tmp, dpi=120), overwrite=force)
                write_file(targets["comparison.svg"], fig.savefig, overwrite=force)
                write_file(targets["table.csv"], table.to_csv, overwrite=force)
                write_file(targets["loo.csv"], loo.to_csv, overwrite=force)
                for name, f in cmp.fits.items():
                    f.to_netcdf(targets[f"{name}.nc"], overwrite=force, pointwise=pointwise)
            _print_written(console, targets.values())
        if report_path is not None:
            from .report import write_report

            with _progress() as step:
                step("leave-one-group-out and the report", 0.5)
                write_report(cmp, report_path, overwrite=force)  # checked before fitting
            console.print(str(cmp.recommend()), markup=False, highlight=False)
            _print_written(console, [report_path])


def _estimation(formula: str, family: str | None, method: str | None, reml: bool | None
                ) -> tuple[str | None, dict[str, Any]]:
    """``--method`` and ``--reml/--ml`` as the library's ``method`` and options: either flag implies
    ``--method empirical``; with another method, or ``--reml`` for a family fitted by Laplace ML,
    a usage error (exit 2)."""
    if reml is None:
        return method, {}
    flag = "--reml" if reml else "--ml"
    if method not in (None, "empirical"):
        _fail(f"{flag} chooses REML or ML estimates of --method empirical; it does not go with --method {method}. "
              f"Drop {flag}, or use --method empirical.")
    from .spec import ModelSpec

    fam = ModelSpec(formula, family=family).fam
    if reml and not fam.exact:
        _fail(f"--reml applies to the gaussian family; the {fam.name} family is fitted by maximum likelihood "
              "(Laplace), as lme4's glmer. Use --ml or drop --reml.")
    return "empirical", {"reml": bool(reml)}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (``python -m poolwise``)."""
    app(args=list(argv) if argv is not None else None, prog_name="poolwise")


# -- errors, files, progress -------------------------------------------------------------------


def _stdout() -> Console:
    """Rich console on stdout; 120 columns when piped (Rich's default is 80) unless COLUMNS is set."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _errors() -> Iterator[None]:
    """PoolwiseError → ``error: …`` on stderr, exit 2; Ctrl-C → one line, exit 130 (128 + SIGINT),
    with nothing half written (every file goes to a temporary name first).  Other exceptions
    pass untouched."""
    try:
        yield
    except PoolwiseError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: stopped, no partial output written.", markup=False,
                                   highlight=False)
        raise typer.Exit(130) from None


def _check_outputs(out: Path | None, names: Sequence[str], report: Path | None,
                   force: bool) -> tuple[dict[str, str], str | None]:
    """The output paths (DIR/name for each name, and the report's), checked before any work:
    each folder writable (or makeable), no link or folder in the way, no path twice, and no
    existing file unless ``force`` (:func:`poolwise.output.check_outputs`)."""
    targets: dict[str, str] = {}
    if out is not None:
        if out.exists() and not out.is_dir():
            _fail(f"{out} is a file, not a folder. Give --out a folder.")
        check_folder(out, option="out")
        targets = {name: os.fspath(out / name) for name in names}
    report_path = None
    if report is not None:
        if report.is_dir():
            _fail(f"{report} is a folder. Give --report a file name such as report.html.")
        report_path = os.fspath(report)
    paths = [(p, "out") for p in targets.values()] + ([(report_path, "report")] if report_path else [])
    check_outputs(paths, overwrite=True)  # links, folders, the same path twice; existing files next
    existing = [path for path, _ in paths if os.path.exists(path)]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        _fail(f"{existing[0]} exists already{more}. Pass --force to overwrite.")
    return targets, report_path


def _spark_session() -> Any:
    """The active SparkSession, or a new one.

    A new session runs Spark locally (on every core) unless ``spark-submit`` set the master, or
    ``SPARK_REMOTE`` names a Spark Connect server (``sc://host:15002``); a local one draws no
    console progress bars.  Fails (exit 2) without pyspark, or when Spark does not start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        _fail("--engine spark needs pyspark (pip install 'poolwise[spark]') and Java 17.")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("poolwise")
    if not os.environ.get("SPARK_REMOTE"):
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    try:
        return builder.getOrCreate()
    except Exception as err:  # Spark's own error types (no Java, no server, ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
        _fail(f"Could not start Spark: {first} (--engine spark needs Java 17 for a local session, or "
              "SPARK_REMOTE=sc://host:15002 for a Spark Connect server).")


def _join_pooling(items: Sequence[str] | None) -> str:
    """The repeated ``--pooling`` values as the one text the library reads: ``"hierarchical"``, or
    ``"1|s=hierarchical, 1|d=pooled"`` per term (:class:`~poolwise.spec.ModelSpec` checks it)."""
    items = [i.strip() for i in items or () if i.strip()]
    if not items:
        return "hierarchical"
    if len(items) > 1 and not all("=" in i for i in items):
        raise SpecError(f"Cannot combine --pooling {' --pooling '.join(repr(i) for i in items)}.", option="pooling",
                        hint="Give one setting for every term (--pooling pooled), or TERM=SETTING for each term "
                             "(--pooling '1|s=pooled' --pooling '1|d=hierarchical').")
    return ", ".join(items)


def _parse_priors(items: Sequence[str] | None) -> dict[str, str]:
    """``["sd(Intercept|g)=half_normal(2)"]`` → ``{"sd(Intercept|g)": "half_normal(2)"}``."""
    priors: dict[str, str] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise PriorError(f"Cannot read --prior {item!r}.",
                             hint="Write it as NAME=PRIOR, e.g. 'sd(Intercept|g)=half_normal(2)'.",
                             option="prior")
        priors[name.strip()] = text.strip()
    return priors


@contextmanager
def _progress() -> Iterator[Callable[[str, float], None]]:
    """A Rich progress bar on stderr fed by the library's ``progress(stage, fraction)``; each new
    stage is drawn at once (so that a short stage is seen too), fractions at Rich's refresh rate.
    Shown on a terminal only (or where ``FORCE_COLOR`` / ``TTY_COMPATIBLE=1`` say stderr is one)."""
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=1.0)
        last = [""]

        def step(stage: str, fraction: float) -> None:
            bar.update(task, description=Text(stage), completed=min(max(float(fraction), 0.0), 1.0))
            if stage != last[0]:
                last[0] = stage
                bar.refresh()

        yield step


def _print_written(console: Console, paths: Any) -> None:
    console.print("wrote " + ", ".join(str(p) for p in paths), markup=False, highlight=False)


# -- tables ------------------------------------------------------------------------------------


def _table(title: str) -> Table:
    return Table(title=Text(title), title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)


def _frame_table(frame: pd.DataFrame, title: str, index_name: str, formats: dict[str, int] | None = None) -> Table:
    table = _table(title)
    table.add_column(index_name, no_wrap=True)
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for idx, row in frame.iterrows():
        cells = []
        for col in frame.columns:
            v = row[col]
            digits = (formats or {}).get(str(col), 4)
            if isinstance(v, str):
                cells.append(v)
                continue
            cells.append(str(int(v)) if digits == 0 and pd.notna(v) else number(v, digits))
        table.add_row(Text(str(idx)), *cells)
    return table


def _summary_table(s: pd.DataFrame) -> Table:
    """The posterior summary (``Fit.summary(groups=False)``) as a Rich table."""
    s = s.drop(columns=[c for c in s.columns if str(c).startswith("mcse")])  # all columns in summary.csv
    s = s.rename(columns=lambda c: str(c).removeprefix("hdi_"))
    digits = {c: 0 for c in ("ess_bulk", "ess_tail")} | {"r_hat": 4} | {c: 6 for c in ("estimate", "lo", "hi")}
    return _frame_table(s, str(s.attrs.get("title", "Posterior summary")), "parameter", digits)


def _priors_table(f: Fit) -> Table:
    table = _table("Priors")
    for col in ("parameter", "prior", "source"):
        table.add_column(col)
    for name, row in f.priors.iterrows():
        table.add_row(Text(str(name)), Text(str(row["prior"])), str(row["source"]))
    return table


def _factor_tables(cmp: Comparison, table: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(factor, term, its rows) of :meth:`Comparison.table`: one per grouping factor."""
    if isinstance(table.index, pd.MultiIndex):
        return [(str(f), str(frame["term"].iloc[0]), frame.droplevel("factor"))
                for f, frame in table.groupby(level="factor", sort=False)]
    return [(cmp.group_column, str(table.attrs.get("term", "")), table)]


def _groups_table(cmp: Comparison, table: pd.DataFrame, factor: str, term: str) -> Table:
    scale = {"logit": " (logit scale)", "log": " (log scale)"}.get(cmp.hierarchical.spec.fam.link, "")
    expr = term.partition("|")[0]
    what = "Group intercepts" if expr == "1" else f"Group slopes of {expr}"
    by = f" by {factor}" if len(cmp.factors) > 1 else ""
    out = _table(f"{what}{by}{scale}: posterior mean [95% interval]")
    out.add_column(Text(factor), no_wrap=True)
    out.add_column("n", justify="right")
    for name in POOLINGS:
        out.add_column(name, justify="right")
    out.add_column("λ", justify="right")
    for label, row in table.head(SHOWN_GROUPS).iterrows():
        cells = [f"{number(row[f'{p}_mean'])} [{number(row[f'{p}_lo'])}, {number(row[f'{p}_hi'])}]" for p in POOLINGS]
        out.add_row(Text(str(label)), str(int(row["n"])), *cells, number(row["lambda"], 2))
    return out


def _loo_table(loo: pd.DataFrame) -> Table:
    return _frame_table(loo, "PSIS-LOO (best first)", "pooling", {"n_bad_k": 0, "n_refits": 0, "pareto_k_max": 3})


def _population_line(pop: dict[str, float], term: str | None = None) -> str:
    parts = []
    for key in ("mean", "tau", "sigma"):
        if key in pop:
            parts.append(f"{key} {number(pop[key])} [{number(pop[f'{key}_lo'])}, {number(pop[f'{key}_hi'])}]")
    of = f" of {term}" if term else ""
    return f"population{of} (hierarchical): " + ", ".join(parts)
