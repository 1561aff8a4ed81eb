"""The structure quantization reads from a model -- conv->BN pairs, blocks, adds, shared tensors -- in one fx pass.

Folding needs the BatchNorms that read nothing but a convolution's output, cross-layer
equalization the convolutions of a block's residual branch, quantizer insertion the residual
adds and the tensors that several of them read, and block reconstruction the modules that hold
a block. All of them take it from here, so they agree with one another and follow the data flow
rather than class or attribute names. A residual add must be an ``Add`` module (the models make
every sum one, so that a ``QuantAdd`` can take its place); the tracer keeps it whole instead of
tracing into its ``a + b``.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass

import torch.fx
import torch.nn.functional as F
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
class SharedTensor:
    """The output of module ``producer``, read by several conv/linear layers or adds: ``(reader, operand index)``.

    A layer reads its input as operand 0, an add its operands as 0 and 1. A read may pass through
    operations that keep every value as it is or add zeros -- ``nn.Identity``, indexing and slicing,
    constant zero padding, as in the option-A shortcut -- so a quantizer on the producer's output
    puts the read operand on the same grid (0 is on every activation grid). Only modules called
    once take part: a quantizer attached to a module acts on every call of it.
    """

    producer: str
    readers: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Patterns:
    """What ``find_patterns`` found, each in forward (graph) order."""

    conv_bn: tuple[tuple[str, str], ...]  # (conv, bn): the BN reads only the conv, and nothing else reads the conv
    blocks: tuple[ResidualBlock, ...]
    adds: tuple[str, ...]  # every Add module the forward pass calls, in or outside a block
    shared: tuple[SharedTensor, ...]  # in the order of each one's first read


class Tracer(torch.fx.Tracer):
    """``torch.fx``'s tracer with ``Add`` as a leaf, so that each residual sum is a node named after its module."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, Add) or super().is_leaf_module(module, qualified_name)


def find_patterns(model: nn.Module) -> Patterns:
    """Trace ``model`` once and name its conv->BN pairs, residual blocks, adds and shared tensors."""
    graph = Tracer().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    conv_bn, blocks, adds = [], [], []
    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d | nn.Linear | Add) and calls[node.target] == 1:
            operands = node.args[:2] if isinstance(module, Add) else node.args[:1]
            for index, operand in enumerate(operands):
                source = _value_source(operand, modules)
                if isinstance(source, torch.fx.Node) and source.op == "call_module" and calls[source.target] == 1:
                    readers.setdefault(source.target, []).append((node.target, index))
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
    shared = tuple(SharedTensor(producer, tuple(reads)) for producer, reads in readers.items() if len(reads) > 1)
    return Patterns(tuple(conv_bn), tuple(blocks), tuple(dict.fromkeys(adds)), shared)


def _value_source(node: object, modules: dict[str, nn.Module]) -> object:
    """The node whose values ``node`` holds, back through Identity modules, indexing and zero padding."""
    while isinstance(node, torch.fx.Node) and _keeps_values(node, modules):
        node = node.args[0]
    return node


def _keeps_values(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether every value of ``node``'s output is a value of its first input, or a zero it pads with."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Identity)
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    return is_zero_pad(node)


def is_zero_pad(node: torch.fx.Node) -> bool:
    """Whether ``node`` is ``F.pad`` with the constant 0 (its mode and value given by position or keyword)."""
    if node.op != "call_function" or node.target is not F.pad:
        return False
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    return mode == "constant" and not value


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
