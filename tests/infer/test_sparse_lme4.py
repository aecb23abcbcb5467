"""REML and ML for several grouping factors against lme4's measured fits (tests/data/lme4_crossed.json).

The issue's bar: estimates to 1e-4 relative, the REML criterion (or ML deviance) to 1e-6 relative.
Where poolwise's criterion is *better* than lme4's (a higher likelihood: lme4's optimizer stopped
short on a flat direction — InstEval's dept SD, 2e-4 short, the criterion 1.3e-6 higher than
poolwise's), the estimates are compared to 1e-3; the criterion is never worse.
"""

from __future__ import annotations

import numpy as np
import pytest

import poolwise as pw
from _crossed_data import anchors, crossed_slopes, lme4_frame

A = anchors()

CASES = ["penicillin_reml", "penicillin_ml", "pastes_reml", "pastes_ml", "crossed_slopes_reml", "crossed_slopes_ml",
         "insteval_reml", "insteval_service_reml"]


@pytest.mark.parametrize("name", CASES)
def test_reml_ml_equal_lme4(name: str) -> None:
    rec = A["fits"][name]
    df = crossed_slopes() if rec["data"] == "crossed_slopes" else lme4_frame(rec["data"])
    reml = rec["method"] == "REML"
    fit = pw.fit(rec["poolwise_formula"], df, method="empirical", reml=reml, seed=0, draws=10, chains=2)
    info = fit.draws.info
    est = info["estimates"]
    want = rec["REMLcrit"] if reml else rec["deviance"]
    assert info["converged"]
    assert info["criterion"] <= want * (1 + 1e-6)  # never a worse optimum than lme4's
    # the criterion itself is exact to ~1e-9 here (poolwise's, evaluated at lme4's θ, equals lme4's)
    better = info["criterion"] < want - 1e-7
    assert info["criterion"] == pytest.approx(want, rel=1e-6)
    tol = 1e-3 if better else 1e-4
    got = {"sigma": est["sigma"], **est["sd"], **est.get("corr", {})}
    ref = {"sigma": rec["sigma"], **rec["sd"], **rec.get("cor", {})}
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=tol, abs=1e-8), k
    np.testing.assert_allclose(est["beta"], list(rec["fixef"].values()), rtol=tol)
