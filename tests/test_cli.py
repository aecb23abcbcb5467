"""The command line: outputs written, files never overwritten by surprise, errors in one or two lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import poolwise as pw
from poolwise.cli import COMPARE_FILES, FIT_FILES, app

FORMULA = "reaction ~ night + (1 | driver)"
FAST = ["--draws", "200", "--chains", "2"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "drivers.csv"
    pw.datasets.drivers(30, seed=3).to_csv(path, index=False)
    return path


def run(*args: str):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})  # wide: no folded words


def assert_error(result, *words: str) -> None:  # noqa: ANN001
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ")
    assert 1 <= len(err.splitlines()) <= 2, err
    assert "Traceback" not in result.output
    for word in words:
        assert word in err, err


def test_fit_prints_and_writes(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "fit"  # created, parents too
    r = run("fit", csv, "-f", FORMULA, *FAST, "--prior", "sd(Intercept|driver)=half_normal(1)", "--out", out)
    assert r.exit_code == 0, r.output
    assert "sd(Intercept|driver)" in r.stdout and "half_normal(1)" in r.stdout
    assert "D01" not in r.stdout  # no group rows on screen
    for name in FIT_FILES:
        assert (out / name).stat().st_size > 0
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert "sigma" in summary.index and any("D01" in str(i) for i in summary.index)
    pf = pd.read_csv(out / "pooling_factors.csv", index_col=0)
    assert len(pf) == 30 and pf["lambda"].between(0, 1).all()


def test_fit_reads_parquet(csv: Path, tmp_path: Path) -> None:
    path = tmp_path / "drivers.parquet"
    pd.read_csv(csv).to_parquet(path)
    r = run("fit", path, "-f", FORMULA, *FAST, "--pooling", "pooled")
    assert r.exit_code == 0, r.output
    assert "pooling=pooled" in r.stdout


def test_fit_numeric_pooling(csv: Path) -> None:
    r = run("fit", csv, "-f", FORMULA, *FAST, "--pooling", "0.2")
    assert r.exit_code == 0, r.output
    assert "pooling=0.2" in r.stdout


def test_compare_prints_and_writes(csv: Path, tmp_path: Path) -> None:
    r = run("compare", csv, "-f", FORMULA, *FAST, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    for word in ("pooled", "unpooled", "hierarchical", "elpd_loo", "population", "20 smallest of 30 groups"):
        assert word in r.stdout
    for name in COMPARE_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    table = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert len(table) == 30 and table["n"].is_monotonic_increasing
    assert set(pd.read_csv(tmp_path / "loo.csv", index_col=0).index) == {"pooled", "unpooled", "hierarchical"}
    assert (tmp_path / "comparison.svg").read_text().lstrip().startswith("<?xml")


def test_existing_file_is_kept_without_force(csv: Path, tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_bytes(b"precious,data\n1,2\n")
    r = run("compare", csv, "-f", FORMULA, *FAST, "--out", tmp_path)
    assert_error(r, f"{target} exists already", "--force")
    assert target.read_bytes() == b"precious,data\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # checked before fitting
    r = run("compare", csv, "-f", FORMULA, *FAST, "--out", tmp_path, "--force")
    assert r.exit_code == 0, r.output
    assert target.read_bytes() != b"precious,data\n1,2\n"


def test_fit_force(csv: Path, tmp_path: Path) -> None:
    (tmp_path / "fit.nc").write_bytes(b"x")
    assert_error(run("fit", csv, "-f", FORMULA, *FAST, "--out", tmp_path), "fit.nc exists already")
    assert (tmp_path / "fit.nc").read_bytes() == b"x"
    r = run("fit", csv, "-f", FORMULA, *FAST, "--out", tmp_path, "--force")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fit.nc").stat().st_size > 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fit", "{missing}", "-f", FORMULA], ["does not exist"]),
        (["fit", "{csv}", "-f", "reaction ~ nite + (1 | driver)"], ["nite", "Did you mean 'night'"]),
        (["compare", "{csv}", "-f", "reaction ~ night + (1 | drivr)"], ["drivr"]),
        (["fit", "{csv}", "-f", FORMULA, "--pooling", "partial"], ["pooling", "partial"]),
        (["fit", "{csv}", "-f", FORMULA, "--method", "magic"], ["method", "magic"]),
        (["fit", "{csv}", "-f", FORMULA, "--prior", "half_normal(1)"], ["NAME=PRIOR"]),
        (["fit", "{csv}", "-f", FORMULA, "--prior", "sd(Intercept|driver)=half_nrml(1)"], ["half_nrml"]),
        (["fit", "{csv}", "-f", FORMULA, "--prior", "sd(Intercept|driver)=half_normal(-1)"], ["positive"]),
        (["compare", "{csv}", "-f", FORMULA, "--draws", "0"], ["draws"]),
        (["fit", "{csv}", "-f", FORMULA, "--family", "gamma"], ["family", "gamma", "poisson"]),
        (["compare", "{csv}", "-f", FORMULA, "--family", "gamma"], ["family", "gamma"]),
        (["fit", "{csv}", "-f", FORMULA, "--family", "poisson"], ["reaction", "poisson", "whole numbers"]),
        (["compare", "{csv}", "-f", FORMULA, "--family", "bernoulli"], ["reaction", "bernoulli", "0 or 1"]),
    ],
)
def test_errors_exit_2_in_one_or_two_lines(csv: Path, tmp_path: Path, args: list[str], words: list[str]) -> None:
    args = [a.format(csv=csv, missing=tmp_path / "missing.csv") for a in args]
    assert_error(run(*args[:2], *FAST, *args[2:]), *words)  # the case's own flags come last and win


def test_family_flag(csv: Path) -> None:
    r = run("fit", csv, "-f", FORMULA, *FAST, "--family", "gaussian")
    assert r.exit_code == 0, r.output
    assert "family=gaussian" in r.stdout
    assert "--family" in run("compare", "--help").stdout


def test_out_is_a_file(csv: Path, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    assert_error(run("fit", csv, "-f", FORMULA, *FAST, "--out", path), "not a folder")


def test_python_dash_m_help() -> None:
    r = subprocess.run([sys.executable, "-m", "poolwise", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fit" in r.stdout and "compare" in r.stdout
