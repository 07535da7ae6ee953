"""``AutoFlow``: a normalizing-flow autoguide over a model's unconstrained latents, its flow
built by :func:`~pyro_flows.infer.build_guide_flow`."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous, init_to_median
from pyro.infer.autoguide.guides import prototype_hide_fn
from pyro.nn import PyroParam
from pyro.params import param_with_module_name
from pyro.poutine.trace_struct import Trace
from torch import nn
from torch.distributions import biject_to

from ..registry import build, entry
from ..transforms import Chain
from .guide_flow import build_guide_flow, store_clash
from .path_gradient import PathGradientPosterior

__all__ = ["AutoFlow"]

# Four couplings could not close a ring-shaped posterior: trained with 8 particles and gradient
# entries clamped at 1, the guide settled on one side of it (mean 0.21-0.40 sd off on 4 seeds of
# 4); eight closed it on every seed. Glow's layers each add a learned linear map: eight of them
# went non-finite on eight schools at lr 0.05 (1 seed of 10), four on none (benchmarks/RESULTS.md,
# seventh round).
DEFAULT_NUM_LAYERS = {"realnvp": 8, "nice": 8, "glow": 4}
OTHER_FLOWS_NUM_LAYERS = 8
# The bound on the sum of the affine couplings' log-scales along a draw: four couplings of the
# per-coupling default (3) were stable at lr 0.05; eight at 3 each went non-finite on the funnel
# (2 seeds of 10), eight at 1.5 each did not.
TOTAL_SCALE_BOUND = 12.0
AFFINE_FLOWS = ("realnvp", "glow")
ACCEPTED = ("model", "flow", "num_layers (Pyro: num_transforms)",
            "hidden_dims (Pyro: hidden_dim)", "init_loc_fn", "init_scale", "create_plates",
            "path_gradient")


def _one_of(name: str, value: Any, pyro_name: str, pyro_value: Any) -> Any:
    if value is not None and pyro_value is not None:
        raise TypeError(f"AutoFlow got both {name}= and {pyro_name}= (Pyro's name for the same "
                        f"thing); pass one")
    return value if value is not None else pyro_value


def _check_flow_kwargs(flow: str, kwargs: dict[str, Any], given: set[str]) -> None:
    """Build ``flow`` once on a small vector so an argument it does not take fails now, at
    construction, rather than at the guide's first call."""
    try:
        with torch.random.fork_rng(devices=[]):
            build(flow, event_shape=(2,), **kwargs)
    except TypeError as err:
        extra = sorted(given - {"num_layers", "hidden_dims"})
        raise TypeError(
            f"AutoFlow does not take {', '.join(map(repr, extra)) or 'these arguments'} for "
            f"flow {flow!r} ({err}). It accepts: {', '.join(ACCEPTED)}, and the keyword "
            f"arguments of flow {flow!r}'s couplings (scale_bound for realnvp and glow)") from None


def _check_latent_sites(trace: Trace, owner: str) -> None:
    sites = list(trace.iter_stochastic_nodes())
    for name, site in sites:
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"{owner} cannot handle the discrete latent site {name!r}: enumerate it "
                f"(infer={{'enumerate': 'parallel'}} with TraceEnum_ELBO) or hide it with "
                f"poutine.block(model, hide=[{name!r}])")
    if not sites:
        raise ValueError(f"{owner} found no latent sample sites in the model (observed and "
                         "enumerated sites need no guide); use an empty guide instead")


