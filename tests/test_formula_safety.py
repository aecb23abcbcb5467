"""A formula is data, never code (issue 13, item 1), and odd column names are only names.

Hostile formulas (attribute access, unknown calls, dunders, keyword arguments, string literals,
subscripts, imports, lambdas, anywhere in the term tree) must raise a FormulaError naming the
term before anything is evaluated, on every path: in memory, files (DuckDB), NUTS, compare and
the CLI (Spark: tests/test_spark.py).  "Nothing executed" is checked with a recording sentinel
planted in the namespaces formulae used to resolve names (the calling module's globals and the
builtins) and with payloads that would write a file in the working directory.

Legitimate formulas on odd column names (spaces, dots, symbols, unicode, names that look like
functions or modules), backtick-quoted, must fit exactly as the same data with plain names do,
or raise a PoolwiseError — never another exception, never another answer.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import poolwise as pw
from poolwise import formula as F
from poolwise.cli import app
from poolwise.errors import FormulaError, PoolwiseError

# ----------------------------------------------------------------------------------------------
# the sentinel: anything that resolves it and calls it, or reaches an attribute of it, is recorded


class Sentinel:
    """Records every call and attribute access; calls return their first argument (so today's
    formulae would even build a design from it and the fit would go on)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.events.append("call")
        return args[0] if args else np.zeros(1)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        self.events.append(f"attribute {name}")
        return self

    def __getitem__(self, key: Any) -> Any:
        self.events.append("item")
        return self


PLANTED_IN = ("poolwise.spec", "poolwise.query", "poolwise.predictive", "poolwise.formula", "poolwise.fit",
              "poolwise.compare", "poolwise.cli", "poolwise.data", "poolwise.source")


@contextlib.contextmanager
def planted() -> Iterator[Sentinel]:
    """A sentinel named ``pw_sentinel`` in poolwise's modules and the builtins, the working
    directory an empty folder; both checked untouched on the way out."""
    s = Sentinel()
    modules = [importlib.import_module(name) for name in PLANTED_IN] + [builtins]
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        for m in modules:
            setattr(m, "pw_sentinel", s)
        try:
            yield s
        finally:
            for m in modules:
                delattr(m, "pw_sentinel")
            os.chdir(here)
        _assert_untouched(s, work)


@pytest.fixture
def sentinel() -> Iterator[Sentinel]:
    with planted() as s:
        yield s


