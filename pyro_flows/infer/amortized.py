"""``AmortizedFlow``: an amortized variational posterior ``q(z | x)`` (a VAE encoder) refined by a
conditional normalizing flow.

The encoder gives a Gaussian ``N(loc(x), scale(x))``; a flow conditioned on the encoder's output
moves its draws, ``z = flow_context(loc + scale * eps)``. The flow starts as the identity, so a
new ``AmortizedFlow`` *is* the Gaussian posterior, which is also how a flow is added to a VAE
already trained with a Gaussian posterior.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.params import param_with_module_name
from torch import nn

from .guide_flow import build_guide_flow, store_clash

__all__ = ["AmortizedFlow"]


class AmortizedFlow(nn.Module):
    """``AmortizedFlow(encoder, latent_dim)(x)`` is a distribution over ``z`` of batch shape
    ``x``'s batch shape and event shape ``(latent_dim,)``: ``Normal(loc, scale)`` pushed
    through a conditional flow, the Gaussian posterior refined by a flow as in Kingma et al.,
    "Improved Variational Inference with Inverse Autoregressive Flow" (NeurIPS 2016), with
    RealNVP couplings (Dinh et al., ICLR 2017) or Glow steps (Kingma & Dhariwal, NeurIPS 2018).

    The context of the flow depends on what the encoder returns:

    - ``(loc, scale)`` (``context_dim=None``, the default): the context is
      ``cat([loc, log(scale)], -1)``, of size ``2 * latent_dim``. Any Gaussian VAE encoder
      works unchanged, and the flow can reshape ``q`` differently for each ``x`` without a
      new output of the encoder.
    - ``(loc, scale, context)`` with ``context_dim`` given: the encoder's own features ``h``,
      e.g. its last hidden layer, whose last dimension must be ``context_dim``.

    ``loc`` and ``scale`` must have the same shape, ending in ``latent_dim``. The flow is built
    on the encoder's dtype and device; ``.to(...)`` moves both.

    **Registration.** Pyro trains only what is in its param store, so every call registers the
    flow with ``pyro.module(name, self.flow, update_module_params=True)``: the one-line swap of
    the guide's distribution trains the flow even where the guide registers only its encoder
    (as in Pyro's ``examples/vae/vae.py``), and a guide rebuilt from a saved param store gets
    the stored flow back. Registering the whole ``AmortizedFlow`` yourself as well is harmless
    (the same tensors under two names are optimized once). Give each ``AmortizedFlow`` of one
    model its own ``name``. The encoder stays yours to register, as before.

    **Adding a flow to a trained Gaussian VAE.** Wrap its encoder and swap the guide's
    distribution; keep training with the same optimizer. The flow starts as the identity, so
    the ELBO is unchanged at the switch: draw for draw under the same seed, exactly for
    ``nice``/``realnvp`` and to float rounding for ``glow``'s rotations::

        q = AmortizedFlow(encoder, latent_dim)        # encoder returns (loc, scale)

        def guide(x):
            pyro.module("encoder", encoder)           # unchanged
            with pyro.plate("data", len(x)):
                pyro.sample("z", q(x))                # was: dist.Normal(loc, scale).to_event(1)

    :param encoder: module mapping ``x`` to ``(loc, scale)`` or ``(loc, scale, context)``.
    :param latent_dim: size of ``z``.
    :param flow: ``"realnvp"``, ``"nice"`` or ``"glow"`` (``"conditional_" + flow`` is built).
    :param num_layers: number of couplings.
    :param hidden_dims: widths of each coupling's MLP.
    :param context_dim: size of the encoder's context output; ``None`` when it returns none.
    :param name: the name the flow is registered under in Pyro's param store.
    :param flow_kwargs: further keyword arguments of the flow's builder.

    >>> import torch
    >>> from torch import nn
    >>> class Encoder(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Linear(16, 4)
    ...     def forward(self, x):
    ...         loc, raw = self.net(x).chunk(2, dim=-1)
    ...         return loc, nn.functional.softplus(raw)
    >>> q = AmortizedFlow(Encoder(), latent_dim=2)
    >>> qz = q(torch.rand(5, 16))
    >>> qz.batch_shape, qz.event_shape, qz.rsample().shape
    (torch.Size([5]), torch.Size([2]), torch.Size([5, 2]))
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, flow: str = "realnvp",
                 num_layers: int = 2, hidden_dims: tuple[int, ...] | None = None,
                 context_dim: int | None = None, name: str = "amortized_flow",
                 **flow_kwargs: Any) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer or None, got {context_dim}")
        self.encoder = encoder
        self.name = name
        self.latent_dim = latent_dim
        self.encoder_context = context_dim is not None
        self.context_dim = context_dim if self.encoder_context else 2 * latent_dim
        like = next((p for p in encoder.parameters() if p.is_floating_point()), None)
        self.flow = build_guide_flow("conditional_" + flow, latent_dim, self.context_dim, like=like,
                                     num_layers=num_layers, hidden_dims=hidden_dims, **flow_kwargs)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.encoder(x)
        names = "(loc, scale, context)" if self.encoder_context else "(loc, scale)"
        if not isinstance(out, (tuple, list)) or len(out) != 2 + self.encoder_context:
            got = f"{len(out)} outputs" if isinstance(out, (tuple, list)) else type(out).__name__
            hint = "" if self.encoder_context else "; pass context_dim if it returns a context"
            raise ValueError(f"the encoder must return {names}, got {got}{hint}")
        loc, scale = out[0], out[1]
        if loc.dim() < 1 or loc.shape[-1] != self.latent_dim:
            raise ValueError(f"the encoder's loc has shape {tuple(loc.shape)}: its last dimension "
                             f"must be latent_dim={self.latent_dim}")
        if scale.shape != loc.shape:
            raise ValueError(f"the encoder's scale has shape {tuple(scale.shape)} but its loc has "
                             f"shape {tuple(loc.shape)}; they must match")
        context = out[2] if self.encoder_context else None
        if context is not None:
            if context.dim() < 1 or context.shape[-1] != self.context_dim:
                raise ValueError(f"the encoder's context has shape {tuple(context.shape)}: its "
                                 f"last dimension must be context_dim={self.context_dim}")
            try:
                torch.broadcast_shapes(context.shape[:-1], loc.shape[:-1])
            except RuntimeError:
                raise ValueError(f"the encoder's context has batch shape "
                                 f"{tuple(context.shape[:-1])}, which does not broadcast with "
                                 f"loc's {tuple(loc.shape[:-1])}") from None
        ref = next(self.flow.buffers())  # the un-mixing matrix, which every guide flow has
        for name, t in (("loc", loc), ("scale", scale), ("context", context)):
            if t is not None and (t.dtype != ref.dtype or t.device != ref.device):
                raise ValueError(f"the encoder's {name} is {t.dtype} on {t.device} but the flow "
                                 f"is {ref.dtype} on {ref.device}; move the AmortizedFlow with "
                                 ".to()")
        return loc, scale, context

    def _check_param_store(self) -> None:
        """Refuse a param store holding this flow's names at other shapes: registering would
        hand the flow those tensors (as it must after a reload) and fail deep inside a layer."""
        clash = store_clash({param_with_module_name(self.name, n): p.shape
                             for n, p in self.flow.named_parameters()})
        if clash:
            name, stored, needed = clash
            raise ValueError(
                f"the param store already holds {name!r} with shape {stored}, but this "
                f"AmortizedFlow needs {needed}: another flow was registered under the name "
                f"{self.name!r}. Give each AmortizedFlow its own name= or call "
                f"pyro.clear_param_store() first")

    def forward(self, x: torch.Tensor) -> dist.TransformedDistribution:
        """The posterior ``q(z | x)``: batch shape from the encoder's ``loc``, event shape
        ``(latent_dim,)``; ``rsample`` is differentiable in the encoder and the flow. Registers
        the flow in Pyro's param store (see the class docstring)."""
        loc, scale, context = self._encode(x)
        base = dist.Normal(loc, scale).to_event(1)  # validates loc and scale (NaN, scale <= 0)
        if context is None:
            context = torch.cat([loc, scale.log()], dim=-1)
        elif is_validation_enabled() and not torch.isfinite(context).all():
            raise ValueError("the encoder's context contains NaN or infinite values")
        # Registered last, so a call that fails on its input leaves the param store as it was.
        self._check_param_store()
        pyro.module(self.name, self.flow, update_module_params=True)
        return dist.TransformedDistribution(base, [self.flow.condition(context)])
