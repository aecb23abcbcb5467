"""Pooling across several grouping factors: per-term pooling, compare() and the pooling path per
factor, and the command line's per-term option and progress bar."""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from _hand import hand_comparison
from typer.testing import CliRunner

import poolwise as pw
from poolwise.cli import app
from poolwise.errors import SpecError
from poolwise.spec import ModelSpec

CROSSED = "y ~ 1 + (1 | s) + (1 | d)"


def _crossed(seed: int = 1, S: int = 10, D: int = 6, reps: int = 2) -> pd.DataFrame:
    """Subjects × items, crossed, unbalanced (about 15% of the cells' rows missing)."""
    rng = np.random.default_rng(seed)
    us, ud = rng.normal(0, 1.0, S), rng.normal(0, 0.6, D)
    rows = [{"s": f"s{i}", "d": f"d{j}", "x": rng.normal(), "y": 5 + us[i] + ud[j] + rng.normal(0, 0.5)}
            for i in range(S) for j in range(D) for _ in range(reps) if rng.random() > 0.15]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def crossed() -> pd.DataFrame:
    return _crossed()


def _bind(spec: ModelSpec, df: pd.DataFrame):  # noqa: ANN202 - BoundSpec
    return spec.bind(pw.data.read_table(df))


# -- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["pooled", "unpooled", "hierarchical", 0.5])
def test_same_setting_for_every_term_is_the_global_setting(crossed: pd.DataFrame, setting: object) -> None:
    one = ModelSpec(CROSSED, pooling=setting)  # type: ignore[arg-type]
    for per_term in ({"1|s": setting, "1|d": setting}, {"(1 | s)": setting, "d": setting},
                     f"1|s={setting}, 1 | d = {setting}"):
        spec = ModelSpec(CROSSED, pooling=per_term)  # type: ignore[arg-type]
        assert spec == one and spec.pooling == one.pooling
        a, b = _bind(spec, crossed), _bind(one, crossed)
        for x, y in zip(a.blocks, b.blocks):
            assert (x.Sigma is None) == (y.Sigma is None)
            if x.Sigma is not None:
                np.testing.assert_array_equal(x.Sigma, y.Sigma)
        assert a.priors == b.priors


def test_each_term_gets_its_own_setting(crossed: pd.DataFrame) -> None:
    spec = ModelSpec("y ~ x + (1 + x | s) + (1 | d)", pooling={"1 + x|s": "unpooled", "d": 0.3})
    assert spec.pooling == (("1 + x|s", "unpooled"), ("1|d", 0.3))
    assert spec.pooling_text == "1 + x|s=unpooled, 1|d=0.3"
    assert ModelSpec(spec.formula, pooling=spec.pooling_text) == spec  # the text reads back
    assert spec.replace(pooling=spec.pooling) == spec
    b = _bind(spec, crossed)
    wide = _bind(ModelSpec("y ~ x + (1 + x | s) + (1 | d)", pooling="unpooled"), crossed)
    np.testing.assert_array_equal(b.blocks[0].Sigma, wide.blocks[0].Sigma)  # the global unpooled Σ of s
    np.testing.assert_allclose(b.blocks[1].Sigma, [[0.09]])
    # terms not named stay hierarchical: their SD is a parameter with a prior, the fixed ones are not
    half = _bind(ModelSpec(CROSSED, pooling={"1|d": "pooled"}), crossed)
    assert half.blocks[0].Sigma is None and half.blocks[1].pooled
    assert "sd(Intercept|s)" in half.priors and "sd(Intercept|d)" not in half.priors


