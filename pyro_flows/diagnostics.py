"""Checking a variational posterior: ArviZ export, PSIS k-hat, MCMC comparison.

Three questions about a fitted guide ``q`` for a model ``p``:

* what does it say? :func:`to_inference_data` draws from it into an
  :class:`arviz.InferenceData`, ready for ``arviz.summary`` and plots;
* can it be trusted? :func:`psis_khat` fits a generalized Pareto tail to the
  importance weights ``p(x, z) / q(z)`` (Yao et al. 2018);
* does it agree with a gold standard? :func:`compare_with_mcmc` tabulates
  posterior means and standard deviations against an MCMC run.

They target continuous posteriors, the ones a flow guide or NUTS can
represent, and raise :class:`ValueError` for discrete latent sites.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro_flows.diagnostics import psis_khat, to_inference_data
    >>> def model():
    ...     pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> pyro.set_rng_seed(0)
    >>> idata = to_inference_data(model, model, num_samples=200)  # guide = posterior
    >>> dict(idata.posterior["theta"].sizes)
    {'chain': 1, 'draw': 200, 'theta_dim_0': 2}
    >>> psis_khat(model, model, num_samples=200) < 0.5
    True
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import arviz
import numpy as np
import pandas as pd
import torch
from pyro import poutine
from pyro.infer import MCMC
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites

from pyro_flows.infer.iwae import importance_log_weights, importance_sample

__all__ = ["compare_with_mcmc", "psis_khat", "tail_khat", "to_inference_data"]

_COLUMNS = ["mean_vi", "sd_vi", "mean_mcmc", "sd_mcmc", "std_mean_error", "sd_ratio"]


def _check_continuous(trace: Trace) -> None:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"latent site {name!r} is discrete ({type(site['fn']).__name__}); "
                    "these diagnostics need continuous latents (marginalize it out, "
                    "e.g. with enumeration, before comparing with NUTS)"
                )


def _one_trace(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Trace:
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    return prune_subsample_sites(model_trace)


def _dim_names(name: str, site: dict) -> list[str]:
    """Plate names for the dims plates span, ``{name}_dim_{i}`` for the rest."""
    shape = site["value"].shape
    batch_ndim = len(shape) - site["fn"].event_dim
    plates = {
        f.dim + batch_ndim: f
        for f in site["cond_indep_stack"]
        if f.vectorized and -batch_ndim <= f.dim < 0
    }
    names = []
    for i, size in enumerate(shape):
        frame = plates.get(i)
        # A subsampled plate spans fewer points than its size: naming that dim
        # after the plate would clash with the plate's full-size coords.
        if frame is not None and frame.size == size and frame.name not in ("chain", "draw"):
            names.append(frame.name)
        else:
            names.append(f"{name}_dim_{i}")
    return names


def to_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    batch_size: int | None = None,
    **kwargs: Any,
) -> arviz.InferenceData:
    """Draw the guide's posterior into an :class:`arviz.InferenceData`.

    :param model: Pyro model, called as ``model(*args, **kwargs)``.
    :param guide: its guide, same signature.
    :param num_samples: number of draws.
    :param batch_size: draws per batched run, see
        :func:`~pyro_flows.infer.iwae.importance_log_weights`.
    :return: ``InferenceData`` with

        * ``posterior``: one variable per latent site, dims
          ``(chain, draw, *site_dims)`` with one chain and ``num_samples``
          draws; a dim spanned by a ``pyro.plate`` is named after the plate,
          any other dim ``{site}_dim_{i}``; every dim has integer coords;
        * ``sample_stats``: ``log_weight`` of shape ``(chain, draw)``, the
          importance log-weight ``log p(x, z) - log q(z)`` of each draw (use
          it for PSIS or to reweight the draws towards the exact posterior).
    :raises ValueError: for discrete or missing latent sites, or non-finite
        log-weights.

    Example::

        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("groups", 3):
        ...         pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> idata = to_inference_data(model, model, num_samples=50)
        >>> idata.posterior["mu"].dims, idata.sample_stats["log_weight"].shape
        (('chain', 'draw', 'groups'), (1, 50))
    """
    _check_continuous(_one_trace(model, guide, args, kwargs))
    draws = importance_sample(
        model, guide, *args, num_samples=num_samples, batch_size=batch_size, **kwargs
    )
    posterior, dims, coords = {}, {}, {}
    for name, value in draws.samples.items():
        site = draws.trace.nodes[name]
        posterior[name] = value.detach().cpu().numpy()[None]
        dims[name] = _dim_names(name, site)
        for dim, size in zip(dims[name], site["value"].shape):
            coords[dim] = np.arange(size)
    log_weight = draws.log_weights.detach().cpu().numpy()[None]
    return arviz.from_dict(
        posterior=posterior,
        sample_stats={"log_weight": log_weight},
        coords=coords,
        dims=dims,
        posterior_attrs={"inference_library": "pyro", "inference_method": "variational"},
    )


def psis_khat(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    batch_size: int | None = None,
    **kwargs: Any,
) -> float:
    """Pareto k-hat of the importance weights ``p(x, z) / q(z)``, ``z ~ q``.

    The estimated shape of the weights' generalized Pareto tail (Pyro's
    :func:`~pyro.infer.importance.psis_diagnostic` estimate, :func:`tail_khat`) judges how well the guide covers the posterior
    (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?: Evaluating
    variational inference"):

    * ``k < 0.5``: the guide is close to the posterior; importance-sampling
      estimates converge quickly;
    * ``0.5 <= k < 0.7``: usable, but PSIS reweighting is advisable;
    * ``k >= 0.7``: the guide misses posterior mass (typically too narrow or
      badly placed); do not trust its estimates.

    The estimate is noisy: use at least a few hundred draws.  Log-weights
    that are constant to rounding error (the guide is the exact posterior)
    have no tail to fit and give ``-inf``; a tail too short to fit gives
    ``inf`` with a warning.

    :param num_samples: number of draws from the guide.
    :param batch_size: draws per batched run.
    :return: k-hat as a Python float.
    :raises ValueError: for discrete, missing or no latent sites, or
        non-finite log-weights.

    Example::

        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> narrow = lambda: pyro.sample("z", dist.Normal(0.0, 0.1))
        >>> psis_khat(model, narrow, num_samples=1000) > 0.7
        True
    """
    _check_continuous(_one_trace(model, guide, args, kwargs))
    log_weights = importance_log_weights(
        model, guide, *args, num_samples=num_samples, batch_size=batch_size, **kwargs
    )
    spread = float(log_weights.max() - log_weights.min())
    scale = max(1.0, float(log_weights.abs().max()))
    if spread <= 64 * torch.finfo(log_weights.dtype).eps * scale:
        # Constant weights (q equals the posterior) leave no tail to fit, which Pyro's
        # estimate reports as inf, the verdict for the worst guides.
        return -math.inf
    khat = tail_khat(log_weights)
    if not math.isfinite(khat):
        warnings.warn(
            f"k-hat could not be estimated from {num_samples} draws (too few distinct "
            "weights in the tail); increase num_samples",
            RuntimeWarning,
            stacklevel=2,
        )
    return khat


def tail_khat(log_weights: torch.Tensor) -> float:
    """The generalized Pareto shape of the largest importance weights, as
    :func:`pyro.infer.importance.psis_diagnostic` estimates it from its own draws: the
    ``min(S / 5, 3 sqrt(S))`` largest of ``S`` weights (Vehtari et al., "Pareto smoothed
    importance sampling", 2015/2024), fitted by :func:`pyro.ops.stats.fit_generalized_pareto`.
    ``inf`` when fewer than 10 weights lie in the tail.

    :param log_weights: ``(S,)`` log importance weights.

    >>> import torch  # weights u^-0.8, u ~ U(0, 1): a Pareto tail of shape 0.8
    >>> u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    >>> round(tail_khat(-0.8 * u.log()), 1)
    0.8
    """
    lw = log_weights.detach().double().flatten()
    lw = torch.sort(lw - lw.max()).values
    tail_size = math.ceil(min(0.2 * len(lw), 3.0 * math.sqrt(len(lw))))
    cutoff = max(math.log(1e-15), float(lw[-tail_size - 1]))
    tail = lw[lw > cutoff]
    if len(tail) < 10:
        return math.inf
    return float(fit_generalized_pareto(tail.exp() - math.exp(cutoff))[0])


def _posterior_arrays(source: MCMC | arviz.InferenceData) -> dict[str, np.ndarray]:
    """Variable name -> ``(chain, draw, *shape)`` array."""
    if isinstance(source, MCMC):
        samples = source.get_samples(group_by_chain=True)
        return {name: value.detach().cpu().numpy() for name, value in samples.items()}
    if isinstance(source, arviz.InferenceData):
        if "posterior" not in source.groups():
            raise ValueError("InferenceData has no posterior group")
        return {name: var.values for name, var in source.posterior.data_vars.items()}
    raise TypeError(
        f"expected pyro.infer.MCMC or arviz.InferenceData, got {type(source).__name__}"
    )


def _label(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{','.join(map(str, index))}]" if index else name


def compare_with_mcmc(
    idata_vi: arviz.InferenceData, mcmc_or_idata: MCMC | arviz.InferenceData
) -> pd.DataFrame:
    """Tabulate per-parameter posterior moments of VI against MCMC.

    Every variable of ``idata_vi.posterior`` must also be in the MCMC
    posterior (extra MCMC variables are ignored) with the same per-draw shape.
    Vector sites are expanded per element and labelled ``theta[0]``,
    ``w[1,2]``, ...; scalars keep their name.  Moments pool chains and draws;
    standard deviations use ``ddof=1``.

    :param idata_vi: e.g. from :func:`to_inference_data`.
    :param mcmc_or_idata: a :class:`pyro.infer.MCMC` that has been run, or an
        :class:`arviz.InferenceData` with a ``posterior`` group.
    :return: DataFrame indexed by ``parameter`` with columns ``mean_vi``,
        ``sd_vi``, ``mean_mcmc``, ``sd_mcmc``, ``std_mean_error`` =
        ``(mean_vi - mean_mcmc) / sd_mcmc`` (the mean's error in posterior
        standard deviations) and ``sd_ratio`` = ``sd_vi / sd_mcmc`` (below 1:
        VI is overconfident).

    Example::

        >>> import arviz, numpy as np
        >>> vi = arviz.from_dict(posterior={"mu": np.array([[0.0, 2.0]])})
        >>> mc = arviz.from_dict(posterior={"mu": np.array([[0.0, 4.0]])})
        >>> row = compare_with_mcmc(vi, mc).loc["mu"]
        >>> [round(float(row[c]), 3) for c in ("std_mean_error", "sd_ratio")]
        [-0.354, 0.5]
    """
    vi = _posterior_arrays(idata_vi)
    mcmc = _posterior_arrays(mcmc_or_idata)
    missing = [name for name in vi if name not in mcmc]
    if missing:
        raise ValueError(f"variables {missing} of the VI posterior are not in the MCMC one")
    for name, draws_vi in vi.items():
        if draws_vi.shape[2:] != mcmc[name].shape[2:]:
            raise ValueError(
                f"variable {name!r} has per-draw shape {draws_vi.shape[2:]} in VI but "
                f"{mcmc[name].shape[2:]} in MCMC"
            )
    rows: dict[str, list[float]] = {}
    for name, draws_vi in vi.items():
        shape = draws_vi.shape[2:]
        flat_vi = draws_vi.reshape(-1, *shape)
        flat_mcmc = mcmc[name].reshape(-1, *shape)
        for index in np.ndindex(*shape):
            a, b = flat_vi[(slice(None),) + index], flat_mcmc[(slice(None),) + index]
            mean_vi, sd_vi = a.mean(), a.std(ddof=1)
            mean_mcmc, sd_mcmc = b.mean(), b.std(ddof=1)
            # A constant MCMC chain gives inf/nan ratios, which is the honest answer.
            with np.errstate(divide="ignore", invalid="ignore"):
                errors = [(mean_vi - mean_mcmc) / sd_mcmc, sd_vi / sd_mcmc]
            rows[_label(name, index)] = [
                float(v) for v in (mean_vi, sd_vi, mean_mcmc, sd_mcmc, *errors)
            ]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=_COLUMNS)
    table.index.name = "parameter"
    return table
