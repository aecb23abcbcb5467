"""Compiled NUTS samplers are kept on disk between processes (:mod:`poolwise.infer.compile_cache`).

A fresh process fitting a model that an earlier one fitted (same structure, data shapes and
settings) must find the sampler's programs in JAX's persistent compilation cache instead of
compiling them again.  Checked through JAX's own record of each compilation (its log of cache
hits and misses per program) and the cache's files, not through timing; and a cache folder that
cannot be created must leave a fit as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import poolwise as pw
from poolwise.infer import compile_cache

SRC = str(Path(pw.__file__).resolve().parents[1])  # this copy of poolwise, whatever the working folder

# a small binomial fit (cbpp, one chain, 30 + 30 iterations), reporting which programs JAX found in
# its persistent cache and which it compiled, and a digest of the draws
FIT = r"""
import json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
log = logging.getLogger("jax._src.compiler")
log.setLevel(logging.DEBUG)
log.addHandler(Keep())
log.propagate = False
import poolwise as pw
fit = pw.fit("incidence | trials(size) ~ period + (1 | herd)", pw.datasets.cbpp(), family="binomial",
             method="nuts", chains=1, draws=30, warmup=30, seed=5)
def modules(word):  # JAX's words: "Persistent compilation cache hit for 'jit_f' ...", "... MISS for ..."
    return sorted({m.split("'")[1] for m in records if m.lower().startswith(f"persistent compilation cache {word} for")})
print(json.dumps({"hits": modules("hit"), "misses": modules("miss"),
                  "beta": fit.draws.beta.tolist()}))
"""


def _run(cache: str, tmp_path: Path) -> dict:
    env = {**os.environ, "POOLWISE_CACHE_DIR": cache,
           "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", FIT], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sampler_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("jit_*") if p.name.startswith(("jit_init-", "jit_advance-")))


def test_a_second_process_finds_the_compiled_sampler(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _run(str(cache), tmp_path)
    assert {"jit_init", "jit_advance"} <= set(first["misses"]), first  # compiled, and written
    files = _sampler_files(cache / "jax")
    assert len(files) == 2, files
    everything = sorted(p.name for p in (cache / "jax").iterdir())

    second = _run(str(cache), tmp_path)
    assert {"jit_init", "jit_advance"} <= set(second["hits"]), second  # read, not compiled
    assert not second["misses"], second["misses"]  # nothing at all compiled anew
    assert sorted(p.name for p in (cache / "jax").iterdir()) == everything  # no new entries
    np.testing.assert_array_equal(second["beta"], first["beta"])  # same program, same seed: same draws
    assert not any(tmp_path.glob("jit_*"))  # nothing in the working folder


def test_a_cache_that_cannot_be_written_leaves_the_fit_as_it_was(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    result = _run(str(blocker / "cache"), tmp_path)  # the folder cannot be created under a file
    assert np.isfinite(result["beta"]).all() and np.shape(result["beta"]) == (1, 30, 4)  # period is a factor
    assert not result["hits"] and {"jit_init", "jit_advance"} <= set(result["misses"])  # compiled here
    assert blocker.read_text().startswith("a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_cache_folder() -> None:
    home = Path(os.path.expanduser("~"))
    assert compile_cache.cache_root({}) == home / ".cache" / "poolwise"
    assert compile_cache.cache_root({"XDG_CACHE_HOME": "/var/cache/me"}) == Path("/var/cache/me/poolwise")
    # a relative XDG_CACHE_HOME is ignored, as the XDG specification asks: never the working folder
    assert compile_cache.cache_root({"XDG_CACHE_HOME": "cache"}) == home / ".cache" / "poolwise"
    assert compile_cache.cache_root({"POOLWISE_CACHE_DIR": "/tmp/pw", "XDG_CACHE_HOME": "/x"}) == Path("/tmp/pw")
    assert compile_cache.cache_root({"POOLWISE_CACHE_DIR": "~/pw"}) == home / "pw"
    assert compile_cache.cache_root({"POOLWISE_CACHE_DIR": "off"}) is None
