"""Memory-saving backpropagation through invertible blocks.

Plain backprop keeps every block's activations until the backward pass. A chain of bijections
does not need to: each block's input can be recomputed from its output by running the block the
other way. :func:`invertible_checkpoint` runs the blocks without recording a graph, keeps only
the final output, and during backward walks the chain in reverse, reconstructing each input,
re-running that one block with a graph and back-propagating through it (log-dets included).
Memory is then one block's activations instead of all of them, for about one extra pass.

Gomez et al., "The Reversible Residual Network", NeurIPS 2017; the same trick for Glow:
Kingma & Dhariwal 2018, and the i-RevNet/RevTorch line of work.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..precision import same_autocast
from .base import Bijector

__all__ = ["invertible_checkpoint", "rebuild", "rebuild_by_inversion", "run_blocks"]


def _run(block: Bijector, x: torch.Tensor, context, inverse: bool):
    return block.inverse_and_ladj(x, context) if inverse else block.call_and_ladj(x, context)


def rebuild(block: Bijector, out: torch.Tensor, context: torch.Tensor | None, inverse: bool):
    """Rebuild the input that gave ``out`` (from ``inverse_and_ladj`` when ``inverse``, else
    ``call_and_ladj``) and rerun that direction on it with a graph.

    Returns ``(leaves, out, ladj, assemble)``: ``leaves`` are tensors requiring grad that make
    up the input, ``assemble(parts)`` joins tensors shaped like them into one input. A block may
    offer a cheaper way of its own, a public method ``rebuild(out, context, inverse)`` with the
    same result (couplings evaluate their conditioner once instead of twice).
    """
    own = getattr(block, "rebuild", None)
    return own(out, context, inverse) if callable(own) else rebuild_by_inversion(
        block, out, context, inverse)


def rebuild_by_inversion(block: Bijector, out: torch.Tensor, context: torch.Tensor | None,
                         inverse: bool):
    """:func:`rebuild` for any block: run it the other way without a graph, then rerun."""
    with torch.no_grad():
        x = _run(block, out, context, not inverse)[0]
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        y, ladj = _run(block, x, context, inverse)
    return [x], y, ladj, lambda parts: parts[0]


def _leaf_blocks(blocks: Sequence[Bijector], inverse: bool) -> list[Bijector]:
    """Blocks with every chain opened into its parts, in the order they run, so that each part
    can rebuild its own input (a coupling cheaper than a whole chain could)."""
    leaves = []
    for block in blocks:
        parts = getattr(block, "parts", None)
        if isinstance(parts, list):
            leaves += _leaf_blocks(parts[::-1] if inverse else parts, inverse)
        else:
            leaves.append(block)
    return leaves


class _InvertibleCheckpoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, inverse, x, context, *params):
        with torch.no_grad():
            ladj = x.new_zeros(())
            for block in blocks:
                x, ld = _run(block, x, context, inverse)
                ladj = ladj + ld
        ctx.blocks, ctx.inverse = blocks, inverse
        ctx.params = params
        # The blocks are rerun in backward exactly as here, conditioners in the same precision.
        ctx.precision = same_autocast(x)
        ctx.save_for_backward(x, context)
        return x, ladj

    @staticmethod
    def backward(ctx, grad_y, grad_ladj):
        y, context = ctx.saved_tensors
        index = {id(p): i for i, p in enumerate(ctx.params)}
        grad_params: list[torch.Tensor | None] = [None] * len(ctx.params)
        want_context = context is not None and ctx.needs_input_grad[3]
        grad_context = None
        for block in reversed(ctx.blocks):
            c = context.detach().requires_grad_() if want_context else context
            # The rerun only: backward ops take their forward's precision by themselves, and
            # under autocast the float32 ones would be cast down.
            with ctx.precision:
                leaves, out, ld, assemble = rebuild(block, y, c, ctx.inverse)
            params = [p for p in block.parameters() if p.requires_grad]
            inputs = [*leaves, *params] + ([c] if want_context else [])
            pairs = [(t, g) for t, g in ((out, grad_y), (ld, grad_ladj.expand_as(ld)))
                     if t.requires_grad]
            grads = torch.autograd.grad([t for t, _ in pairs], inputs, [g for _, g in pairs],
                                        allow_unused=True)
            n = len(leaves)
            grad_y = assemble([g if g is not None else torch.zeros_like(leaf)
                               for g, leaf in zip(grads[:n], leaves)])
            for p, g in zip(params, grads[n : n + len(params)]):
                if g is not None:
                    i = index[id(p)]
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            if want_context and grads[-1] is not None:
                grad_context = grads[-1] if grad_context is None else grad_context + grads[-1]
            y = assemble([leaf.detach() for leaf in leaves])
        return (None, None, grad_y, grad_context, *grad_params)


def run_blocks(blocks: Sequence[Bijector], x: torch.Tensor, context: torch.Tensor | None = None,
               inverse: bool = False, memory_efficient: bool = False):
    """Apply ``blocks`` in order (``call_and_ladj``, or ``inverse_and_ladj`` when ``inverse``) and
    return ``(output, summed log-det)``; with ``memory_efficient`` through
    :func:`invertible_checkpoint`."""
    if memory_efficient:
        return invertible_checkpoint(blocks, x, context, inverse)
    ladj = 0
    for block in blocks:
        x, ld = _run(block, x, context, inverse)
        ladj = ladj + ld
    return x, ladj


def invertible_checkpoint(blocks: Sequence[Bijector], x: torch.Tensor,
                          context: torch.Tensor | None = None, inverse: bool = False):
    """Like :func:`run_blocks`, with gradients equal to plain backprop but no intermediate
    activations stored. Falls back to plain evaluation when no gradient is needed."""
    blocks = _leaf_blocks(blocks, inverse)
    params = [p for block in blocks for p in block.parameters() if p.requires_grad]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or bool(params) or (context is not None and context.requires_grad))
    if not needs_grad or torch.compiler.is_compiling():
        return run_blocks(blocks, x, context, inverse)
    return _InvertibleCheckpoint.apply(tuple(blocks), inverse, x, context, *params)
