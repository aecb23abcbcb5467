"""The exception and warning types users see.

One root class, :class:`PoolwiseError`, and a handful of kinds, each refining the builtin it
resembles (``ValueError``, ``KeyError``) so that existing ``except`` clauses keep working.
Every error carries what is wrong (the message), where (``column``, ``rows``, ``option``) and
how to mend it (``hint``); ``str(err)`` is the one- or two-line text the CLI prints.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "PoolwiseError",
    "DataError",
    "FormulaError",
    "SpecError",
    "PriorError",
    "ConvergenceWarning",
    "PoolwiseWarning",
    "format_rows",
]


def format_rows(rows: Sequence[int], limit: int = 5) -> str:
    """Return ``"rows 17, 204, 611"`` (first ``limit`` of them, with "…" when there are more)."""
    rows = list(rows)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = ", …" if len(rows) > limit else ""
    return f"row{'s' if len(rows) != 1 else ''} {shown}{more}"


class PoolwiseError(Exception):
    """Root of every error poolwise raises on purpose.

    Parameters
    ----------
    message
        What is wrong, in one sentence.
    hint
        How to mend it, in one sentence (appended to the message).
    column, rows, option
        Where the fault is: a column name, the (0-based) row numbers, an option name.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        column: str | None = None,
        rows: Sequence[int] | None = None,
        option: str | None = None,
    ) -> None:
        self.message = message
        self.hint = hint
        self.column = column
        self.rows = list(rows) if rows is not None else None
        self.option = option
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class DataError(PoolwiseError, ValueError):
    """The data cannot be used as given: missing columns, bad values, too few groups."""


class FormulaError(PoolwiseError, ValueError):
    """The formula cannot be parsed or names something the data lack."""


class SpecError(PoolwiseError, ValueError):
    """An option of the model (pooling, method, family, …) is invalid or unsupported."""


class PriorError(PoolwiseError, ValueError):
    """A prior is unknown, malformed or has invalid arguments."""


class PoolwiseWarning(UserWarning):
    """Root of poolwise's warnings."""


class ConvergenceWarning(PoolwiseWarning):
    """Sampling finished but its diagnostics (divergences, R-hat, ESS) call for care."""
