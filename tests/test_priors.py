"""Priors parse, print and evaluate like their SciPy counterparts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from poolwise.errors import PriorError
from poolwise.priors import Prior, default_priors, parse_prior

X = np.array([0.01, 0.3, 1.0, 2.5, 7.0])


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("normal(1, 2)", stats.norm(1, 2)),
        ("student_t(4, -1, 3)", stats.t(4, -1, 3)),
        ("half_normal(2)", stats.halfnorm(scale=2)),
        ("half_cauchy(5)", stats.halfcauchy(scale=5)),
        ("exponential(0.5)", stats.expon(scale=2)),
    ],
)
def test_logpdf_matches_scipy(text: str, ref: object) -> None:
    p = parse_prior(text)
    np.testing.assert_allclose(p.logpdf(X), ref.logpdf(X), rtol=1e-12)  # type: ignore[attr-defined]


def test_half_student_t_is_twice_the_t_density() -> None:
    p = parse_prior("half_student_t(3, 2)")
    np.testing.assert_allclose(p.logpdf(X), np.log(2) + stats.t(3, 0, 2).logpdf(X), rtol=1e-12)
    assert p.logpdf(-1.0) == -np.inf


def test_round_trip_and_aliases() -> None:
    for text in ("normal(0, 5)", "half_normal(2.5)", "half_student_t(3, 12.5)", "exponential(1)"):
        assert str(parse_prior(text)) == text
    assert parse_prior("HalfNormal(1)") == Prior("half_normal", (1.0,))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("half_normal(-1)", ["positive"]),
        ("normal(0)", ["2 argument"]),
        ("normal(0, x)", ["non-numeric"]),
        ("half_normall(1)", ["Did you mean 'half_normal'"]),
        ("5", ["Cannot read"]),
        ("exponential(inf)", ["non-finite"]),
    ],
)
def test_bad_priors(text: str, words: list[str]) -> None:
    with pytest.raises(PriorError) as info:
        parse_prior(text, name="sigma")
    for w in words:
        assert w in str(info.value)


def test_defaults_are_data_scaled() -> None:
    d = default_priors(y_mean=10.0, y_sd=2.0, coef_names=["Intercept", "x"], x_means={"x": 3.0},
                       x_sds={"x": 0.5}, has_sigma=True, sd_names=["sd(Intercept|g)"])
    assert str(d["x"]) == "normal(0, 10)"
    # intercept at x = 0 is 6 SDs of x away from the data: 2.5·2·√(1 + 36)
    assert d["Intercept"].args == (10.0, pytest.approx(5 * np.sqrt(37), rel=1e-3))
    assert str(d["sigma"]) == "exponential(0.5)"
    assert str(d["sd(Intercept|g)"]) == "half_student_t(3, 5)"
