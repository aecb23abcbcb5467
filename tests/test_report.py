"""The HTML report: self-contained, never overwriting, written by the CLI, and rendered in a real browser."""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import poolwise as pw
from poolwise import plots
from poolwise.cli import app
from poolwise.errors import DataError
from poolwise.output import number
from poolwise.report import write_report

FORMULA = "reaction ~ night + (1 | driver)"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: group labels with markup in them: the report must show them as text
ODD = "<i>{}</i> & co"


@pytest.fixture(scope="module")
def cmp() -> pw.Comparison:
    df = pw.datasets.drivers(12, seed=1)
    df["driver"] = [ODD.format(d) for d in df["driver"]]
    return pw.compare(FORMULA, df, seed=0, draws=200)


@pytest.fixture(scope="module")
def report(cmp: pw.Comparison, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert cmp.report(path) == os.fspath(path)
    return path


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    # nothing is loaded from elsewhere: every src/href is an anchor in the page
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", text)
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]
    assert not re.search(r"url\(\s*['\"]?(?:https?:|//)", text)
    # one inline SVG per figure, ids unique in the document
    assert text.count("<figure") == text.count("<svg") >= 6
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_report_holds_the_comparison(cmp: pw.Comparison, report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    rec = cmp.recommend()
    head = html.escape(str(rec).splitlines()[0])
    assert head in text and text.index(head) < text.index("<figure")  # the recommendation comes first
    for reason in rec.reasons:
        assert html.escape(reason) in text
    for sid in ("recommendation", "groups", "prediction", "ppc", "population", "model", "priors", "data",
                "diagnostics"):
        assert f'id="{sid}"' in text
    # every label escaped, none raw
    assert "<i>D01</i>" not in text and html.escape(ODD.format("D01")) in text
    # the numbers of the tables
    for pooling, row in cmp.logo().iterrows():  # to significant digits
        assert f">{number(row['elpd_logo'])}<" in text
    for pooling, row in cmp.loo().iterrows():
        assert f">{number(row['elpd_loo'])}<" in text
    for f in cmp.fits.values():
        for prior in f.priors["prior"]:
            assert html.escape(str(prior)) in text
    summary = cmp.data_summary()
    assert f"{summary['n_obs']} rows" in text and summary["groups"][0]["n_groups"] == 12
    assert html.escape(FORMULA) in text and "gaussian(link=identity)" in text
    assert "none possible" in text  # the exact path's divergences
    # the LOGO panel draws the LOGO table
    d = plots.loo_data(cmp, criterion="logo")
    assert d["poolings"] == list(cmp.logo().index)


def test_overwrite_refused(cmp: pw.Comparison, report: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = report.read_bytes()
    with pytest.raises(DataError, match=re.escape(f"'{report}' exists already")) as err:
        cmp.report(report)
    assert "overwrite=True" in str(err.value)
    assert report.read_bytes() == before
    with pytest.raises(DataError, match="is a folder"):
        write_report(cmp, tmp_path)
    # writing itself (the rendering is tested above): a missing folder is made, overwrite=True replaces
    import poolwise.report as report_module

    monkeypatch.setattr(report_module, "render_report", lambda c, **kw: "<!DOCTYPE html><p>new</p>")
    new = tmp_path / "sub" / "new.html"
    assert write_report(cmp, new) == os.fspath(new) and new.read_text(encoding="utf-8").endswith("new</p>")
    old = tmp_path / "old.html"
    shutil.copy(report, old)
    assert cmp.report(old, overwrite=True) == os.fspath(old)
    assert old.read_text(encoding="utf-8") == "<!DOCTYPE html><p>new</p>"


# -- the command line -------------------------------------------------------------------------


def run(*args: object):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_cli_report_writes_and_refuses_an_existing_file(tmp_path: Path) -> None:
    csv = tmp_path / "drivers.csv"
    pw.datasets.drivers(10, seed=3).to_csv(csv, index=False)
    target = tmp_path / "out" / "report.html"
    r = run("compare", csv, "-f", FORMULA, "--draws", "200", "--chains", "2", "--report", target)
    assert r.exit_code == 0, r.output
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "Recommendation:" in r.stdout and str(target) in r.stdout
    before = target.read_bytes()
    r = run("compare", csv, "-f", FORMULA, "--report", target)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {target} exists already") and "--force" in r.stderr
    assert r.stdout == ""  # refused before any fitting
    assert target.read_bytes() == before
    r = run("compare", csv, "-f", FORMULA, "--report", tmp_path)
    assert r.exit_code == 2 and "is a folder" in r.stderr


# -- in a real browser ------------------------------------------------------------------------


def _browser_or_skip() -> object:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package; `make test` installs it when it can)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    return sync_playwright


def test_report_renders_in_chromium(cmp: pw.Comparison, report: Path, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    url = report.resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    blocked: list[str] = []

    def guard(route, request) -> None:  # noqa: ANN001 - playwright's Route and Request
        if request.url.startswith("file://"):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    with sync_playwright() as p:  # type: ignore[operator]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 768})  # a laptop screen
            context.route("**/*", guard)
            page = context.new_page()
            page.on("request", lambda req: requests.append(req.url))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.goto(url, wait_until="load")

            assert errors == []
            assert blocked == [] and requests and all(u.startswith("file://") for u in requests), requests
            svgs = page.locator("figure svg")
            assert svgs.count() == page.locator("svg").count() == page.locator("figure").count() >= 6
            for i in range(svgs.count()):
                box = svgs.nth(i).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50, (i, box)
            # the recommendation, on the first screen
            head = str(cmp.recommend()).splitlines()[0]
            choice = page.locator("#recommendation .choice")
            assert choice.inner_text().strip() == head
            box = choice.bounding_box()
            assert box is not None and box["y"] + box["height"] < 768
            # fits the screen: no horizontal scrolling
            assert page.evaluate("document.documentElement.scrollWidth") <= 1366
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"screenshot of the report: {shot}")
            # and it prints: figures keep their size on paper
            page.emulate_media(media="print")
            for i in range(svgs.count()):
                box = svgs.nth(i).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50, (i, box)
            pdf = tmp_path / "report.pdf"
            page.pdf(path=str(pdf), format="A4")
            assert pdf.stat().st_size > 10_000
            assert errors == [] and blocked == []
        finally:
            browser.close()