class AutoFlow(AutoContinuous):
    """An autoguide whose posterior over the model's flattened unconstrained latents (size
    ``D``) is a normalizing flow refining a diagonal Gaussian:
    ``z = flow(loc + scale * eps)``, ``eps ~ N(0, I)``.

    ``loc`` starts at ``init_loc_fn``'s values and ``scale`` at ``init_scale`` (kept positive by
    a softplus, as in :class:`~pyro.infer.autoguide.AutoNormal`); the flow starts as the
    identity (see :func:`build_guide_flow`), so an untrained ``AutoFlow`` is exactly the
    ``AutoNormal`` guide. The flow comes from the registry: ``"realnvp"`` (Dinh et al., "Density
    estimation using Real NVP", ICLR 2017), ``"nice"`` (Dinh et al., ICLR 2015) or ``"glow"``
    (Kingma & Dhariwal, NeurIPS 2018). A trained ``AutoFlow`` also reshapes a model for HMC
    through :class:`~pyro.infer.reparam.NeuTraReparam` (Hoffman et al., "NeuTra-lizing Bad
    Geometry in Hamiltonian Monte Carlo Using Neural Transport", 2019).

    Sites marked ``infer={"enumerate": "parallel"}`` are left to the model (``TraceEnum_ELBO``);
    any other discrete latent site is an error. Unlike Pyro's ``AutoNormalizingFlow``,
    :meth:`median` and :meth:`quantiles` work, by sampling.

    Train it with several vectorized particles and Pyro's ``ClippedAdam`` (entries clamped at 1,
    the rate decaying to a tenth), as :doc:`/getting_started` shows: so trained for 3,000 steps
    it kept the marginal sds within 15 % on curved 2-D posteriors (banana, ring, mixture) on
    every seed measured; with plain Adam and one particle it fell short.

    The flow's random initialization is drawn from the fixed seed ``FLOW_SEED`` (the global RNG
    is untouched), so a guide rebuilt from ``pyro.get_param_store().set_state(...)`` alone has
    the same fixed buffers; ``state_dict``/``load_state_dict`` work as for any module.

    Arguments Pyro users bring from :class:`~pyro.infer.autoguide.AutoIAFNormal` and
    :class:`~pyro.infer.autoguide.AutoNormal` keep their meaning: ``num_transforms`` is
    ``num_layers``, ``hidden_dim`` is ``hidden_dims`` (an int is one hidden layer, as in Pyro),
    ``init_loc_fn``, ``init_scale`` and ``create_plates`` are as there. Any other argument the
    flow's builder does not take is a ``TypeError`` here, at construction, listing what is
    accepted.

    :param model: a Pyro model with continuous latent sites.
    :param flow: a registered unconditional vector flow: ``"realnvp"``, ``"nice"`` or ``"glow"``.
    :param num_layers: number of couplings (Pyro's ``num_transforms``; default 8, 4 for
        ``"glow"``, see ``DEFAULT_NUM_LAYERS``: with four RealNVP couplings the guide could not
        wrap around a ring-shaped posterior, with eight Glow layers it was less stable).
    :param hidden_dims: widths of each coupling's MLP (Pyro's ``hidden_dim``; default two
        layers of ``max(64, 4D)``).
    :param init_loc_fn: per-site initialization of ``loc``, as for Pyro's autoguides.
    :param init_scale: initial ``scale`` of every unconstrained coordinate.
    :param create_plates: as for :class:`~pyro.infer.autoguide.AutoNormal`: a function of the
        model's arguments returning the guide's plates (e.g. with the model's subsample).
    :param path_gradient: train on the path derivative of the ELBO alone ("sticking the
        landing", :mod:`pyro_flows.infer.path_gradient`): unbiased for ELBOs, and it lets the
        guide's spread settle at the posterior's instead of jittering below it. Default: on,
        except for ``"glow"``, which was less stable with it at lr 0.05. Pass ``False`` for
        importance-weighted objectives (``RenyiELBO``, ``TraceTailAdaptive_ELBO``).
    :param flow_kwargs: further keyword arguments of the flow's couplings. For ``"realnvp"``
        and ``"glow"``, ``scale_bound`` (each coupling's log-scale bound) defaults to
        ``min(3, 12 / num_layers)``: the sum of the log-scales along a draw stays within 12
        whatever the depth, which kept the 8-coupling guide finite at lr 0.05.

    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.infer import SVI, Trace_ELBO
    >>> def funnel():
    ...     y = pyro.sample("y", dist.Normal(0.0, 3.0))
    ...     pyro.sample("x", dist.Normal(0.0, torch.exp(y / 2)).expand([3]).to_event(1))
    >>> guide = AutoFlow(funnel, num_layers=2)
    >>> svi = SVI(funnel, guide, pyro.optim.Adam({"lr": 5e-3}), Trace_ELBO())
    >>> loss = svi.step()
    >>> guide.quantiles([0.1, 0.9])["x"].shape
    torch.Size([2, 3])
    """

    scale_constraint = constraints.softplus_positive

    def __init__(self, model: Callable, flow: str = "realnvp", num_layers: int | None = None,
                 hidden_dims: int | Sequence[int] | None = None,
                 init_loc_fn: Callable = init_to_median, init_scale: float = 0.1, *,
                 num_transforms: int | None = None, hidden_dim: int | Sequence[int] | None = None,
                 create_plates: Callable | None = None, path_gradient: bool | None = None,
                 **flow_kwargs: Any) -> None:
        if not isinstance(init_scale, (int, float)) or not init_scale > 0:
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        e = entry(flow)
        if e.conditional or 1 not in e.event_dims:
            raise ValueError(f"AutoFlow needs an unconditional flow on vectors, got {flow!r}")
        num_layers = _one_of("num_layers", num_layers, "num_transforms", num_transforms)
        hidden_dims = _one_of("hidden_dims", hidden_dims, "hidden_dim", hidden_dim)
        if isinstance(hidden_dims, int):  # Pyro's hidden_dim=H: one hidden layer of width H
            hidden_dims = (hidden_dims,)
        self._flow_name = flow
        given = set(flow_kwargs)
        num_layers = num_layers or DEFAULT_NUM_LAYERS.get(flow, OTHER_FLOWS_NUM_LAYERS)
        if flow in AFFINE_FLOWS:
            flow_kwargs.setdefault("scale_bound", min(3.0, TOTAL_SCALE_BOUND / num_layers))
        self._flow_kwargs = dict(flow_kwargs, num_layers=num_layers,
                                 hidden_dims=tuple(hidden_dims) if hidden_dims else None)
        if "data_init" in flow_kwargs:
            raise ValueError("a guide flow never initializes ActNorm from data (its only inputs "
                             "are its own draws); do not pass data_init")
        _check_flow_kwargs(flow, self._flow_kwargs, given)
        self._init_scale = float(init_scale)
        # lr 0.05, 1000 steps, 4 models x 3 seeds: glow's guide with the path derivative went
        # non-finite on 3 runs of 12, with the full gradient on none (benchmarks/RESULTS.md).
        self._path_gradient = flow != "glow" if path_gradient is None else bool(path_gradient)
        super().__init__(model, init_loc_fn=init_loc_fn)
        # AutoContinuous takes no create_plates, but its forward() creates its plates with it.
        self.create_plates = create_plates

    @staticmethod
    def _prototype_hide_fn(msg: dict) -> bool:
        return prototype_hide_fn(msg) or msg["infer"].get("enumerate") == "parallel"

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
        except (NotImplementedError, RuntimeError, ValueError):
            if self.prototype_trace is not None:  # traced, but its sites are unusable
                trace, self.prototype_trace = self.prototype_trace, None
                _check_latent_sites(trace, type(self).__name__)
            raise
        _check_latent_sites(self.prototype_trace, type(self).__name__)
        loc = self._init_loc()
        try:
            flow = build_guide_flow(self._flow_name, self.latent_dim, like=loc, **self._flow_kwargs)
        except ValueError as err:
            if self.latent_dim > 1:
                raise
            raise ValueError(f"flow {self._flow_name!r} cannot act on the model's single "
                             f"unconstrained latent dimension ({err}); use AutoNormal") from err
        self._check_param_store(loc, flow)
        self.loc = nn.Parameter(loc)
        self.scale = PyroParam(torch.full_like(loc, self._init_scale), self.scale_constraint)
        self.flow = flow
        # Pyro registers a plain nn.Module with pyro.module, which keeps the module's own
        # tensors even when the param store already holds this guide's (after set_state);
        # taking the store's makes the reload work and the optimizer train what is used.
        pyro.module(self._pyro_get_fullname("flow"), self.flow, update_module_params=True)

    def _check_param_store(self, loc: torch.Tensor, flow: nn.Module) -> None:
        """Refuse a param store holding this guide's names at other shapes: this guide would
        take those tensors (as it must after ``set_state``) and fail later, unhelpfully."""
        flow_name = self._pyro_get_fullname("flow")
        clash = store_clash({self._pyro_get_fullname("loc"): loc.shape,
                             self._pyro_get_fullname("scale"): loc.shape,
                             **{param_with_module_name(flow_name, n): p.shape
                                for n, p in flow.named_parameters()}})
        if clash:
            name, stored, needed = clash
            raise ValueError(
                f"the param store already holds {name!r} with shape {stored}, but this guide "
                f"needs {needed}: another guide named {self._pyro_name!r} was built in this "
                f"process (Pyro names a guide's parameters after it). Call "
                f"pyro.clear_param_store() before building this one")

    def get_base_dist(self) -> dist.TorchDistribution:
        return dist.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc)).to_event(1)

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        if self._path_gradient and isinstance(self.flow, Chain):
            return PathGradientPosterior(self.get_base_dist(), self.loc, self.scale, self.flow)
        return super().get_posterior(*args, **kwargs)

    def get_transform(self, *args: Any, **kwargs: Any) -> torch.distributions.Transform:
        # Cached affine: log_prob of the guide's own draw (every ELBO) then finds every
        # intermediate value in the caches instead of running the flow again.
        affine = dist.transforms.AffineTransform(self.loc, self.scale, event_dim=1, cache_size=1)
        return dist.transforms.ComposeTransform([affine, *self.flow.parts])

    def _constrained_samples(self, num_samples: int, *args: Any,
                             **kwargs: Any) -> dict[str, torch.Tensor]:
        """``num_samples`` posterior draws per site, shaped ``(num_samples, *site_shape)``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        latent = self.get_posterior().sample((num_samples,))
        # _unpack_latent wants batch dims left of every plate dim of every site.
        depth = max(len(shape) for shape in self._unconstrained_shapes.values())
        latent = latent.reshape(num_samples, *(1,) * depth, self.latent_dim)
        return {
            site["name"]: biject_to(site["fn"].support)(value).reshape(
                num_samples, *site["value"].shape)
            for site, value in self._unpack_latent(latent)
        }

    @torch.no_grad()
    def median(self, *args: Any, num_samples: int = 1000, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Elementwise posterior medians in the constrained space, estimated from
        ``num_samples`` draws (a flow has no closed-form median).

        :returns: site name -> tensor of the site's shape.
        """
        samples = self._constrained_samples(num_samples, *args, **kwargs)
        return {name: v.quantile(0.5, dim=0) for name, v in samples.items()}

    @torch.no_grad()
    def quantiles(self, quantiles, *args: Any, num_samples: int = 1000,
                  **kwargs: Any) -> dict[str, torch.Tensor]:
        """Elementwise posterior quantiles in the constrained space, estimated from
        ``num_samples`` draws.

        :param quantiles: levels in ``[0, 1]``, e.g. ``[0.05, 0.5, 0.95]``.
        :returns: site name -> tensor of shape ``(len(quantiles), *site_shape)``.
        """
        samples = self._constrained_samples(num_samples, *args, **kwargs)
        return {
            name: v.quantile(torch.as_tensor(quantiles, dtype=v.dtype, device=v.device), dim=0)
            for name, v in samples.items()
        }

    def __getstate__(self) -> dict[str, Any]:
        # Pyro's AutoGuide.__getstate__ drops the model from the live guide, not just from the
        # pickled copy: torch.save(guide) would leave an in-memory guide without its model.
        model, master = self._model, self.master
        try:
            return super().__getstate__()
        finally:
            self._model, self.master = model, master
