"""Compiled programs kept on disk between processes, so that a fresh process does not wait for XLA.

This module owns where poolwise keeps what JAX compiles: JAX's persistent compilation cache
(every program JAX compiles, keyed by JAX on the lowered program, so that a fresh process finds
the NUTS sampler of a model it fitted before, of the same data shapes and settings, compiled) is
pointed at ``<cache>/jax``, unless the user configured one already (``JAX_COMPILATION_CACHE_DIR``
or ``jax.config``).  A fresh process still traces and lowers the model (about a second); XLA's
compilation (tens of seconds for NUTS) is what the cache saves.

``<cache>`` is ``$POOLWISE_CACHE_DIR`` when set (``off`` turns the cache off), else
``$XDG_CACHE_HOME/poolwise`` (an absolute path, as the XDG specification asks), else
``~/.cache/poolwise``; never the working directory.  A cache that cannot be created or written
leaves fits as they were, compiling in each process, with a debug note in the log
(``logging.getLogger("poolwise.infer.compile_cache")``).

The cache holds executables, loaded as they are: the folder must be writable by its owner only
(it is created with mode 0700).  Its size is bounded (:data:`MAX_BYTES`, least recently used out)
when the ``filelock`` package is installed, as JAX requires for that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import jax

__all__ = ["cache_root", "configure", "ENV", "MAX_BYTES"]

#: environment variable naming the cache folder (``off``: no cache)
ENV = "POOLWISE_CACHE_DIR"
#: size of the cache past which JAX deletes the least recently used entries (with ``filelock``)
MAX_BYTES = 1 << 30
_log = logging.getLogger(__name__)
_state: dict[str, Any] = {"configured": False}


def cache_root(environ: dict[str, str] | None = None) -> Path | None:
    """The cache folder poolwise uses, or ``None`` when ``$POOLWISE_CACHE_DIR`` is ``off``.

    ``$POOLWISE_CACHE_DIR``, else ``$XDG_CACHE_HOME/poolwise`` when that is an absolute path,
    else ``~/.cache/poolwise``.
    """
    env = os.environ if environ is None else environ
    chosen = env.get(ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(os.path.abspath(os.path.expanduser(chosen)))
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "poolwise"
    return Path(os.path.expanduser("~")) / ".cache" / "poolwise"


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists (created, mode 0700, if need be) and a file can be written in it."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError as err:
        _log.debug("compiled programs are not cached: %s is not writable (%s)", folder, err)
        return False


def configure() -> None:
    """Point JAX's persistent compilation cache at ``<cache>/jax`` (once per process; called where
    poolwise first imports JAX, before anything is compiled).

    Leaves JAX's cache alone when the user set one; leaves it off when the folder cannot be
    written."""
    if _state["configured"]:
        return
    _state["configured"] = True
    root = cache_root()
    if root is None:
        return
    user_set = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if user_set or not _writable(root / "jax"):
        return
    try:
        jax.config.update("jax_compilation_cache_dir", str(root / "jax"))
        # every program: the small ones NumPyro and the data conversion compile add up to a
        # second or more in a fresh process, and each costs a file read once cached
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        if importlib.util.find_spec("filelock") is not None:  # JAX bounds its cache's size only with filelock
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except Exception as err:  # an older or newer JAX without one of these options: no JAX cache
        _log.debug("JAX's persistent compilation cache is not used: %s", err)
