"""Printed and saved numbers keep their precision; outputs are checked before the work and written
whole, never through a link, never twice in one run (issue 13, items 4 and 5)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import poolwise as pw
from poolwise import datasets, report
from poolwise.cli import app
from poolwise.errors import DataError
from poolwise.output import check_outputs, number, write_file, write_text

FORMULA = "reaction ~ night + (1 | driver)"
FAST = ["--draws", "200", "--chains", "2", "--seed", "1"]
#: reaction times in units 10^5 times larger (~0.0025): a table of fixed decimals shows 0.003 and 0.000
SCALE = 1e-5
#: what 4 significant digits guarantee: relative error at most 5e-4 (a shown value against the exact one)
SHOWN_RTOL = 5e-4


def run(*args: object):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "drivers.csv"
    df = pw.datasets.drivers(12, seed=3)
    df.assign(reaction=df["reaction"] * SCALE).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "drivers.csv"
    pw.datasets.drivers(12, seed=3).to_csv(path, index=False)
    return path


def _shown(text: str) -> float:
    return float(text.replace("−", "-"))


def _row(stdout: str, name: str) -> list[str]:
    line = next(ln for ln in stdout.splitlines() if ln.strip().startswith(name + " "))
    return line.split()[1:]


# -- item 4: precision -------------------------------------------------------------------------


def test_number_keeps_significant_digits() -> None:
    assert number(0.000123456) == "0.0001235"
    assert number(0.0025341) == "0.002534"
    assert number(1234.567) == "1235" and number(250.1234) == "250.1"
    assert number(9.99996) == "10.00" and number(-0.0) == "0" and number(2.5e-9) == "2.500e-9"
    assert number(float("nan")) == "–" and number(float("inf")) == "∞"


def test_summary_frame_keeps_full_precision(small_csv: Path) -> None:
    f = pw.fit(FORMULA, pd.read_csv(small_csv), draws=200, chains=2, seed=1)
    s = f.summary()
    for name in ("Intercept", "night", "sigma"):
        d = f.idata.posterior[name].values
        assert s.loc[name, "mean"] == pytest.approx(d.mean(), rel=1e-12)
        assert s.loc[name, "sd"] == pytest.approx(d.std(ddof=1), rel=1e-9)
        assert s.loc[name, "sd"] > 0


def test_cli_fit_table_and_summary_csv_keep_digits(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = run("fit", small_csv, "-f", FORMULA, *FAST, "--out", out)
    assert r.exit_code == 0, r.output
    post = az.from_netcdf(out / "fit.nc").posterior
    saved = pd.read_csv(out / "summary.csv", index_col=0)
    for name in ("Intercept", "night", "sigma"):
        d = post[name].values
        assert saved.loc[name, "mean"] == pytest.approx(d.mean(), rel=1e-12)  # the file: every digit
        assert saved.loc[name, "sd"] == pytest.approx(d.std(ddof=1), rel=1e-9)
        mean, sd = (_shown(v) for v in _row(r.stdout, name)[:2])  # the screen: significant digits
        assert mean == pytest.approx(d.mean(), rel=SHOWN_RTOL)
        assert sd == pytest.approx(d.std(ddof=1), rel=SHOWN_RTOL)


def test_cli_compare_keeps_digits(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = run("compare", small_csv, "-f", FORMULA, *FAST, "--out", out)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "table.csv", index_col=0)
    html = report._frame_html(table, index_name="group")  # how the report shows its tables
    shown = 0
    for label, row in table.head(5).iterrows():
        line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(str(label) + " "))
        cells = [_shown(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?", line.split(None, 2)[2])]
        for i, p in enumerate(("pooled", "unpooled", "hierarchical")):
            for j, col in enumerate(("mean", "lo", "hi")):
                assert cells[3 * i + j] == pytest.approx(row[f"{p}_{col}"], rel=SHOWN_RTOL), (label, p, col)
        assert f">{number(row['hierarchical_mean'])}<" in html and f">{number(row['pooled_hi'])}<" in html
        shown += 1
    assert shown == 5
    assert not list(tmp_path.rglob(".*partial*"))


# -- item 5: outputs written safely ------------------------------------------------------------


def test_dangling_link_at_an_output_is_refused_before_fitting(csv: Path, tmp_path: Path) -> None:
    out, outside = tmp_path / "res", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "fit.nc").symlink_to(outside / "stolen.nc")
    for extra in ([], ["--force"]):
        r = run("fit", csv, "-f", FORMULA, *FAST, "--out", out, *extra)
        assert r.exit_code == 2, r.output
        assert "link" in r.stderr and "fit.nc" in r.stderr and r.stdout == ""  # before any fitting
        assert not (outside / "stolen.nc").exists() and sorted(os.listdir(out)) == ["fit.nc"]
    report_file = tmp_path / "report.html"
    report_file.symlink_to(outside / "stolen.html")
    for extra in ([], ["--force"]):
        r = run("compare", csv, "-f", FORMULA, *FAST, "--report", report_file, *extra)
        assert r.exit_code == 2, r.output
        assert "link" in r.stderr and r.stdout == ""
        assert not (outside / "stolen.html").exists()


def test_outputs_that_collide_are_refused(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = run("compare", csv, "-f", FORMULA, *FAST, "--out", out, "--report", out / "table.csv")
    assert r.exit_code == 2, r.output
    assert "twice" in r.stderr and "table.csv" in r.stderr and r.stdout == ""
    assert not out.exists()
    out.mkdir()
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)  # the same folder by another name
    for report_file in (out / ".." / "res" / "loo.csv", tmp_path / "alias" / "loo.csv"):
        r = run("compare", csv, "-f", FORMULA, *FAST, "--out", out, "--report", report_file, "--force")
        assert r.exit_code == 2 and "twice" in r.stderr, r.output
    assert not os.listdir(out)


@pytest.mark.parametrize("where", ["devnull", "under_a_file"])
def test_out_that_cannot_be_made_fails_before_fitting(csv: Path, tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    out = Path("/dev/null/sub") if where == "devnull" else a_file / "sub"
    for cmd in (["fit", csv, "-f", FORMULA, *FAST, "--out", out],
                ["compare", csv, "-f", FORMULA, *FAST, "--report", out / "report.html"]):
        r = run(*cmd)
        assert r.exit_code == 2, (r.output, r.exception)
        err = r.stderr.strip()
        assert err.startswith("error: ") and 1 <= len(err.splitlines()) <= 2 and "Traceback" not in r.output
        assert r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["plain"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into any folder")
def test_unwritable_folder_fails_before_fitting(csv: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        r = run("fit", csv, "-f", FORMULA, *FAST, "--out", locked / "res")
        assert r.exit_code == 2 and "not writable" in r.stderr and r.stdout == ""
    finally:
        locked.chmod(0o700)


def test_force_replaces_a_regular_file_whole(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    out.mkdir()
    (out / "summary.csv").write_text("old")
    r = run("fit", csv, "-f", FORMULA, *FAST, "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(out / "summary.csv", index_col=0).loc["sigma", "mean"] > 0
    assert sorted(os.listdir(out)) == ["fit.nc", "pooling_factors.csv", "summary.csv"]  # no temporary left


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "table.csv"
    target.write_text("precious")

    def half(tmp: str) -> None:
        Path(tmp).write_text("half of it")
        raise error

    with pytest.raises(type(error)):
        write_file(target, half, overwrite=True)
    assert target.read_text() == "precious" and sorted(os.listdir(tmp_path)) == ["table.csv"]
    with pytest.raises(type(error)):
        write_file(tmp_path / "new.csv", half)
    assert sorted(os.listdir(tmp_path)) == ["table.csv"]


def test_a_link_planted_while_writing_is_not_followed(tmp_path: Path) -> None:
    target, outside = tmp_path / "fit.nc", tmp_path / "outside.nc"

    def plant(tmp: str) -> None:
        Path(tmp).write_text("ours")
        target.symlink_to(outside)

    with pytest.raises(DataError, match="appeared"):
        write_file(target, plant)
    assert not outside.exists() and target.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["fit.nc"]


def test_library_writers_refuse_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    link = tmp_path / "link.nc"
    link.symlink_to(outside)
    f = pw.fit(FORMULA, pw.datasets.drivers(8, seed=1), draws=50, chains=1)
    with pytest.raises(DataError, match="link"):
        f.to_netcdf(link, overwrite=True)
    with pytest.raises(DataError, match="link"):
        write_text(link, "x", overwrite=True)
    assert datasets._main(["drivers", str(link), "--force"]) == 2
    assert not outside.exists()
    with pytest.raises(DataError, match="twice"):
        check_outputs([(tmp_path / "a.csv", None), (tmp_path / "." / "a.csv", None)])
    assert f.to_netcdf(tmp_path / "f.nc") == os.fspath(tmp_path / "f.nc")
    assert sorted(os.listdir(tmp_path)) == ["f.nc", "link.nc"]
