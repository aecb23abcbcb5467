"""Hypothesis profiles: ``make test`` draws the same examples every run (derandomized, so a
submission's CI cannot fail on a new random draw); ``HYPOTHESIS_PROFILE=explore`` draws new ones
(and more of them) when hunting for failures by hand."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