@pytest.mark.parametrize(("pooling", "words"), [
    ({"1|q": "pooled"}, ["'1|q'", "'1|s', '1|d'", "Did you mean '1|s'"]),
    ({"1|s": "partial"}, ["'1|s'", "'partial'"]),
    ({"d": -1.0}, ["'d'", "positive"]),
    ({"s": "pooled", "1|s": "unpooled"}, ["'1|s' twice"]),
    ("1|s=pooled, 1|d", ["'1|d'", "TERM=SETTING"]),
])
def test_bad_keys_and_settings(pooling: object, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        ModelSpec(CROSSED, pooling=pooling)  # type: ignore[arg-type]
    assert err.value.option == "pooling"
    for word in words:
        assert word in str(err.value), str(err.value)


# -- fits -------------------------------------------------------------------------------------


def _mcse_ok(a: np.ndarray, b: np.ndarray, k: float = 4.0) -> tuple[bool, float, float]:
    """Whether the posterior means of two independent runs agree within k combined MCSE."""
    se = float(np.hypot(az.mcse(a, method="mean"), az.mcse(b, method="mean")))
    d = abs(float(a.mean()) - float(b.mean()))
    return d <= k * se, d, se


def test_pooled_term_is_the_model_without_it(crossed: pd.DataFrame) -> None:
    """{"1|d": "pooled"} by the exact (sparse) path is y ~ 1 + (1 | s) by the one-factor path."""
    f = pw.fit(CROSSED, crossed, pooling={"1|d": "pooled"}, method="exact", chains=4, draws=1000, seed=3)
    g = pw.fit("y ~ 1 + (1 | s)", crossed, method="exact", chains=4, draws=1000, seed=4)
    assert f.method == "exact" and not f.draws.info.get("note")  # no NUTS fallback
    post = f.idata.posterior
    assert "sd(Intercept|d)" not in post and "1|d" not in post and "1|s" in post
    for name in ("Intercept", "sigma", "sd(Intercept|s)"):
        ok, d, se = _mcse_ok(f.param(name), g.param(name))
        assert ok, (name, d, se)
    fs, gs = f.idata.posterior["1|s"].values, g.idata.posterior["1|s"].values
    for j in range(fs.shape[-1]):
        ok, d, se = _mcse_ok(fs[..., j], gs[..., j])
        assert ok, (j, d, se)
    # the pooled factor's groups all take the population value: Intercept + 0
    est = f.group_estimates(term="1|d")
    np.testing.assert_allclose(est["mean"], float(f.param("Intercept").mean()), rtol=1e-12)
    assert float(f.param("sd(Intercept|s)").std()) > 0  # the other factor's SD is learned
    assert f.priors.loc["sd(Intercept|d)", "source"] == "pooling"
    assert "1|s=hierarchical, 1|d=pooled" in repr(f)


def test_reml_with_a_pooled_term_is_reml_without_it(crossed: pd.DataFrame) -> None:
    f = pw.fit(CROSSED, crossed, pooling={"1|d": "pooled"}, method="empirical")
    g = pw.fit("y ~ 1 + (1 | s)", crossed, method="empirical")
    assert f.draws.info["criterion"] == pytest.approx(g.draws.info["criterion"], rel=1e-6)
    for name in ("sigma", "sd(Intercept|s)"):
        assert float(f.param(name).mean()) == pytest.approx(float(g.param(name).mean()), rel=1e-4)


def test_compare_table_and_pooling_factors_cover_every_factor(crossed: pd.DataFrame) -> None:
    cmp = hand_comparison(CROSSED, crossed)
    assert cmp.factors == ["s", "d"] and cmp.factor_terms == ["1|s", "1|d"]
    t = cmp.table()
    assert t.index.names == ["factor", "group"]
    assert list(dict.fromkeys(t.index.get_level_values("factor"))) == ["s", "d"]
    for factor, term in (("s", "1|s"), ("d", "1|d")):
        part = t.xs(factor, level="factor")
        assert set(part.index) == set(crossed[factor]) and (part["term"] == term).all()
        assert part["n"].is_monotonic_increasing
        one = cmp.table(term=term)
        np.testing.assert_array_equal(part["hierarchical_mean"].to_numpy(), one["hierarchical_mean"].to_numpy())
        for pooling, f in cmp.fits.items():  # each factor's estimates, straight from its fit
            est = f.group_estimates(term=term).loc[part.index]
            np.testing.assert_array_equal(part[f"{pooling}_mean"].to_numpy(), est["mean"].to_numpy())
        pf = cmp.hierarchical.pooling_factors(term=term)
        assert t.attrs["batch_pooling"][term] == pf.attrs["batch"]
    pf = cmp.pooling_factors()
    assert set(pf.index.get_level_values("term")) == {"1|s", "1|d"}
    assert (pf.xs("1|d", level="term")["factor"] == "d").all()
    from poolwise import plots

    fig = plots.plot_pooling_factors(cmp)
    assert [ax.get_title() for ax in fig.axes] == ["Pooling factors of 1|s", "Pooling factors of 1|d"]
    assert plots.comparison_data(cmp)["term"] == "1|s"  # figures default to the first term, one row each
    assert len(plots.plot_comparison(cmp).axes) == 6


def test_pooling_path_moves_one_factor(crossed: pd.DataFrame) -> None:
    with pytest.raises(SpecError, match="factor="):
        pw.pooling_path(CROSSED, crossed)
    with pytest.raises(SpecError, match="no group term"):
        pw.pooling_path(CROSSED, crossed, factor="q")
    p = pw.pooling_path(CROSSED, crossed, factor="d", grid=[0.0, 0.3], chains=4, draws=500, seed=5)
    assert p.group_column == "d" and p.term == "1|d" and set(p.groups) == set(crossed["d"])
    assert list(p.other_sds) == ["sd(Intercept|s)"]
    # τ_d = 0: every item at the pooled value, and s's SD learned as in y ~ 1 + (1 | s)
    assert np.ptp(p.mean[0]) < 1e-9
    one = pw.fit("y ~ 1 + (1 | s)", crossed, chains=4, draws=1000, seed=6).param("sd(Intercept|s)")
    tau_s = p.other_sds["sd(Intercept|s)"]
    se_one = float(az.mcse(one, method="mean"))
    se_path = np.sqrt(2.0) * se_one  # the same posterior from 4 × 500 draws, half of 4 × 1000
    assert abs(tau_s[0] - float(one.mean())) < 4 * float(np.hypot(se_one, se_path)), (tau_s, float(one.mean()))
    assert np.ptp(p.mean[1]) > 0  # τ_d = 0.3: the items differ
    assert p.tau_draws is not None and p.tau_draws.size == 4 * 500  # the hierarchical fit's draws of sd(d)


# -- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory, crossed: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("data") / "crossed.csv"
    crossed.to_csv(path, index=False)
    return path


def _run(*args: object, **env: str):  # noqa: ANN202 - click's Result
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **env})


