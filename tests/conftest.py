"""Hypothesis profiles: ``make test`` draws the same examples every run (derandomized, so a
submission's CI cannot fail on a new random draw); ``HYPOTHESIS_PROFILE=explore`` draws new ones
(and more of them) when hunting for failures by hand."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import settings

# compiled programs go to a folder of this test session, not the user's cache (and subprocesses,
# such as the CLI's, inherit it); set POOLWISE_CACHE_DIR to keep them between sessions
if "POOLWISE_CACHE_DIR" not in os.environ:
    os.environ["POOLWISE_CACHE_DIR"] = tempfile.mkdtemp(prefix="poolwise-test-cache-")
    atexit.register(shutil.rmtree, os.environ["POOLWISE_CACHE_DIR"], ignore_errors=True)

# `make test` runs two workers on a 2-core machine: NUTS's chains in parallel (a CPU device each, which
# importing poolwise asks XLA for) would put 8 threads on 2 cores.  Two devices per worker: a 2-chain fit
# still runs in parallel (tests/infer/test_nuts.py checks it draws as the vectorized chains), 4-chain
# fits vectorize as a one-core worker should.  A user's (or CI's) XLA_FLAGS count is kept.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

settings.register_profile("repeatable", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
