"""Importance-weighted estimates of the log marginal likelihood.

For a model :math:`p(x, z)` and a guide :math:`q(z)`, the IWAE bound with :math:`K` draws
:math:`z_k \\sim q` is :math:`\\log \\frac{1}{K} \\sum_k p(x, z_k) / q(z_k) \\le \\log p(x)`: an
ELBO for :math:`K = 1`, tighter as :math:`K` grows, exact when :math:`q` is the posterior (Burda
et al. 2016). Any Pyro model/guide pair works; scales, masks and subsampling apply as in Pyro's
ELBOs, and guide-only auxiliary sites count in the guide term.

Built on Pyro's :func:`~pyro.infer.enum.get_importance_trace` and
:func:`~pyro.infer.importance.vectorized_importance_weights`, adding what they lack: chunks of
draws combined by a running logsumexp (bounded memory), per-datapoint bounds for amortized
guides (``per_datapoint_plate``), one run per draw for models that cannot broadcast over the
draws, and errors that name the problem. Everything runs under :func:`torch.no_grad`::

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro_flows.infer.iwae import iwae_log_likelihood
    >>> def model(x):
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior N(sum(x) / (n + 1), 1 / (n + 1))
    ...     n = len(x)
    ...     pyro.sample("z", dist.Normal(x.sum() / (n + 1), (n + 1) ** -0.5))
    >>> x = torch.tensor([0.5, 1.5])
    >>> exact = dist.MultivariateNormal(torch.zeros(2), torch.eye(2) + 1).log_prob(x)
    >>> bound = iwae_log_likelihood(model, guide, x, num_samples=100)
    >>> bool(torch.isclose(bound, exact, atol=1e-4))
    True
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import torch
from pyro.infer.enum import get_importance_trace
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.trace_struct import Trace

__all__ = [
    "ImportanceSamples", "importance_log_weights", "importance_sample", "iwae_log_likelihood"
]

# Pyro's name for the plate over draws in vectorized_importance_weights.
_PARTICLE_PLATE = "num_particles_vectorized"

_Chunk = tuple[torch.Tensor, dict[str, torch.Tensor]]


class ImportanceSamples(NamedTuple):
    """Draws from a guide together with their importance log-weights.

    :ivar log_weights: ``(num_samples,)`` tensor of ``log p(x, z) - log q(z)``.
    :ivar samples: latent site name -> ``(num_samples, *site_shape)`` tensor,
        ``site_shape`` being the value's shape in a single (unbatched) run.
    :ivar trace: one unbatched model trace replayed against the guide; it
        describes each site's shape, distribution and enclosing plates.
    """

    log_weights: torch.Tensor
    samples: dict[str, torch.Tensor]
    trace: Trace


class _Program(NamedTuple):
    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict


class _Layout(NamedTuple):
    """Static facts about a model/guide pair, read off one unbatched run."""

    max_plate_nesting: int
    latent_shapes: dict[str, torch.Size]
    plate: str | None  # the per-datapoint plate's name
    plate_size: int | None
    trace: Trace


class _LayoutChanged(RuntimeError):
    """A batched run disagrees with the unbatched one: it cannot be trusted."""


def _trace_pair(program: _Program, max_plate_nesting: float = math.inf) -> tuple[Trace, Trace]:
    """One model trace replayed against one guide trace, subsample sites pruned, log-probs
    computed (Pyro's ELBOs' own tracing)."""
    return get_importance_trace("flat", max_plate_nesting, program.model, program.guide,
                                program.args, program.kwargs)


def _sample_sites(trace: Trace) -> Iterator[tuple[str, dict]]:
    return ((name, site) for name, site in trace.nodes.items() if site["type"] == "sample")


def _inspect(program: _Program, plate: str | None) -> _Layout:
    # This unbatched run also lets lazily built guides (AutoNormal and friends)
    # create their parameters outside the particle plate; built inside it,
    # their prototype trace would be batched over particles.
    model_trace, guide_trace = _trace_pair(program)
    latent = {n: s["value"].shape for n, s in _sample_sites(model_trace) if not s["is_observed"]}
    if not latent:
        name = getattr(program.model, "__name__", repr(program.model))
        raise ValueError(
            f"model {name!r} has no latent sample sites: there is nothing to "
            "importance-sample (its marginal likelihood is its log-density)"
        )
    unguided = [name for name in latent if name not in guide_trace.nodes]
    if unguided:
        raise ValueError(
            f"latent site(s) {unguided} of the model are not sampled by the guide; "
            "their values would come from the prior and bias the weights"
        )
    nesting = 0
    for trace in (model_trace, guide_trace):
        for _, site in _sample_sites(trace):
            # Batch dims that no plate declares also need room right of the
            # particle plate, hence the log_prob rank.
            nesting = max(nesting, site["log_prob"].dim())
            nesting = max([nesting] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized])
    plate_size = _find_plate(model_trace, guide_trace, plate) if plate else None
    return _Layout(nesting, latent, plate, plate_size, model_trace)


def _find_plate(model_trace: Trace, guide_trace: Trace, plate: str) -> int:
    dims, size = set(), 0
    for trace in (model_trace, guide_trace):
        for name, site in _sample_sites(trace):
            if site["infer"].get("_deterministic"):
                continue  # pyro.deterministic: zero log-prob, couples nothing
            frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
            if frame is None:
                # Such a site couples all data points, so the bound no longer
                # splits into one term per data point.
                raise ValueError(
                    f"per_datapoint_plate={plate!r}: sample site {name!r} is not inside "
                    "that plate; every model and guide site must be for the "
                    "per-datapoint bound to exist (use the joint bound instead)"
                )
            if not frame.vectorized:
                raise ValueError(f"plate {plate!r} must be vectorized, not a Python loop")
            dims.add(frame.dim)
            size = site["log_prob"].shape[frame.dim]
            if size != frame.size:
                raise ValueError(
                    f"plate {plate!r} subsamples {size} of {frame.size} data points; "
                    "pass the data points to evaluate as a full plate instead"
                )
    if len(dims) > 1:
        raise ValueError(f"plate {plate!r} has different dims in model and guide: {dims}")
    return size


def _packed_sum(trace: Trace, keep: list[tuple[str, int]]) -> torch.Tensor:
    """Sum of every site's packed log-prob over all dims but the ``(symbol, size)`` pairs in
    ``keep``, shaped by their sizes (Pyro's ``plate_log_prob_sum`` keeps one plate; a site
    constant along a kept plate, which packing leaves without its symbol, is broadcast)."""
    total = torch.zeros(())
    for _, site in _sample_sites(trace):
        log_prob = site["packed"]["log_prob"]
        present = "".join(s for s, _ in keep if s in log_prob._pyro_dims)
        term = torch.einsum(f"{log_prob._pyro_dims}->{present}", log_prob)
        total = total + term.reshape([n if s in present else 1 for s, n in keep])
    return total.expand([n for _, n in keep])


def _log_weights(model_trace: Trace, guide_trace: Trace, layout: _Layout,
                 particles: int | None) -> torch.Tensor:
    """``(particles,)`` or ``()`` log-weights from Pyro's packed traces, with a trailing data
    dim for a per-datapoint bound (Pyro's own sum keeps only the draws' plate)."""
    symbols = guide_trace.plate_to_symbol
    keep = [] if particles is None else [(symbols[_PARTICLE_PLATE], particles)]
    if layout.plate is not None:
        keep.append((symbols[layout.plate], layout.plate_size))
    return _packed_sum(model_trace, keep) - _packed_sum(guide_trace, keep)


def _batched_chunk(program: _Program, layout: _Layout, size: int) -> _Chunk:
    log_weights, model_trace, guide_trace = vectorized_importance_weights(
        program.model, program.guide, *program.args, num_samples=size,
        max_plate_nesting=layout.max_plate_nesting, **program.kwargs)
    values = {}
    for name, shape in layout.latent_shapes.items():
        if name not in model_trace.nodes:
            raise _LayoutChanged(f"latent site {name!r} vanished in the batched run")
        value = model_trace.nodes[name]["value"]
        # A broadcast-correct value is (size, 1, ..., 1, *shape).
        trailing = value.shape[value.dim() - len(shape) :]
        if value.numel() != size * shape.numel() or trailing != shape:
            raise _LayoutChanged(f"latent site {name!r} has batched shape {tuple(value.shape)}")
        values[name] = value.reshape((size,) + shape)
    if layout.plate is None:
        return log_weights.reshape(size), values
    return _log_weights(model_trace, guide_trace, layout, size), values


def _sequential_chunk(program: _Program, layout: _Layout, size: int) -> _Chunk:
    weights, draws = [], []
    for _ in range(size):
        model_trace, guide_trace = _trace_pair(program, layout.max_plate_nesting)
        guide_trace.pack_tensors()
        model_trace.pack_tensors(guide_trace.plate_to_symbol)
        weights.append(_log_weights(model_trace, guide_trace, layout, None))
        draws.append({n: s["value"] for n, s in _sample_sites(model_trace) if not s["is_observed"]})
    values = {}
    for name, shape in layout.latent_shapes.items():
        if any(name not in d or d[name].shape != shape for d in draws):
            return torch.stack(weights), {}  # dynamic structure: only weights are defined
        values[name] = torch.stack([d[name] for d in draws])
    return torch.stack(weights), values


def _chunks(
    program: _Program,
    layout: _Layout,
    num_samples: int,
    batch_size: int | None,
    vectorize: bool | None,
) -> Iterator[_Chunk]:
    """Yield the draws in chunks of at most ``batch_size``; check them at the end."""
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    step = num_samples if batch_size is None else min(batch_size, num_samples)
    sizes = [step] * (num_samples // step) + ([num_samples % step] if num_samples % step else [])
    batched = vectorize is not False
    bad = {"nan": 0, "+inf": 0, "-inf": 0}
    for index, size in enumerate(sizes):
        if batched:
            try:
                chunk = _batched_chunk(program, layout, size)
            # The model is arbitrary user code: any failure under the particle
            # plate means it does not broadcast, which the loop below handles.
            except Exception as error:
                if vectorize is True or index > 0:
                    raise
                batched = False
                chunk = _sequential_chunk(program, layout, size)
                warnings.warn(
                    "model/guide could not be evaluated under a particle plate "
                    f"({type(error).__name__}: {error}); falling back to one run "
                    "per sample, which is slower",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            chunk = _sequential_chunk(program, layout, size)
        log_weights = chunk[0]
        bad["nan"] += int(log_weights.isnan().sum())
        bad["+inf"] += int((log_weights == math.inf).sum())
        bad["-inf"] += int((log_weights == -math.inf).sum())
        yield chunk
    if sum(bad.values()):
        total = num_samples * (layout.plate_size or 1)
        counts = ", ".join(f"{v} {k}" for k, v in bad.items() if v)
        raise ValueError(
            f"{sum(bad.values())} of {total} importance log-weights are non-finite "
            f"({counts}). -inf usually means the guide proposes values outside the "
            "model's support (e.g. an unconstrained guide for a positive latent); "
            "+inf or nan usually mean a degenerate guide scale or nan parameters/data"
        )


@torch.no_grad()
def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    batch_size: int | None = None,
    per_datapoint_plate: str | None = None,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Log importance weights ``log p(x, z_k) - log q(z_k)`` of guide draws.

    :param model: Pyro model, called as ``model(*args, **kwargs)``.
    :param guide: Pyro guide with the same signature.
    :param num_samples: number of draws ``z_k ~ q``.
    :param batch_size: draws evaluated per batched run (bounds memory);
        ``None`` evaluates all of them at once.
    :param per_datapoint_plate: name of the data plate; when given, the
        log-weight of each data point only sums the log-prob terms of that
        data point (every sample site must lie inside the plate).
    :param vectorize: ``True`` forces batched evaluation, ``False`` forces one
        run per draw, ``None`` tries batching and falls back with a warning.
    :return: tensor of shape ``(num_samples,)``, or ``(num_samples, N)`` with a
        ``per_datapoint_plate`` of size ``N``.
    :raises ValueError: if the model has no latent sites, a latent site is not
        in the guide, or a log-weight is non-finite.

    Example::

        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> importance_log_weights(model, model, num_samples=5)  # guide = posterior
        tensor([0., 0., 0., 0., 0.])
    """
    program = _Program(model, guide, args, kwargs)
    layout = _inspect(program, per_datapoint_plate)
    chunks = _chunks(program, layout, num_samples, batch_size, vectorize)
    return torch.cat([log_weights for log_weights, _ in chunks])


