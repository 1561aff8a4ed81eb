"""The structure quantization reads from a model -- conv->BN pairs, residual blocks, adds -- in one ``torch.fx`` pass.

Folding needs the BatchNorms that read nothing but a convolution's output, cross-layer
equalization the convolutions of a block's residual branch, quantizer insertion the residual
adds, and block reconstruction the modules that hold a block. All of them take it from here, so
they agree with one another and follow the data flow rather than class or attribute names. A
residual add must be an ``Add`` module (the models make every sum one, so that a ``QuantAdd`` can
take its place); the tracer keeps it whole instead of tracing into its ``a + b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx
from torch import nn

from qexp.models.resnet import Add


@dataclass(frozen=True)
class ResidualBlock:
    """``add(branch(x), shortcut(x))``, by module names.

    ``branch`` holds the modules on the longer of the two paths from the fork ``x`` to ``add`` (on
    a tie, the add's first operand), in forward order; ``module`` is the smallest module that holds
    both paths and the add, the unit a block reconstruction fits.
    """

    module: str
    branch: tuple[str, ...]
    add: str


@dataclass(frozen=True)
class Patterns:
    """What ``find_patterns`` found, each in forward (graph) order."""

    conv_bn: tuple[tuple[str, str], ...]  # (conv, bn): the BN reads only the conv, and nothing else reads the conv
    blocks: tuple[ResidualBlock, ...]
    adds: tuple[str, ...]  # every Add module the forward pass calls, in or outside a block


class _Tracer(torch.fx.Tracer):
    """``torch.fx``'s tracer with ``Add`` as a leaf, so that each residual sum is a node named after its module."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, Add) or super().is_leaf_module(module, qualified_name)


def find_patterns(model: nn.Module) -> Patterns:
    """Trace ``model`` once and name its conv->BN pairs, residual blocks and adds."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    conv_bn, blocks, adds = [], [], []
    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            source = node.args[0]
            if (
                module.running_mean is not None  # a BN without running statistics normalises by batch
                and isinstance(source, torch.fx.Node)
                and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d)
                and len(source.users) == 1
            ):
                conv_bn.append((source.target, node.target))
        elif isinstance(module, Add):
            adds.append(node.target)
            block = _residual_block(node)
            if block is not None:
                blocks.append(block)
    return Patterns(tuple(conv_bn), tuple(blocks), tuple(dict.fromkeys(adds)))


def _upstream(node: torch.fx.Node) -> list[torch.fx.Node]:
    """``node`` and what it reads through each node's first input, back to the model's input."""
    path = []
    while isinstance(node, torch.fx.Node):
        path.append(node)
        node = node.args[0] if node.args else None
    return path


def _residual_block(add: torch.fx.Node) -> ResidualBlock | None:
    """The block that ``add`` closes, or None when its operands do not fork from one tensor."""
    if len(add.args) != 2 or not all(isinstance(arg, torch.fx.Node) for arg in add.args):
        return None
    paths = [_upstream(arg) for arg in add.args]
    first = set(paths[0])
    fork = next((node for node in paths[1] if node in first), None)
    if fork is None:
        return None
    branch, shortcut = sorted((path[: path.index(fork)][::-1] for path in paths), key=len, reverse=True)
    named = [node.target for node in (*branch, *shortcut) if node.op == "call_module"]
    module = add.target.rpartition(".")[0]  # the add's parent, widened until it holds both paths
    while module and not all(name.startswith(module + ".") for name in named):
        module = module.rpartition(".")[0]
    return ResidualBlock(module, tuple(node.target for node in branch if node.op == "call_module"), add.target)
