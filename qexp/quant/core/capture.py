"""Record what named submodules see and produce on the calibration batches.

Bias correction and reconstruction both compare a layer's (or block's) output in the float
model with the same output in the quantized model, so both need the tensors at a module
boundary. Forward hooks collect them; with ``stop=True`` the forward pass is cut short after the
last named module, because nothing downstream of it is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

Keep = Callable[[Tensor, Tensor], Tensor]


def keep_input(inputs: Tensor, output: Tensor) -> Tensor:
    return inputs


def keep_output(inputs: Tensor, output: Tensor) -> Tensor:
    return output


def keep_channel_means(inputs: Tensor, output: Tensor) -> Tensor:
    """Per-image mean of each output channel: ``N x C`` for conv (``N x C x H x W``) and linear outputs."""
    return output.flatten(2).mean(2) if output.ndim > 2 else output


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@torch.no_grad()
def record(
    model: nn.Module, names: Sequence[str], batches: Iterable[Tensor], keep: Keep, stop: bool = False
) -> dict[str, Tensor]:
    """``keep(input, output)`` of each named module for every batch, concatenated along the batch axis."""
    kept: dict[str, list[Tensor]] = {name: [] for name in names}
    last = names[-1]

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def save(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            kept[name].append(keep(args[0], output).detach())
            if stop and name == last:
                raise _Stop

        return save

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(tensors) for name, tensors in kept.items()}
