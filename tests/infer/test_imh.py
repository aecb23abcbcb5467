"""The independence Metropolis–Hastings sampler and its Newton search (poolwise.infer.imh), alone.

Targets with known answers, no model around them:

1. The damped Newton search finds the mode and the Hessian of a quadratic exactly.
2. On a correlated Gaussian and on a skewed target (a Gamma in log coordinates) the draws have
   the target's mean and variance within Monte Carlo error, with the MCSE from ArviZ's ESS.
3. A target with no finite density at its start says why instead of drawing.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
from scipy import special

from poolwise.infer import imh


class _Gauss:
    def __init__(self, mean: np.ndarray, cov: np.ndarray, start: np.ndarray) -> None:
        self.mean, self.prec, self.start = mean, np.linalg.inv(cov), start
        self.dim = mean.size

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(theta) - self.mean
        return -0.5 * np.einsum("bi,ij,bj->b", d, self.prec, d)

    def center(self) -> np.ndarray:
        return self.start


class _LogGamma:
    """θ = log x with x ~ Gamma(a, 1): density exp(aθ − e^θ) / Γ(a); E θ = ψ(a), Var θ = ψ'(a)."""

    def __init__(self, a: float) -> None:
        self.a, self.dim = a, 1

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        t = np.atleast_2d(theta)[:, 0]
        return self.a * t - np.exp(t)

    def center(self) -> np.ndarray:
        return np.zeros(1)


def test_newton_finds_the_mode_and_hessian_of_a_quadratic() -> None:
    A = np.array([[2.0, 0.6], [0.6, 1.0]])
    m = np.array([1.5, -2.0])

    def f(x: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(x) - m
        return 0.5 * np.einsum("bi,ij,bj->b", d, A, d)

    x, fx, H, n_eval = imh._newton_mode(f, np.zeros(2))
    np.testing.assert_allclose(x, m, atol=1e-8)
    assert fx == pytest.approx(0.0, abs=1e-12)
    assert H is not None
    np.testing.assert_allclose(H, A, rtol=1e-6)  # central differences are exact on a quadratic
    assert n_eval > 0


def _check_moments(draws: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
    """Each coordinate's mean within 4 MCSE (ESS-based) and variance within 4 MCSE of the truth."""
    for k in range(draws.shape[-1]):
        x = draws[..., k]
        ess = float(az.ess(x))
        se_mean = float(np.sqrt(var[k] / ess))
        assert abs(x.mean() - mean[k]) < 4 * se_mean, (k, x.mean(), mean[k], se_mean)
        # Var of the sample variance ≈ (μ4 − σ⁴)/ESS; μ4 estimated from the draws
        mu4 = float(np.mean((x - x.mean()) ** 4))
        se_var = float(np.sqrt(max(mu4 - var[k] ** 2, 1e-300) / ess))
        assert abs(x.var() - var[k]) < 4 * se_var, (k, x.var(), var[k], se_var)


def test_draws_of_a_correlated_gaussian() -> None:
    cov = np.array([[1.0, 0.8 * 0.5], [0.8 * 0.5, 0.25]])
    mean = np.array([3.0, -1.0])
    target = _Gauss(mean, cov, start=np.array([2.0, 0.0]))
    res = imh._imh(target, chains=4, draws=1000, rng=np.random.default_rng(1))
    assert not isinstance(res, str), res
    assert res.theta.shape == (4, 1000, 2)
    assert res.info["acceptance_rate"] > 0.6  # a t₅ proposal fitted to a Gaussian
    _check_moments(res.theta, mean, np.diag(cov))
    np.testing.assert_allclose(res.lp, target(res.theta.reshape(-1, 2)).reshape(4, 1000))


def test_draws_of_a_skewed_target() -> None:
    a = 3.0
    res = imh._imh(_LogGamma(a), chains=4, draws=1000, rng=np.random.default_rng(2))
    assert not isinstance(res, str), res
    _check_moments(res.theta, np.array([special.digamma(a)]), np.array([special.polygamma(1, a)]))


def test_no_finite_start_says_why() -> None:
    class Nowhere(_Gauss):
        def __call__(self, theta: np.ndarray) -> np.ndarray:
            return np.full(np.atleast_2d(theta).shape[0], -np.inf)

    res = imh._imh(Nowhere(np.zeros(1), np.eye(1), np.zeros(1)), chains=2, draws=10, rng=np.random.default_rng(0))
    assert isinstance(res, str) and "not finite" in res
