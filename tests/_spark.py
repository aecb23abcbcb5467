"""The tests' one local SparkSession: small data on a small machine.

A JVM that compiles less (C1 only, serial GC; the session starts about twice as fast) and
interpreted expressions (compiling each query's code costs more than running it on a few
thousand rows); the SQL and its results are the same.  Skipped, with the reason, without
pyspark or Java.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest


def spark_session() -> Iterator[Any]:
    """Yield the session (use as ``yield from spark_session()`` in a fixture); stopped after."""
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[test]')")
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("Spark needs Java 17 (no java on PATH and no JAVA_HOME)")
    from pyspark.sql import SparkSession

    # SparkContext replaces Python's SIGINT handler with one that cancels its jobs through the JVM;
    # once the session is stopped that call hangs, and a later Ctrl-C test in this process with it
    sigint = signal.getsignal(signal.SIGINT)
    session = (SparkSession.builder.master("local[2]").appName("poolwise-tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
               .config("spark.sql.shuffle.partitions", "1").config("spark.sql.adaptive.enabled", "false")
               .config("spark.sql.codegen.wholeStage", "false").config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
               .getOrCreate())
    session.sparkContext.setLogLevel("OFF")
    signal.signal(signal.SIGINT, sigint)
    try:
        yield session
    finally:
        session.stop()
        signal.signal(signal.SIGINT, sigint)