def _data(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"y": rng.normal(size=n), "x": rng.uniform(1, 2, n), "z": rng.normal(size=n),
                         "a": np.tile(["p", "q", "r", "s"], n // 4),
                         "g": np.repeat([f"g{j}" for j in range(4)], n // 4)})


def _assert_untouched(s: Sentinel, work: str) -> None:
    assert s.events == [], f"the formula reached Python: {s.events}"
    assert os.listdir(work) == [], f"the formula wrote {os.listdir(work)}"


# ----------------------------------------------------------------------------------------------
# the cases of the issue, one per path

ISSUE = "y ~ x + pd.io.common.os.system('id > f') + (1|g)"
HOSTILE = [
    # (formula, what the message must name)
    (ISSUE, "pd.io.common.os.system('id > f')"),
    ("y ~ x + np.savetxt('written.txt', x) + (1 | g)", "np.savetxt('written.txt', x)"),
    ("y ~ x + pw_sentinel(x) + (1 | g)", "pw_sentinel(x)"),
    ("y ~ x + pw_sentinel.run(x) + (1 | g)", "pw_sentinel.run(x)"),
    ("y ~ log(pw_sentinel(x)) + (1 | g)", "log(pw_sentinel(x))"),
    ("y ~ I(x + pw_sentinel(z)) + (1 | g)", "pw_sentinel"),
    ("y ~ offset(pw_sentinel(x)) + (1 | g)", "offset(pw_sentinel(x))"),
    ("y ~ x + (1 + pw_sentinel(x) | g)", "(1 + pw_sentinel(x) | g)"),
    ("y ~ x + (1 | pw_sentinel(g))", "(1 | pw_sentinel(g))"),
    ("y ~ x + (x || pw_sentinel(g))", "pw_sentinel(g)"),
    ("y ~ C.__globals__.get(x) + (1 | g)", "C.__globals__.get"),
    ("y ~ x.__class__ + (1 | g)", "x.__class__"),
    ("y ~ log(x, out=x) + (1 | g)", "out=x"),
    ("y ~ I('rm -rf') + (1 | g)", "'rm -rf'"),
    ("y ~ x + 'text' + (1 | g)", "'text'"),
    ("y ~ x + pw_sentinel[x] + (1 | g)", "pw_sentinel"),
    ("y ~ x + bs(x) + (1 | g)", "bs(x)"),
    ("y ~ x + getattr(x, 'real') + (1 | g)", "getattr"),
    ("y ~ x + open('written.txt', 'w') + (1 | g)", "open"),
    ("y ~ x + __import__('os') + (1 | g)", "__import__"),
    ("y ~ x + lambda z: z + (1 | g)", "lambda"),
    ("y ~ x + import os + (1 | g)", "import"),
    ("y ~ x == 1 + (1 | g)", "=="),
    ("y ~ x + True + (1 | g)", "True"),
]


@pytest.mark.parametrize(("formula", "named"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_formula_is_refused_before_anything_runs(sentinel: Sentinel, formula: str, named: str) -> None:
    df = _data()
    with pytest.raises(FormulaError) as err:
        pw.fit(formula, df)
    assert named in str(err.value), str(err.value)


@pytest.mark.parametrize("path", ["nuts", "poisson", "compare", "csv", "parquet"])
def test_issue_formula_on_every_path(sentinel: Sentinel, tmp_path: Path, path: str) -> None:
    df = _data()
    files = tmp_path / "files"
    files.mkdir()
    df.to_csv(files / "d.csv", index=False)
    df.to_parquet(files / "d.parquet")
    calls: list[str] = []
    import poolwise.query as Q

    real = Q.sql_columns
    Q.sql_columns = lambda *a, **k: calls.append("sql") or real(*a, **k)  # type: ignore[assignment]
    try:
        for formula in (ISSUE, "y ~ x + pw_sentinel(x) + (1 | g)"):
            with pytest.raises(FormulaError, match=re.escape(formula)):
                if path == "nuts":
                    pw.fit(formula, df, method="nuts", draws=50, chains=1)
                elif path == "poisson":
                    pw.fit(formula, df.assign(y=np.arange(len(df)) % 3), family="poisson", draws=50, chains=1)
                elif path == "compare":
                    pw.compare(formula, df, draws=50, chains=1)
                else:
                    pw.fit(formula, str(files / f"d.{path}"), method="exact")
    finally:
        Q.sql_columns = real  # type: ignore[assignment]
    assert calls == []  # the SQL translation never saw it


def test_issue_formula_in_the_cli(sentinel: Sentinel, tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    _data().to_csv(csv, index=False)
    for formula in (ISSUE, "y ~ x + np.savetxt('written.txt', x) + (1 | g)", "y ~ x + pw_sentinel(x) + (1 | g)"):
        for command in ("fit", "compare"):
            r = CliRunner().invoke(app, [command, str(csv), "-f", formula], env={"COLUMNS": "200"})
            assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
            err = r.stderr.strip()
            assert err.startswith("error: ") and 1 <= len(err.splitlines()) <= 2, err
            assert "Traceback" not in r.output, r.output
            assert "attribute access" in err or "'pw_sentinel()'" in err, err


def test_the_design_environment_resolves_nothing_else(sentinel: Sentinel) -> None:
    """Even a formula that skipped the check could reach no module, builtin or caller's name."""
    ns = F.formula_env().namespace  # type: ignore[attr-defined]
    for name in ("np", "pd", "os", "sys", "open", "eval", "__builtins__", "__import__", "pw_sentinel", "getattr"):
        assert name not in ns, name
    assert sorted(n for d in ns.keys() for n in d) == sorted(F.NUMERIC_FUNCTIONS)
    df = _data()
    for formula in ("y ~ pw_sentinel(x)", "y ~ np.savetxt('written.txt', x)", "y ~ os.system('touch written')",
                    "y ~ pw_sentinel.run(x)", "y ~ log(pw_sentinel(x))"):
        with pytest.raises(Exception):  # noqa: B017 - formulae's own KeyError; parse_formula is bypassed here
            F.design_matrices(formula, df)
    # the closed set itself works there, and is numpy's
    d = F.design_matrices("y ~ log(x) + sqrt(x) + I(x**2 - z) + C(a) + offset(exp(z))", df)
    frame = d.common.as_dataframe()  # type: ignore[attr-defined]
    np.testing.assert_allclose(frame["log(x)"], np.log(df["x"]))
    np.testing.assert_allclose(frame["I(x ** 2 - z)"], df["x"] ** 2 - df["z"])


def test_closed_set_is_what_the_docs_say() -> None:
    """parse_formula's docstring and the README list exactly the functions the checker accepts."""
    doc = F.parse_formula.__doc__ or ""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in F.NUMERIC_FUNCTIONS + F.TERM_FUNCTIONS:
        assert f"{name}" in doc, name
        assert re.search(rf"Formulas may call only.*`{name}\(", readme, re.S), name
    ok = ("y ~ " + " + ".join(f"{n}(x)" for n in F.NUMERIC_FUNCTIONS)
          + " + I(x**2) + C(a) + offset(x) + scale(z) + (1 | g)")
    assert F.parse_formula(ok).variables == ("a", "g", "x", "y", "z")


def test_legitimate_transforms_still_fit_and_predict() -> None:
    """The closed set works on every path that builds a design, new data included (encode_Z)."""
    df = _data()
    fit = pw.fit("y ~ 1 + C(a) + (1 + log(x) | g)", df, method="empirical")
    new = df.sample(12, random_state=1)
    got = fit.predict(new, kind="mean")["mean"].to_numpy()
    # the mean of the linear predictor is linear in the draws: means of β and b, by hand
    post = fit.idata.posterior
    level = {"p": 0.0, **{v: float(fit.param(f"C(a)[{v}]").mean()) for v in "qrs"}}
    b = {name: post[name].mean(("chain", "draw")).sel(g=new["g"].to_numpy()).to_numpy() for name in ("1|g", "log(x)|g")}
    want = (float(fit.param("Intercept").mean()) + new["a"].map(level).to_numpy() + b["1|g"]
            + np.log(new["x"].to_numpy()) * b["log(x)|g"])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# fuzz: hostile pieces anywhere in a random term structure

SAFE_TERMS = ["x", "z", "log(x)", "I(x**2 - z)", "C(a)", "x:z", "exp(z)", "sqrt(x)", "abs(z)", "x*z", "{x + 1}"]
MODULES = ["np", "pd", "os", "sys", "builtins", "pw_sentinel", "C", "I", "offset", "log", "x", "scale", "numpy"]
ATTRS = ["system", "savetxt", "io.common.os.system", "__class__", "__globals__.get", "run", "remove", "__init__",
         "log", "sqrt", "__builtins__.get", "popen"]
NAMES = ["pw_sentinel", "eval", "exec", "open", "getattr", "setattr", "compile", "globals", "vars", "print", "bs",
         "poly", "center", "standardize", "Treatment", "binary", "p", "S", "T", "sin", "float", "str", "cr", "input",
         "breakpoint", "exit", "system", "lambda", "import", "dir", "type", "object"]
ARGS = ["x", "'written.txt'", "'id > f'", "1", "x, 'written.txt'", "x, out=x", "z, 2", "", "pw_sentinel", "'x'"]


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, str]:
    """(a hostile piece of formula, a word its error message must hold)."""
    kind = draw(st.sampled_from(["attribute call", "call", "dunder", "string", "subscript", "keyword", "literal",
                                 "import", "lambda", "comparison"]))
    arg = draw(st.sampled_from(ARGS))
    if kind == "attribute call":
        mod, attr = draw(st.sampled_from(MODULES)), draw(st.sampled_from(ATTRS))
        piece, key = f"{mod}.{attr}({arg})", f"{mod}.{attr}"
    elif kind == "call":
        name = draw(st.sampled_from(NAMES))
        piece, key = f"{name}({arg})", name
    elif kind == "dunder":
        attr = draw(st.sampled_from(["__class__", "__dict__", "__globals__", "__subclasses__"]))
        piece, key = f"{draw(st.sampled_from(['x', 'z', 'pw_sentinel']))}.{attr}", attr
    elif kind == "string":
        s = draw(st.sampled_from(["'rm -rf /'", '"x"', "'written.txt'", "'__import__(\"os\")'"]))
        piece, key = draw(st.sampled_from([s, f"I({s})", f"log({s})"])), s
    elif kind == "subscript":
        name, index = draw(st.sampled_from(["x", "pw_sentinel", "a"])), draw(st.sampled_from(["0", "b", "x"]))
        piece, key = f"{name}[{index}]", "["
    elif kind == "keyword":
        fn = draw(st.sampled_from(["log", "C", "I", "offset", "scale", "exp"]))
        piece, key = f"{fn}(x, {draw(st.sampled_from(['out', 'levels', 'contrast', 'where']))}=x)", "="
    elif kind == "literal":
        lit = draw(st.sampled_from(["True", "None", "False", "2.5", "7"]))
        if lit[0].isdigit():  # a number is a term only as 0 or 1 (inside a call it is fine)
            return lit, lit
        piece, key = draw(st.sampled_from([lit, f"I(x + {lit})"])), lit
    elif kind == "import":
        piece, key = draw(st.sampled_from(["import os", "__import__('os')", "from os import system"])), ""
    elif kind == "lambda":
        piece, key = "lambda q: q", "lambda"
    else:
        op = draw(st.sampled_from(["==", "<", ">=", "!="]))
        piece, key = draw(st.sampled_from([f"x {op} 1", f"I(x {op} 1)"])), op
    where = draw(st.sampled_from(["{}", "log({})", "I(x + {})", "offset({})", "exp(sqrt({}))", "({}):x",
                                  "(1 + {} | g)", "(1 | {})", "({} || g)", "({})**2", "C({})"]))
    return where.format(piece), key


@settings(max_examples=150, deadline=None)
@given(piece=hostile(), before=st.lists(st.sampled_from(SAFE_TERMS), max_size=3),
       after=st.lists(st.sampled_from(SAFE_TERMS), max_size=2), bars=st.sampled_from(["|", "||"]))
def test_fuzz_hostile_formulas_never_run(fuzz_file: str, piece: tuple[str, str], before: list[str],
                                         after: list[str], bars: str) -> None:
    text, key = piece
    formula = "y ~ " + " + ".join([*before, text, *after]) + f" + (1 {bars} g)"
    import poolwise.query as Q

    calls: list[object] = []
    with planted(), mock.patch.object(Q, "sql_columns", lambda *a, **k: calls.append(a)):
        with pytest.raises(FormulaError) as err:
            F.parse_formula(formula)
        message = str(err.value)
        assert key in message, (formula, message)
        assert message.count("\n") <= 1
        with pytest.raises(FormulaError):  # and on the fit paths, before the data are looked at
            pw.fit(formula, _FUZZ_DATA)
        with pytest.raises(FormulaError):
            pw.fit(formula, fuzz_file)
    assert calls == []  # the SQL translation is fed checked formulas only


_FUZZ_DATA = _data()


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("fuzz") / "d.parquet"
    _FUZZ_DATA.to_parquet(path)
    return str(path)


# ----------------------------------------------------------------------------------------------
# fuzz: legitimate formulas on odd column names

ODD = ["log", "np", "pd", "os", "C", "I", "offset", "scale", "lambda", "import", "True", "None", "x.y", "a b",
       "größe", "中文", "__x__", "1x", "x|y", "(x)", "x~y", "x+y", "é", "exp", "x)", "(1|g)", "x||y", "x:y",
       "a'b", 'a"b', "a,b", "x/y", "x*y", "#x", "x\ny", " ", "", "x[0]", "{x}", "x==1", "offset(x)", "log(n1)", "C(c1)"]
NAME = st.one_of(st.sampled_from(ODD),
                 st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="`"), min_size=1, max_size=6))


def _q(name: str) -> str:
    return f"`{name}`"


#: names a file can hold as they are (DuckDB names an empty column anew, reads control characters
#: such as NUL otherwise, and renames a column whose name differs from another's by case only)
FILE_NAME = NAME.filter(lambda s: s != "" and not any(unicodedata.category(c) == "Cc" for c in s))


@st.composite
def odd_model(draw: st.DrawFn, name: st.SearchStrategy[str] = NAME,
              same: Any = lambda s: s) -> tuple[dict[str, str], str, str]:
    """(odd name of each plain role, formula on the odd names, the same formula on plain names);
    ``same`` tells names the data source cannot tell apart."""
    roles = ["n1", "n2", "c1", "g1"]  # two numeric predictors, a categorical one, the grouping column
    names = draw(st.lists(name.filter(lambda s: same(s) != same("y")), min_size=4, max_size=4, unique_by=same))
    odd = dict(zip(roles, names, strict=True))
    terms = draw(st.lists(st.sampled_from(["{n1}", "log({n1})", "I({n1}**2 - {n2})", "{n2}", "C({c1})", "{c1}",
                                           "{n1}:{n2}", "exp({n2})", "offset({n2})", "sqrt({n1})"]),
                          min_size=1, max_size=3, unique=True))
    group = draw(st.sampled_from(["(1 | {g1})", "(1 + {n1} | {g1})", "({n1} || {g1})", "(1 + log({n1}) | {g1})",
                                  "(1 | {c1}:{g1})", "(1 | {g1}) + (1 | {c1})"]))
    template = "y ~ " + " + ".join(terms) + " + " + group
    return odd, template.format(**{k: _q(v) for k, v in odd.items()}), template.format(**{k: k for k in roles})


def _frame(names: dict[str, str], seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 48
    cols = {"y": rng.normal(size=n), "n1": rng.uniform(1, 3, n), "n2": rng.normal(size=n),
            "c1": np.tile(["u", "v", "w"], n // 3), "g1": np.repeat([f"h{j}" for j in range(6)], n // 6)}
    return pd.DataFrame(cols).rename(columns=names)


def _same_fit(a: Any, b: Any, odd: dict[str, str]) -> None:
    sa, sb = a.summary(groups=False), b.summary(groups=False)
    assert len(sa.index) == len(sb.index), (list(sa.index), list(sb.index))  # the same parameters
    col = "estimate" if "estimate" in sa.columns else "mean"  # an empirical fit's summary holds estimates
    np.testing.assert_allclose(sa[col].to_numpy(float), sb[col].to_numpy(float), rtol=1e-8, atol=1e-10)
    for plain, name in odd.items():  # the odd names are in the rows, where the plain ones are
        for ra, rb in zip(sa.index, sb.index, strict=True):
            if re.search(rf"(?<![\w]){plain}(?![\w])", rb):
                assert name in ra, (ra, rb)


@settings(max_examples=30, deadline=None)
@given(model=odd_model())
def test_fuzz_odd_column_names_fit_as_plain_ones(model: tuple[dict[str, str], str, str]) -> None:
    odd, formula, plain_formula = model
    _same_or_poolwise_error(lambda: pw.fit(plain_formula, _frame({}), method="empirical"),
                            lambda: pw.fit(formula, _frame(odd), method="empirical"), odd)


def _same_or_poolwise_error(plain: Any, odd_fit: Any, odd: dict[str, str]) -> None:
    """When the model on plain names fits, the same on odd names fits to the same numbers (or, for
    a name poolwise documents it refuses, raises a FormulaError naming it); when the plain one
    raises a poolwise error, the odd one raises one too."""
    try:
        reference = plain()
    except PoolwiseError:
        with pytest.raises(PoolwiseError):
            odd_fit()
        return
    refused = [name for name in odd.values() if ":" in name or name.startswith("offset(")]
    if refused:  # names that read as structure (a:b, offset(x)) are refused by name (if the formula uses them)
        try:
            got = odd_fit()
        except FormulaError as err:
            assert any(name in str(err) for name in refused) and "Rename the column" in str(err), str(err)
            return
        _same_fit(got, reference, odd)
        return
    try:
        got = odd_fit()
    except FormulaError as err:  # a column named like another term (`log(a)` next to log(a)): refused
        assert "both named" in str(err), str(err)
        return
    _same_fit(got, reference, odd)


@settings(max_examples=12, deadline=None)
@given(model=odd_model(FILE_NAME, str.casefold))
def test_fuzz_odd_column_names_in_a_file(tmp_path_factory: pytest.TempPathFactory,
                                         model: tuple[dict[str, str], str, str]) -> None:
    """The same through DuckDB's query (the SQL translation of the design): same numbers or a poolwise error."""
    odd, formula, plain_formula = model
    folder = tmp_path_factory.mktemp("odd")
    _frame(odd).to_parquet(folder / "odd.parquet")
    _frame({}).to_parquet(folder / "plain.parquet")
    _same_or_poolwise_error(lambda: pw.fit(plain_formula, str(folder / "plain.parquet"), method="empirical"),
                            lambda: pw.fit(formula, str(folder / "odd.parquet"), method="empirical"), odd)


# ----------------------------------------------------------------------------------------------
# odd names the formula text once misread (each was silently wrong, or refused a valid model)

REGRESSIONS = [
    # (formula on odd names, the same on plain names, renames plain → odd)
    ("y ~ n1 + `(1|g1)` + (1 | g1)", "y ~ n1 + n2 + (1 | g1)", {"n2": "(1|g1)"}),  # was dropped from the terms
    ("y ~ 1 + (1 + `a b` | `my g`)", "y ~ 1 + (1 + n1 | g1)", {"n1": "a b", "g1": "my g"}),  # was refused
    ("y ~ n2 + (1 + log(`a b`) | `my g`)", "y ~ n2 + (1 + log(n1) | g1)", {"n1": "a b", "g1": "my g"}),
    ("y ~ n2 + (`a b` || `my g`)", "y ~ n2 + (n1 || g1)", {"n1": "a b", "g1": "my g"}),  # was correlated
    ("y ~ C(`dose level`) + (1 | g1)", "y ~ C(d) + (1 | g1)", {"d": "dose level"}),  # numeric column as levels
]


def _regression_frame(names: dict[str, str]) -> pd.DataFrame:
    return _frame({}).assign(d=np.tile([0.0, 1.0, 2.0, 5.0], 12)).rename(columns=names)


@pytest.mark.parametrize(("formula", "plain", "names"), REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_odd_names_the_text_once_misread(tmp_path: Path, formula: str, plain: str, names: dict[str, str]) -> None:
    odd = {**{k: k for k in ("n1", "n2", "c1", "g1")}, **names}
    _regression_frame(names).to_parquet(tmp_path / "odd.parquet")
    _regression_frame({}).to_parquet(tmp_path / "plain.parquet")
    for odd_data, plain_data in [(_regression_frame(names), _regression_frame({})),
                                 (str(tmp_path / "odd.parquet"), str(tmp_path / "plain.parquet"))]:
        _same_fit(pw.fit(formula, odd_data, method="empirical"), pw.fit(plain, plain_data, method="empirical"), odd)


@pytest.mark.parametrize("formula", ["y ~ z + (1 | `x:z`)", "y ~ x:z + `x:z` + (1 | g)", "y ~ (1 + `x:z` | g)",
                                     "y ~ `offset(x)` + (1 | g)"])
def test_a_column_named_like_structure_is_refused_by_name(formula: str) -> None:
    """'x:z' reads as the interaction (or the grouping) of the columns x and z, both there: one
    term was silently dropped, or the grouping changed; a column 'offset(x)' became an offset."""
    df = _data().assign(**{"x:z": np.repeat(["u", "v", "w", "s"], 10), "offset(x)": np.linspace(0, 1, 40)})
    with pytest.raises(FormulaError, match=r"`(x:z|offset\(x\))`.*Rename the column"):
        pw.fit(formula, df.assign(y=df["z"]))


def test_terms_of_the_same_name_are_refused() -> None:
    """A column named 'log(x)' next to the transform log(x): two terms, one name."""
    df = _data().assign(**{"log(x)": np.linspace(0, 1, 40)})
    with pytest.raises(FormulaError, match=r"both named 'log\(x\)'"):
        pw.fit("y ~ `log(x)` + log(x) + (1 | g)", df)
    with pytest.raises(FormulaError, match=r"both named 'log\(x\)'"):
        pw.fit("y ~ `log(x)` + (1 + log(x) | g)", df)


def test_a_column_named_like_a_slope_does_not_replace_it() -> None:
    """New rows holding a column 'log(x)' still get log of x as the varying slope's value."""
    df = _data()
    fit = pw.fit("y ~ 1 + (1 + log(x) | g)", df, method="empirical")
    new = df.head(8)
    a = fit.predict(new, kind="mean")
    b = fit.predict(new.assign(**{"log(x)": 100.0}), kind="mean")
    pd.testing.assert_frame_equal(a, b)