@torch.no_grad()
def importance_sample(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    batch_size: int | None = None,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> ImportanceSamples:
    """Draw latent values from the guide together with their log-weights.

    Arguments are as for :func:`importance_log_weights`.

    :return: an :class:`ImportanceSamples` whose ``samples[name][k]`` is the
        ``k``-th draw of latent site ``name`` and ``log_weights[k]`` its weight.
    :raises ValueError: as :func:`importance_log_weights`, and if the latent
        sites change shape between draws (the draws could not be stacked).

    Example::

        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        >>> draws = importance_sample(model, model, num_samples=10)
        >>> draws.samples["z"].shape, draws.log_weights.shape
        (torch.Size([10, 3]), torch.Size([10]))
    """
    program = _Program(model, guide, args, kwargs)
    layout = _inspect(program, None)
    weights, samples = [], {name: [] for name in layout.latent_shapes}
    for log_weights, values in _chunks(program, layout, num_samples, batch_size, vectorize):
        if not values:
            raise ValueError(
                "the model's latent sites change shape between runs, so its draws "
                "cannot be stacked; use importance_log_weights for the weights alone"
            )
        weights.append(log_weights)
        for name, value in values.items():
            samples[name].append(value)
    stacked = {name: torch.cat(chunks) for name, chunks in samples.items()}
    return ImportanceSamples(torch.cat(weights), stacked, layout.trace)


@torch.no_grad()
def iwae_log_likelihood(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    batch_size: int | None = None,
    per_datapoint_plate: str | None = None,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Importance-weighted lower bound on ``log p(x)``.

    Returns :math:`\\log \\frac{1}{K} \\sum_k \\exp(w_k)` with
    :math:`w_k = \\log p(x, z_k) - \\log q(z_k)`, :math:`K` = ``num_samples``,
    combined across chunks of ``batch_size`` draws with a running logsumexp.

    With ``per_datapoint_plate="data"`` each data point :math:`n` of that
    plate gets its own bound :math:`\\log \\frac{1}{K} \\sum_k \\exp(w_{nk})`,
    where :math:`w_{nk}` sums only the log-prob terms indexed by :math:`n`
    (a VAE's :math:`\\log p(x_n | z_n) p(z_n) / q(z_n | x_n)`), over its own
    :math:`K` draws.  The dataset bound is the sum of that
    vector and is, in expectation, at least as tight as the joint bound.
    Every sample site must lie in the plate: a global latent couples the data
    points, and the bound would not split.

    Arguments are as for :func:`importance_log_weights`; ``*args`` and
    ``**kwargs`` are passed on to the model and guide.

    :return: a 0-dim tensor (the joint bound), or a tensor of shape ``(N,)``
        holding the per-datapoint bounds when ``per_datapoint_plate`` is set.
    :raises ValueError: if the model has no latent sites, a latent site is not
        in the guide, or a log-weight is non-finite.

    Example::

        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> iwae_log_likelihood(model, model, num_samples=10)  # guide = posterior
        tensor(0.)
    """
    program = _Program(model, guide, args, kwargs)
    layout = _inspect(program, per_datapoint_plate)
    total: torch.Tensor | None = None
    for log_weights, _ in _chunks(program, layout, num_samples, batch_size, vectorize):
        chunk_total = torch.logsumexp(log_weights, dim=0)
        total = chunk_total if total is None else torch.logaddexp(total, chunk_total)
    assert total is not None  # _chunks yields at least one chunk
    return total - math.log(num_samples)
