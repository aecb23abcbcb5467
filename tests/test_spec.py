"""ModelSpec: formula parsing, the pooling knob, variants, binding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poolwise.data import read_table
from poolwise.errors import DataError, SpecError
from poolwise.spec import UNPOOLED_SCALE, ModelSpec


def test_parse() -> None:
    s = ModelSpec("y ~ x1 + x2 + (1 | g)")
    assert s.outcome == "y" and s.se is None and s.group is not None
    assert s.group.factor == "g" and s.group.sd_name() == "sd(Intercept|g)"
    assert set(s.variables) == {"y", "x1", "x2", "g"}
    m = ModelSpec("y | se(s) ~ 1 + (1 | school)")
    assert m.se == "s" and not m.has_sigma


@pytest.mark.parametrize("pooling", ["pooled", "unpooled", "hierarchical", 0.5, "2"])
def test_pooling_values(pooling: object) -> None:
    ModelSpec("y ~ 1 + (1 | g)", pooling=pooling)  # type: ignore[arg-type]


def test_slopes_parse_into_blocks() -> None:
    s = ModelSpec("y ~ x + (1 + x || g) + (1 | a/b)")
    assert [str(t) for t in s.group_terms] == ["(1 + x || g)", "(1 | a)", "(1 | a:b)"]
    assert not s.simple
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.normal(size=24), "x": rng.normal(size=24), "g": list("abcd") * 6,
                       "a": list("uv") * 12, "b": list("pqr") * 8})
    bound = s.bind(read_table(df))
    assert [b.factor for b in bound.blocks] == ["g", "a", "a:b"]
    assert bound.blocks[0].Z.shape == (24, 2) and bound.blocks[0].cor_names == []
    assert "sd(x|g)" in bound.priors and "cor(g)" not in bound.priors
    c = ModelSpec("y ~ x + (1 + x | g)").bind(read_table(df))
    assert c.blocks[0].cor_names == ["cor(Intercept,x|g)"] and str(c.priors["cor(g)"]) == "lkj(2)"


def test_slope_constant_within_groups_is_refused() -> None:
    df = pd.DataFrame({"y": np.arange(8.0), "u": [1.0, 1, 2, 2, 3, 3, 4, 4], "g": list("aabbccdd")})
    with pytest.raises(DataError, match="constant within every group"):
        ModelSpec("y ~ u + (1 + u | g)").bind(read_table(df))


def test_replace_is_a_new_spec() -> None:
    s = ModelSpec("y ~ x + (1 | g)", priors={"sigma": "exponential(2)"})
    t = s.replace(pooling="pooled")
    assert s.pooling == "hierarchical" and t.pooling == "pooled"
    assert str(t.priors["sigma"]) == "exponential(2)"


def test_bind_sets_the_knob() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=20), "x": rng.normal(size=20), "g": list("abcd") * 5})
    table = read_table(df)
    h = ModelSpec("y ~ x + (1 | g)").bind(table)
    assert h.tau is None and h.levels == ["a", "b", "c", "d"] and h.coef_names == ["Intercept", "x"]
    p = ModelSpec("y ~ x + (1 | g)", pooling="pooled").bind(table)
    assert p.tau == 0.0 and "sd(Intercept|g)" not in p.priors
    u = ModelSpec("y ~ x + (1 | g)", pooling="unpooled").bind(table)
    assert u.tau == pytest.approx(UNPOOLED_SCALE * np.std(df["y"]), rel=1e-3)
    f = ModelSpec("y ~ x + (1 | g)", pooling=0.3).bind(table)
    assert f.tau == 0.3
    X, idx, known = h.encode(pd.DataFrame({"x": [1.0, 2.0], "g": ["b", "zz"]}))
    np.testing.assert_array_equal(X, [[1, 1], [1, 2]])
    assert list(idx) == [1, -1] and list(known) == [True, False]


def test_categorical_predictor_encoding_is_kept() -> None:
    df = pd.DataFrame({"y": np.arange(12.0), "c": list("uvw") * 4, "g": list("ab") * 6})
    b = ModelSpec("y ~ c + (1 | g)").bind(read_table(df))
    assert b.coef_names == ["Intercept", "c[v]", "c[w]"]
    X, _, _ = b.encode(pd.DataFrame({"c": ["w", "u"], "g": ["a", "a"]}))
    np.testing.assert_array_equal(X, [[1, 0, 1], [1, 0, 0]])
