"""Results do not depend on the units or the offset of the data (issue 13, item 3).

Under y → a·y + b and x → c·x + d the model y = β₀ + β₁x + b_g + e maps exactly onto itself:
β₁ → aβ₁/c, β₀ → aβ₀ + b − aβ₁d/c, σ → aσ, τ → aτ, and so do the data-scaled default priors
(for d = 0).  So a fit of the transformed data, mapped back, must equal the fit of the data:

- REML (deterministic): to 1e-6 relative, plus what float64 itself loses in storing the
  transformed values (one rounding of a·y + b is eps·|a·y + b|: relative to the data's spread
  a·σ that is 2e-4 for an offset of 10¹² SDs).
- the exact Bayesian path (fixed seed): posterior means within 4 Monte Carlo standard errors of
  the reference fit's (the draws of the two fits are not independent, so this is generous).

Before the sums were taken about a shift, y + 10⁸ gave τ = 0.025 for 1.46 and an IndexError from
a file.  Offsets b are drawn in units of a (|b| up to 10¹² of the data's SDs: beyond ~10¹⁵ float64
cannot hold the data's variation at all).  Data beyond float64's range for sums of squares
(y·1e-300, y·1e200) must be refused with a DataError that says to rescale, and no NumPy warning.
NUTS (marked validate: its compile is slow) and varying slopes are checked at the end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pytest
from _spark import spark_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import poolwise as pw
from poolwise.errors import DataError

FORMULA = "y ~ x + (1 | g)"
EPS = np.finfo(float).eps
_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _base() -> pd.DataFrame:
    rng = np.random.default_rng(13)
    J, n = 8, 15
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = 1.0 + 0.5 * x + rng.normal(0.0, 1.5, J)[g] + rng.normal(size=J * n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


BASE = _base()


def _transformed(a: float, b: float, c: float, d: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"y": a * BASE["y"] + b, "x": c * BASE["x"] + d, "g": BASE["g"]})


def _back(beta: np.ndarray, sigma: float | np.ndarray, tau: float | np.ndarray, a: float, b: float, c: float,
          d: float) -> dict[str, Any]:
    """Estimates of the transformed data in the units of the original data."""
    b0, b1 = beta[..., 0], beta[..., 1]
    return {"Intercept": (b0 - b + b1 * d) / a, "x": b1 * c / a, "sigma": sigma / a, "tau": tau / a}


def _reml(data: Any) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy warning may leak
        f = pw.fit(FORMULA, data, method="empirical", chains=1, draws=10, seed=0)
    est = f.draws.info["estimates"]
    return {"beta": np.asarray(est["beta"]), "sigma": float(est["sigma"]), "tau": float(est["sd"][0])}


def _reml_back(data: Any, a: float, b: float, c: float, d: float) -> dict[str, float]:
    r = _reml(data)
    return {k: float(v) for k, v in _back(r["beta"], r["sigma"], r["tau"], a, b, c, d).items()}


@pytest.fixture(scope="module")
def reml_ref() -> dict[str, float]:
    return _reml_back(BASE, 1.0, 0.0, 1.0, 0.0)


def _assert_reml(got: dict[str, float], ref: dict[str, float], a: float, b: float, c: float, d: float) -> None:
    # what storing a·y + b and c·x + d in float64 loses, relative to the data's spread
    lost = (EPS * float(np.max(np.abs(a * BASE["y"] + b))) / (a * ref["sigma"])
            + EPS * float(np.max(np.abs(c * BASE["x"] + d))) / (c * float(BASE["x"].std())))
    tol = 1e-6 + 4.0 * lost
    for k in ("x", "sigma", "tau"):
        assert got[k] == pytest.approx(ref[k], rel=tol), (k, got, ref, tol)
    # the intercept in units of the data's spread (its value may be near 0)
    assert abs(got["Intercept"] - ref["Intercept"]) <= tol * ref["sigma"], (got, ref, tol)


log_scale = st.floats(-9.0, 9.0).map(lambda e: 10.0**e)
offset_sds = st.floats(-1e12, 1e12)  # the offset in SDs of the transformed column


@settings(max_examples=25, **_SETTINGS)
@given(a=log_scale, t=offset_sds, c=log_scale, u=st.floats(-1e6, 1e6))
def test_reml_in_memory_is_invariant(reml_ref: dict[str, float], a: float, t: float, c: float, u: float) -> None:
    b, d = a * t, c * u
    got = _reml_back(_transformed(a, b, c, d), a, b, c, d)
    _assert_reml(got, reml_ref, a, b, c, d)


@settings(max_examples=8, **_SETTINGS)
@given(a=log_scale, t=offset_sds, c=log_scale, u=st.floats(-1e6, 1e6), kind=st.sampled_from(["parquet", "csv"]))
def test_reml_in_duckdb_is_invariant(reml_ref: dict[str, float], tmp_path: Path, a: float, t: float, c: float,
                                     u: float, kind: str) -> None:
    b, d = a * t, c * u
    path = tmp_path / f"rows.{kind}"
    frame = _transformed(a, b, c, d)
    if kind == "csv":
        frame.to_csv(path, index=False, float_format="%.17g")  # every digit: the same doubles as in memory
    else:
        frame.to_parquet(path)
    got = _reml_back(str(path), a, b, c, d)
    _assert_reml(got, reml_ref, a, b, c, d)


# ----------------------------------------------------------------------------------------------
# the exact Bayesian path


def _exact_back(data: Any, a: float, b: float, c: float) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        f = pw.fit(FORMULA, data, method="exact", chains=4, draws=500, seed=7)
    dr = f.draws
    return _back(dr.beta, dr.sigma, dr.tau, a, b, c, 0.0)


@pytest.fixture(scope="module")
def exact_ref() -> dict[str, tuple[float, float]]:
    draws = _exact_back(BASE, 1.0, 0.0, 1.0)
    return {k: (float(v.mean()), float(az.mcse(az.convert_to_dataset(v))["x"])) for k, v in draws.items()}


def _assert_exact(got: dict[str, np.ndarray], ref: dict[str, tuple[float, float]]) -> None:
    for k, (mean, mcse) in ref.items():
        assert abs(float(got[k].mean()) - mean) <= 4.0 * mcse, (k, float(got[k].mean()), mean, mcse)


@settings(max_examples=12, **_SETTINGS)
@given(a=log_scale, t=offset_sds, c=log_scale)
def test_exact_in_memory_is_invariant(exact_ref: dict[str, tuple[float, float]], a: float, t: float,
                                      c: float) -> None:
    b = a * t
    _assert_exact(_exact_back(_transformed(a, b, c), a, b, c), exact_ref)


def test_exact_from_a_file_is_invariant(exact_ref: dict[str, tuple[float, float]], tmp_path: Path) -> None:
    a, b, c = 1.0, 1e8, 1.0  # the issue's case: an IndexError from a file
    path = tmp_path / "rows.parquet"
    _transformed(a, b, c).to_parquet(path)
    _assert_exact(_exact_back(str(path), a, b, c), exact_ref)
    a, b, c = 3e-7, -2.5e5, 4e8  # 10¹² SDs off 0, tiny units, huge predictor
    _transformed(a, b, c).to_parquet(path)
    _assert_exact(_exact_back(str(path), a, b, c), exact_ref)


def test_exact_the_issues_case_in_memory(exact_ref: dict[str, tuple[float, float]]) -> None:
    """y + 1e8 with sd ≈ 1: τ was 0.025 instead of ≈ 1.5 before."""
    got = _exact_back(_transformed(1.0, 1e8, 1.0), 1.0, 1e8, 1.0)
    _assert_exact(got, exact_ref)
    assert got["tau"].mean() > 0.5


# ----------------------------------------------------------------------------------------------
# beyond float64: refused, saying to rescale


@pytest.mark.parametrize("factor", [1e-300, 1e200])
@pytest.mark.parametrize("where", ["memory", "duckdb"])
def test_values_beyond_float64_are_refused(tmp_path: Path, factor: float, where: str) -> None:
    frame = BASE.assign(y=BASE["y"] * factor)
    data: Any = frame
    if where == "duckdb":
        data = str(tmp_path / "rows.parquet")
        frame.to_parquet(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(DataError) as err:
            pw.fit(FORMULA, data, method="exact", chains=1, draws=10)
    assert err.value.column == "y"
    assert "Rescale" in (err.value.hint or "")


def test_predictor_beyond_float64_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(DataError) as err:
            pw.fit(FORMULA, BASE.assign(x=BASE["x"] * 1e-200), method="empirical", chains=1, draws=10)
    assert err.value.column == "x"
    assert "Rescale" in (err.value.hint or "")


# ----------------------------------------------------------------------------------------------
# Spark: one fixed extreme case (the session is slow to start)

@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    yield from spark_session()


@pytest.mark.xdist_group("spark")
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_spark_is_invariant(spark: Any, reml_ref: dict[str, float], exact_ref: dict[str, tuple[float, float]],
                            tmp_path: Path) -> None:
    a, b, c, d = 2e-6, 1.5e6, 3e8, -4e10  # y: 10¹² SDs off 0 in tiny units; x: huge, 10⁶ SDs off 0
    _transformed(a, b, c, d).to_parquet(tmp_path / "reml.parquet")
    got = _reml_back(spark.read.parquet(str(tmp_path / "reml.parquet")), a, b, c, d)
    _assert_reml(got, reml_ref, a, b, c, d)
    _transformed(a, b, c).to_parquet(tmp_path / "exact.parquet")  # the exact path (its default priors: d = 0)
    _assert_exact(_exact_back(spark.read.parquet(str(tmp_path / "exact.parquet")), a, b, c), exact_ref)


# ----------------------------------------------------------------------------------------------
# NUTS (its compile takes ~30 s: with the long reference checks of make validate)


@pytest.mark.validate
def test_nuts_is_invariant_to_units(exact_ref: dict[str, tuple[float, float]]) -> None:
    """y in units of 1e-6 and x in units of 1e6: NUTS's start and mass-matrix regularization are
    absolute, so before the model was sampled in units of a power of 10 this gave R-hat 3.4 and σ
    10× too large."""
    a, b, c = 1e-6, 3.0, 1e6
    f = pw.fit(FORMULA, _transformed(a, b, c), method="nuts", chains=4, draws=300, warmup=300, seed=2)
    got = _back(f.draws.beta, f.draws.sigma, f.draws.tau, a, b, c, 0.0)
    for k, (mean, mcse) in exact_ref.items():
        own = float(az.mcse(az.convert_to_dataset(got[k]))["x"])
        assert abs(float(got[k].mean()) - mean) <= 4.0 * math.hypot(mcse, own), (k, float(got[k].mean()), mean)
        assert float(az.rhat(az.convert_to_dataset(got[k]))["x"]) < 1.05, k


# ----------------------------------------------------------------------------------------------
# varying slopes: the outcome's units and offset are free; the slope column's origin is the user's


def _slopes(data: Any) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        f = pw.fit("y ~ x + (1 + x | g)", data, method="empirical", chains=1, draws=10)
    e = f.draws.info["estimates"]
    return {"x": e["beta"][1], "sigma": e["sigma"], "sd0": e["sd"][0], "sd1": e["sd"][1]}


@pytest.mark.parametrize("a,b", [(1.0, 1e8), (1e-6, 2e6), (1e7, -3e18)])
def test_reml_slopes_invariant_to_the_outcomes_units(a: float, b: float) -> None:
    ref = _slopes(BASE)
    got = _slopes(_transformed(a, b, 1.0))
    lost = EPS * float(np.max(np.abs(a * BASE["y"] + b))) / (a * ref["sigma"])
    for k in ref:
        assert got[k] / a == pytest.approx(ref[k], rel=1e-6 + 4.0 * lost), k


@pytest.mark.parametrize("where", ["memory", "duckdb"])
def test_slope_far_from_zero_warns(tmp_path: Path, where: str) -> None:
    """x + 10⁶ as a varying slope: Σ's meaning moves with the origin, so only a warning can help
    (the REML slope SD collapsed to 0 without one)."""
    data: Any = _transformed(1.0, 0.0, 1.0, 1e6)
    if where == "duckdb":
        data.to_parquet(tmp_path / "rows.parquet")
        data = str(tmp_path / "rows.parquet")
    with pytest.warns(pw.errors.PoolwiseWarning, match="Centre 'x'"):
        pw.fit("y ~ x + (1 + x | g)", data, method="empirical", chains=1, draws=10)
