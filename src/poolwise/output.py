"""Output files and printed numbers: checked before the work, written whole or not at all.

Every file poolwise writes (NetCDF results, CSV tables, figures, the HTML report, a data set)
goes through :func:`write_file`: the content goes to a temporary file created next to the
target (in the same folder, so on the same file system) and is renamed into place with
:func:`os.replace`, so an error or Ctrl-C leaves no partial file, and a link at the target is
never followed.  :func:`check_outputs` checks a run's paths before any fitting: each one's
folder can be made and written, nothing at a path is a link or a folder, an existing file is
replaced only with ``overwrite``, and no two outputs share a path.

:func:`number` is how numbers are shown (CLI tables, the report): significant digits, not a
fixed count of decimals, so values in small units keep their digits.  Frames keep every digit.

Standard library only, like :mod:`poolwise.errors`; every layer may use it.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import DataError

__all__ = ["check_output", "check_outputs", "check_folder", "write_file", "write_text", "number"]

_HINT_LINK = "Remove the link, or write to another folder: poolwise never writes through a link."


def _key(path: str) -> str:
    """The path an output will take: absolute, its folder's links resolved (the file's own name
    is not, so that a link there is caught, not followed)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.normcase(os.path.join(os.path.realpath(folder), name))


def check_folder(folder: str | os.PathLike[str], *, option: str | None = None) -> str:
    """Fail unless ``folder`` is a folder that can be written, or can be made in one.

    The nearest existing ancestor of a missing folder must be a folder that can be written
    (``/dev/null/sub`` cannot be made).  Makes nothing."""
    folder = os.fspath(folder) or "."
    probe = os.path.abspath(folder)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.islink(probe) and not os.path.exists(probe):
        raise DataError(f"'{probe}' is a broken link, so '{folder}' cannot be written.", hint=_HINT_LINK,
                        option=option)
    if not os.path.isdir(probe):
        what = "the file" if probe != os.path.abspath(folder) else "a file, not a folder:"
        raise DataError(f"Cannot write into '{folder}': {what} '{probe}' is in the way.",
                        hint="Give a folder that is not a file, nor inside one.", option=option)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"Cannot write into '{folder}': '{probe}' is not writable.",
                        hint="Choose a folder you can write to, or change its permissions.", option=option)
    return folder


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False, option: str | None = None) -> str:
    """Fail before any work unless ``path`` can be written: not a link (even a broken one), not a
    folder, not an existing file unless ``overwrite``, in a folder that can be written."""
    path = os.fspath(path)
    if os.path.islink(path):
        raise DataError(f"'{path}' is a symbolic link; poolwise does not write through it.", hint=_HINT_LINK,
                        option=option)
    if os.path.isdir(path):
        raise DataError(f"'{path}' is a folder, not a file.", hint="Give a file name.", option=option)
    if os.path.lexists(path):
        if not overwrite:
            raise DataError(f"The file '{path}' exists already.", hint="Pass overwrite=True (CLI: --force).",
                            option=option)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise DataError(f"'{path}' is not a regular file; poolwise does not replace it.",
                            hint="Write to another path.", option=option)
    check_folder(os.path.dirname(path) or ".", option=option)
    return path


def check_outputs(paths: Iterable[tuple[str | os.PathLike[str], str | None]], *, overwrite: bool = False) -> list[str]:
    """:func:`check_output` of each ``(path, option)``, and no two the same file."""
    seen: dict[str, str] = {}
    out = []
    for path, option in paths:
        p = check_output(path, overwrite=overwrite, option=option)
        key = _key(p)
        if key in seen:
            raise DataError(f"'{p}' would be written twice in one run (it is also '{seen[key]}').",
                            hint="Give each output its own path.", option=option)
        seen[key] = p
        out.append(p)
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_file(path: str | os.PathLike[str], write: Callable[[str], Any], *, overwrite: bool = False,
               option: str | None = None) -> str:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file in the same
    folder (same extension, so writers that go by it still do), which is then renamed over
    ``path``.  On any error or interrupt the temporary file is removed and nothing at ``path``
    changes.  The folder is made if missing.  Returns ``path``."""
    path = check_output(path, overwrite=overwrite, option=option)
    folder, name = os.path.split(path)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"Cannot make the folder '{folder}': {err.strerror}.",
                            hint="Choose a folder you can write to.", option=option) from None
    stem, ext = os.path.splitext(name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{ext}", dir=folder or ".")
    except OSError as err:
        raise DataError(f"Cannot write into '{folder or '.'}': {err.strerror}.",
                        hint="Choose a folder you can write to.", option=option) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary new file (mkstemp makes it private)
        if os.path.islink(path) or (os.path.lexists(path) and not overwrite):  # appeared while writing
            raise DataError(f"'{path}' appeared while it was being written; it was left as it is.",
                            hint="Write to another path.", option=option)
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"Could not write '{path}': {err.strerror or err}.",
                        hint="Check the disk space and the folder's permissions.", option=option) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False,
               option: str | None = None) -> str:
    """:func:`write_file` of ``text`` (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return write_file(path, write, overwrite=overwrite, option=option)


def number(value: Any, digits: int = 4, *, nan: str = "–") -> str:
    """``value`` to ``digits`` significant digits for display: ``0.0001234`` → ``0.0001234``,
    ``1234.567`` → ``1235`` (the integer part is never cut), ``1.5e-08``, ``3.2e+09``.  Not a
    number: as text; NaN: ``nan``; infinities: ``∞``, ``−∞``."""
    if isinstance(value, bool):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return nan
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag < -5 or mag >= 9:
        return f"{x:.{digits - 1}e}".replace("e-0", "e-").replace("e+0", "e+")
    decimals = max(digits - 1 - mag, 0)
    text = f"{x:.{decimals}f}"
    if text.lstrip("-").rstrip("0").rstrip(".") in ("", "0"):
        return "0"
    if float(text) != 0 and math.floor(math.log10(abs(float(text)))) > mag:  # 9.9996 → 10.000: one decimal too many
        text = f"{x:.{max(decimals - 1, 0)}f}"
    return text

