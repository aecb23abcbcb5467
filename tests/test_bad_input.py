"""One table: bad input -> poolwise error class, words the message must contain, CLI exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.errors import DataError, FormulaError, PoolwiseError, PriorError, SpecError


def _good(n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(["a", "b", "c", "d", "e", "f"], 5)
    return pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n), "z": rng.normal(size=n), "g": g})


def _with(**cols: object) -> pd.DataFrame:
    df = _good()
    for k, v in cols.items():
        df[k] = v
    return df


def _set(df: pd.DataFrame, col: str, rows: list[int], value: object) -> pd.DataFrame:
    df = df.copy()
    if isinstance(value, str) and col in ("y",):
        df[col] = df[col].astype(object)
    df.loc[rows, col] = value
    return df


CASES = [
    # id, formula, data, options, error class, words in the message
    ("missing column", "y ~ x + (1 | grp)", _good(), {}, FormulaError, ["'grp'", "Did you mean 'g'"]),
    ("unknown predictor", "y ~ xx + (1 | g)", _good(), {}, FormulaError, ["'xx'", "»xx«"]),
    ("NaN outcome", "y ~ x + (1 | g)", _set(_good(), "y", [3, 7], np.nan), {}, DataError,
     ["'y'", "2 missing", "rows 3, 7"]),
    ("inf predictor", "y ~ x + (1 | g)", _set(_good(), "x", [4], np.inf), {}, DataError,
     ["'x'", "1 infinite", "row 4"]),
    ("NaN predictor", "y ~ x + (1 | g)", _set(_good(), "x", [0, 1, 2, 9, 11, 12], np.nan), {}, DataError,
     ["'x'", "6 missing", "rows 0, 1, 2, 9, 11"]),
    ("text outcome", "y ~ x + (1 | g)", _with(y=["u"] * 30), {}, DataError, ["'y'", "numeric"]),
    ("missing group labels", "y ~ x + (1 | g)", _set(_good(), "g", [5, 8], None), {}, DataError,
     ["'g'", "2 missing labels", "rows 5, 8"]),
    ("one group", "y ~ x + (1 | g)", _with(g=["a"] * 30), {}, DataError, ["'g'", "only 1 group"]),
    ("empty table", "y ~ x + (1 | g)", _good().iloc[:0], {}, DataError, ["no rows"]),
    ("constant predictor", "y ~ x + c + (1 | g)", _with(c=np.full(30, 2.0)), {}, DataError, ["'c'", "constant"]),
    ("collinear predictors", "y ~ x + x2 + (1 | g)", _with(x2=2 * _good()["x"] + 1), {}, DataError,
     ["'x2'", "linear combination", "'x'"]),
    ("formula syntax", "y ~ x + (1 | g", _good(), {}, FormulaError, ["Cannot parse", "y ~ x + (1 | g"]),
    ("no tilde", "y x", _good(), {}, FormulaError, ["no '~'"]),
    ("negative prior scale", "y ~ x + (1 | g)", _good(), {"priors": {"sd(Intercept|g)": "half_normal(-1)"}},
     PriorError, ["half_normal(-1)", "positive"]),
    ("zero prior scale", "y ~ x + (1 | g)", _good(), {"priors": {"sigma": "exponential(0)"}}, PriorError,
     ["rate", "positive"]),
    ("unknown prior name", "y ~ x + (1 | g)", _good(), {"priors": {"sd(x|g)": "half_normal(1)"}}, PriorError,
     ["sd(x|g)"]),
    ("unknown distribution", "y ~ x + (1 | g)", _good(), {"priors": {"sigma": "half_norml(1)"}}, PriorError,
     ["half_norml", "half_normal"]),
    ("bad pooling", "y ~ x + (1 | g)", _good(), {"pooling": "partial"}, SpecError,
     ["'pooling'", "'partial'"]),
    ("negative pooling", "y ~ x + (1 | g)", _good(), {"pooling": -1.0}, SpecError, ["positive"]),
    ("bad method", "y ~ x + (1 | g)", _good(), {"method": "hmc"}, SpecError, ["'method'", "'hmc'"]),
    ("non-positive se", "y | se(s) ~ 1 + (1 | g)", _with(s=np.r_[0.0, np.ones(29)]), {}, DataError,
     ["'s'", "positive"]),
    ("no group term", "y ~ x", _good(), {}, SpecError, ["(1 | g)"]),
    # families: outcomes outside the support, trials
    ("negative counts", "y ~ x + (1 | g)", _with(y=np.r_[-1, np.arange(29)]), {"family": "poisson"}, DataError,
     ["'y'", "non-negative", "row 0"]),
    ("fractional counts", "y ~ x + (1 | g)", _with(y=np.r_[0.5, np.arange(29)]), {"family": "negative_binomial"},
     DataError, ["'y'", "whole numbers", "row 0"]),
    ("bernoulli not 0/1", "y ~ x + (1 | g)", _with(y=np.r_[2, np.zeros(29)]), {"family": "bernoulli"}, DataError,
     ["'y'", "0 or 1", "row 0"]),
    ("successes over trials", "y | trials(n) ~ x + (1 | g)", _with(y=np.r_[5, np.zeros(29)], n=np.full(30, 3)),
     {"family": "binomial"}, DataError, ["'y'", "must not exceed trials", "row 0"]),
    ("trials missing", "y ~ x + (1 | g)", _with(y=np.zeros(30)), {"family": "binomial"}, FormulaError,
     ["trials(n)"]),
    ("trials for gaussian", "y | trials(n) ~ x + (1 | g)", _with(n=np.full(30, 3)), {}, FormulaError,
     ["trials(n)", "binomial"]),
    ("unknown family", "y ~ x + (1 | g)", _good(), {"family": "gamma"}, SpecError, ["'gamma'", "poisson"]),
    ("slope constant within groups", "y ~ u + (1 + u | g)", _with(u=np.repeat(np.arange(6.0), 5)), {}, DataError,
     ["'u'", "constant within every group"]),
    ("log of zero offset", "y ~ x + offset(log(e)) + (1 | g)", _with(y=np.ones(30), e=np.r_[0.0, np.ones(29)]),
     {"family": "poisson"}, DataError, ["offset", "row 0"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_library_error(case: tuple) -> None:
    _, formula, df, options, cls, words = case
    before = df.copy()
    with pytest.raises(cls) as info:
        pw.fit(formula, df, draws=20, chains=1, **options)
    err = info.value
    assert isinstance(err, PoolwiseError) and isinstance(err, ValueError)
    text = str(err)
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"
    assert len(text.splitlines()) <= 2
    pd.testing.assert_frame_equal(df, before)  # nothing the user had is altered


def test_one_observation_groups_are_valid() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 2.5, 3.0, 0.5], "g": ["a", "b", "b", "c", "d"]})
    f = pw.fit("y ~ 1 + (1 | g)", df, draws=100, chains=2)
    assert f.pooling_factors().loc["a", "n"] == 1


@pytest.mark.parametrize("case", [c for c in CASES if "priors" not in c[3] and "method" not in c[3]],
                         ids=lambda c: c[0])
def test_cli_exit_2(case: tuple, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    _, formula, df, options, cls, words = case
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    args = ["fit", str(path), "-f", formula, "--draws", "20", "--chains", "1"]
    if "pooling" in options:
        args += ["--pooling", str(options["pooling"])]
    if "family" in options:
        args += ["--family", str(options["family"])]
    result = CliRunner().invoke(app, args)
    out = result.output if result.output else ""
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    if cls is not DataError or "no rows" not in words:  # CSV round trip keeps the words
        assert any(w.strip("'") in out for w in words), out


def test_cli_prior_errors_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    path = tmp_path / "data.csv"
    _good().to_csv(path, index=False)
    for prior in ["sd(Intercept|g)=half_normal(-1)", "sigma=exponential(0)", "sigma=nonsense"]:
        result = CliRunner().invoke(app, ["fit", str(path), "-f", "y ~ x + (1 | g)", "--prior", prior])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