def test_cli_per_term_pooling_and_progress(csv: Path, tmp_path: Path) -> None:
    r = _run("fit", csv, "-f", CROSSED, "--chains", "2", "--draws", "100", "--pooling", "1|s=hierarchical",
             "--pooling", "d=pooled", "--out", tmp_path, TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    assert r.exit_code == 0, r.output
    assert "pooling='1|s=hierarchical, 1|d=pooled'" in r.stdout
    assert "0 (pooled: group term dropped)" in r.stdout
    # the bar (on stderr) names the stages of the multi-factor exact fit
    for stage in ("reduce", "hyperparameters", "group values"):
        assert stage in r.stderr, r.stderr[-2000:]
    # the setting written with the fit reads back as the same model
    import xarray as xr

    attrs = xr.open_dataset(tmp_path / "fit.nc", group="posterior").attrs
    assert ModelSpec(CROSSED, pooling=attrs["pooling"]).pooling == (("1|s", "hierarchical"), ("1|d", "pooled"))
    pf = pd.read_csv(tmp_path / "pooling_factors.csv", index_col=[0, 1])
    assert set(pf.index.get_level_values("term")) == {"1|s", "1|d"}
    np.testing.assert_array_equal(pf.xs("1|d", level="term")["lambda"], 1.0)  # pooled: λ = 1


def test_cli_bad_pooling_key_exits_2(csv: Path) -> None:
    for args in (["--pooling", "1|q=pooled"], ["--pooling", "pooled", "--pooling", "1|d=pooled"]):
        r = _run("fit", csv, "-f", CROSSED, "--draws", "10", *args)
        assert r.exit_code == 2, r.output
        err = r.stderr.strip()
        assert err.startswith("error: ") and len(err.splitlines()) <= 2 and "Traceback" not in r.output
        assert "pooling" in err


def test_cli_compare_tables_per_factor(crossed: pd.DataFrame) -> None:
    """``poolwise compare`` prints one table of group estimates per grouping factor."""
    from rich.console import Console

    from poolwise.cli import _factor_tables, _groups_table

    cmp = hand_comparison(CROSSED, crossed)
    parts = _factor_tables(cmp, cmp.table())
    assert [(f, t) for f, t, _ in parts] == [("s", "1|s"), ("d", "1|d")]
    console = Console(record=True, width=200)
    for factor, term, frame in parts:
        assert list(frame.index) == list(cmp.table(term=term).index)
        console.print(_groups_table(cmp, frame, factor, term))
    text = console.export_text()
    assert "Group intercepts by s:" in text and "Group intercepts by d:" in text
    assert all(label in text for label in set(crossed["s"]) | set(crossed["d"]))


def test_comparison_figure_rows_per_factor() -> None:
    """One row per group term up to three; past that every factor's first term first, the rest named."""
    from poolwise import plots

    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"y": rng.normal(size=n), **{f: rng.integers(0, 4, n).astype(str) for f in "abce"}})
    cmp = hand_comparison("y ~ 1 + (1 | a) + (1 | b) + (1 | c) + (1 | e)", df)
    fig = plots.plot_comparison(cmp)
    assert len(fig.axes) == 9
    assert "(1|a, 1|b, 1|c); 1 more group term" in fig.get_suptitle()
    assert len(plots.plot_comparison(cmp, terms=cmp.terms).axes) == 12
    assert len(plots.plot_pooling_factors(cmp).axes) == 4  # every factor's pooling factors
