"""Likelihood families, described declaratively.

A :class:`Family` names its link, its parameters and the support of its outcome, and says
which reductions and inference methods apply.  Mapping a family to NumPyro distributions is
the NUTS path's job (``infer/nuts.py``); nothing here imports JAX.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError

__all__ = ["Family", "FAMILIES", "get_family"]


@dataclass(frozen=True)
class Family:
    """A likelihood family.

    Attributes
    ----------
    name
        ``"gaussian"``.
    link
        Name of the link function (``"identity"``).
    params
        Auxiliary parameters besides the mean (``("sigma",)`` for gaussian).
    support
        ``"real"`` for any finite number.
    exact
        Whether the collapsed (``method="exact"``) and REML paths apply.
    """

    name: str
    link: str
    params: tuple[str, ...]
    support: str
    exact: bool

    def __str__(self) -> str:
        return f"{self.name}(link={self.link})"


FAMILIES: dict[str, Family] = {
    "gaussian": Family("gaussian", "identity", ("sigma",), "real", exact=True),
}


def get_family(family: str | Family) -> Family:
    """Return the :class:`Family` named ``family`` (or ``family`` itself).

    Raises
    ------
    SpecError
        If the name is unknown.
    """
    if isinstance(family, Family):
        return family
    key = str(family).lower()
    if key == "normal":
        key = "gaussian"
    if key not in FAMILIES:
        names = ", ".join(f"'{n}'" for n in FAMILIES)
        raise SpecError(
            f"Unknown family {family!r}.",
            hint=f"Supported families: {names}.",
            option="family",
        )
    return FAMILIES[key]
