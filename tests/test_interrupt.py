"""Ctrl-C during a NUTS fit: the library raises KeyboardInterrupt, the command exits 130, nothing
is written.

The run is compiled once and then sampled in one call into XLA, during which Python runs no
signal handler; both tests send SIGINT once sampling has begun (the progress stage named after
the compile) and time how long the stop takes.  Each fit would take well over 10 s if it ran on.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.infer import nuts

#: seconds allowed between SIGINT and the stop (the sampler looks every few iterations)
STOP_WITHIN = 5.0
#: a logistic model on rows: each iteration costs milliseconds, so 20,000 of them take > 10 s
ROWS, DRAWS = 20_000, 10_000
SAMPLING = "warmup+sampling ("  # the stage reported once the sampler is compiled


@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Python's own SIGINT handler while each test runs: an earlier test in the same process may have
    left another one (SparkContext, created by the CLI's --engine spark, installs one that cancels
    its jobs through the JVM and hangs once the session has stopped)."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    g = rng.integers(0, 8, ROWS)
    x = rng.normal(size=ROWS)
    p = 1 / (1 + np.exp(-(0.3 * x + rng.normal(size=8)[g])))
    return pd.DataFrame({"y": (rng.random(ROWS) < p).astype(int), "x": x, "g": [f"g{j}" for j in g]})


def test_library_raises_keyboard_interrupt() -> None:
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.perf_counter())
        signal.raise_signal(signal.SIGINT)

    timers: list[threading.Timer] = []

    def progress(stage: str, fraction: float) -> None:  # called after every call of the sampler: one timer
        if stage.startswith(SAMPLING) and not timers:
            timers.append(threading.Timer(0.5, interrupt))
            timers[0].start()

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        pw.fit("y ~ x + (1 | g)", _frame(), family="bernoulli", method="nuts", chains=2, draws=DRAWS,
               warmup=DRAWS, progress=progress)
    stopped = time.perf_counter()
    assert sent, f"sampling never started ({stopped - t0:.1f} s)"
    assert stopped - sent[0] < STOP_WITHIN
    assert not any(t.name == "poolwise-nuts" for t in threading.enumerate())  # the run was abandoned, not left behind
    assert not nuts._CANCEL.is_set()


def test_cli_exits_130_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    _frame().to_csv(data, index=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "poolwise", "fit", str(data), "-f", "y ~ x + (1 | g)", "--family", "bernoulli",
           "--method", "nuts", "--chains", "2", "--draws", str(DRAWS), "--warmup", str(DRAWS), "--out", str(out)]
    src = str(Path(pw.__file__).resolve().parents[1])  # this copy of poolwise, whatever the working folder
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    master, slave = pty.openpty()  # stderr on a terminal: the progress bar names the stage
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env,
                            cwd=tmp_path)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 600
        while SAMPLING.encode() not in seen:
            assert proc.poll() is None, f"exited {proc.returncode} before sampling: {seen[-2000:]!r}"
            assert time.monotonic() < deadline, f"sampling never started: {seen[-2000:]!r}"
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        time.sleep(1.0)
        assert proc.poll() is None, "the fit ended before the signal"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        while proc.poll() is None and time.monotonic() - sent < 60:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    pass
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    assert proc.returncode == 130, seen[-2000:]
    assert took < STOP_WITHIN
    assert b"Traceback" not in seen and b"interrupted" in seen
    left = sorted(p.name for p in tmp_path.rglob("*") if p != data)
    assert left in ([], ["out"]) and not (out.exists() and any(out.iterdir())), left


def test_exact_path_hyperparameter_nuts_raises_keyboard_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact path's NUTS on the collapsed marginal (its fallback, or ``hyper="nuts"``) stops too.

    Sleepstudy's slopes model, 4 chains × 400,000 draws: a run of minutes; SIGINT once sampling
    has begun (the sampler's first look for an interrupt: compiling cannot be stopped) must stop it
    within a few seconds."""
    from poolwise.infer import collapsed

    df = pw.datasets.sleepstudy()
    y, days = df["Reaction"].to_numpy(float), df["Days"].to_numpy(float)
    g = df["Subject"].astype("category").cat.codes.to_numpy()
    X = np.c_[np.ones(y.size), days]
    sy = float(y.std(ddof=1))
    st = collapsed.block_stats(y, X, X, None, g, int(g.max()) + 1)
    priors = {"m0": np.array([y.mean(), 0.0]), "s0": np.array([10.0 * sy, 2.5 * sy / days.std(ddof=1)]),
              "sigma_prior": pw.priors.Prior("exponential", (1.0 / sy,)),
              "sd_priors": [pw.priors.Prior("half_student_t", (3.0, 2.5 * sy))] * 2, "lkj_eta": 2.0}
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.perf_counter())
        signal.raise_signal(signal.SIGINT)

    looked = nuts._check_cancel
    timer = threading.Timer(0.5, interrupt)

    def first_look() -> None:  # sampling has begun: interrupt half a second later
        if not timer.is_alive() and not sent:
            timer.start()
        looked()

    monkeypatch.setattr(nuts, "_check_cancel", first_look)
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            collapsed.sample(st, has_sigma=True, seed=0, chains=4, draws=400_000, warmup=1000, hyper="nuts",
                             **priors)
    finally:
        timer.cancel()
    stopped = time.perf_counter()
    assert sent, f"the run ended before the signal ({stopped - t0:.1f} s)"
    assert stopped - sent[0] < STOP_WITHIN
