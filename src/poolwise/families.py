"""Likelihood families, described declaratively.

A :class:`Family` names its link, its auxiliary parameters and the support of its outcome, and
says whether the collapsed (exact) path applies.  Mapping a family to NumPyro distributions is
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
        ``"gaussian"``, ``"student_t"``, ``"bernoulli"``, ``"binomial"``, ``"poisson"`` or
        ``"negative_binomial"``.
    link
        Name of the link function: ``"identity"``, ``"logit"`` or ``"log"``.
    params
        Auxiliary parameters besides the mean (``("sigma",)`` for gaussian).
    support
        ``"real"`` (finite numbers), ``"binary"`` (0/1), ``"count"`` (non-negative integers) or
        ``"trials"`` (integers from 0 to the number of trials).
    exact
        Whether the collapsed (``method="exact"``) path applies.
    """

    name: str
    link: str
    params: tuple[str, ...]
    support: str
    exact: bool = False

    @property
    def needs_trials(self) -> bool:
        """Whether the formula must name the number of trials, ``y | trials(n) ~ …``."""
        return self.support == "trials"

    @property
    def identity(self) -> bool:
        return self.link == "identity"

    def __str__(self) -> str:
        return f"{self.name}(link={self.link})"


FAMILIES: dict[str, Family] = {
    "gaussian": Family("gaussian", "identity", ("sigma",), "real", exact=True),
    "student_t": Family("student_t", "identity", ("sigma", "nu"), "real"),
    "bernoulli": Family("bernoulli", "logit", (), "binary"),
    "binomial": Family("binomial", "logit", (), "trials"),
    "poisson": Family("poisson", "log", (), "count"),
    "negative_binomial": Family("negative_binomial", "log", ("phi",), "count"),
}
_ALIASES = {"normal": "gaussian", "t": "student_t", "studentt": "student_t", "logistic": "bernoulli",
            "negbinomial": "negative_binomial", "negbin": "negative_binomial"}


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
    key = _ALIASES.get(key, key)
    if key not in FAMILIES:
        names = ", ".join(f"'{n}'" for n in FAMILIES)
        raise SpecError(f"Unknown family {family!r}.", hint=f"Supported families: {names}.", option="family")
    return FAMILIES[key]
