"""The integer export of a model quantized by our PTQ, and how many bytes it takes.

Fake quantization keeps an fp32 model, so its ``state_dict`` says nothing about the size of the
quantized network. What a deployment stores is the export below: the integer weights in their
storage type (bit-packed at 2 and 4 bits) concatenated into one byte blob, per-channel weight
scales, the fp32 biases (an integer kernel keeps them as int32 at scale ``s_x * s_w``: the same
4 bytes) and each activation quantizer's bit width, scale and zero point -- a shared one
(``quant.shared_activations``) once, since it is one module, at its producer. Everything is packed
into a handful of tensors because ``torch.save`` spends several hundred bytes on each tensor
record, which would otherwise dominate a 2-bit ResNet20. Its size is measured as serialised
bytes, like every other size in qexp, so formats are compared on equal terms.

Layers and activation quantizers appear in ``model.named_modules()`` order.
"""

from __future__ import annotations

import io

import torch
from torch import Tensor, nn

from qexp.quant.core.affine import pack, quantize, storage_bits, unpack
from qexp.quant.core.modules import QuantLayer, quantizers

STORAGE_DTYPES = {2: torch.uint8, 4: torch.uint8, 8: torch.int8, 16: torch.int16}


def serialized_bytes(state: dict[str, Tensor] | nn.Module) -> int:
    """Bytes of ``torch.save`` of a state dict (a module's ``state_dict()`` when given a module)."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def integer_export(model: nn.Module) -> dict[str, Tensor]:
    """Everything an integer kernel needs to run the frozen, fake-quantized ``model``."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    blobs, offsets, shapes, bits, qmins, scales, biases = [], [0], [], [], [], [], []
    for layer in layers:
        weight, wq = layer.layer.weight, layer.weight_quantizer
        q = quantize(weight, wq.scale, wq.zero_point, wq.qmin, wq.qmax, wq.observer.axis)
        blob = pack(q, wq.bits, wq.qmin).view(torch.uint8)
        blobs.append(blob)
        offsets.append(offsets[-1] + blob.numel())
        shapes.append(list(weight.shape) + [1] * (4 - weight.ndim))
        bits.append(wq.bits)
        qmins.append(wq.qmin)
        scales.append(wq.scale.float().flatten())
        bias = layer.layer.bias
        biases.append(torch.zeros(weight.shape[0]) if bias is None else bias.float())
    activations = list(quantizers(model, "activation").values())
    return {
        "weights": torch.cat(blobs),
        "weight_offsets": torch.tensor(offsets, dtype=torch.int64),
        "weight_shapes": torch.tensor(shapes, dtype=torch.int32),
        "weight_bits": torch.tensor(bits, dtype=torch.uint8),
        "weight_qmin": torch.tensor(qmins, dtype=torch.int32),
        "weight_scales": torch.cat(scales),
        "biases": torch.cat(biases),
        "activation_bits": torch.tensor([a.bits for a in activations], dtype=torch.uint8),
        "activation_scales": torch.stack([a.scale.float() for a in activations]),
        "activation_zero_points": torch.stack([a.zero_point for a in activations]).to(torch.int32),
    }


def exported_weight(state: dict[str, Tensor], index: int) -> Tensor:
    """The int32 weight integers of layer ``index`` (in module order) from an ``integer_export``."""
    start, end = state["weight_offsets"][index : index + 2].tolist()
    bits = int(state["weight_bits"][index])
    shape = [int(s) for s in state["weight_shapes"][index]]
    stored = state["weights"][start:end].view(STORAGE_DTYPES[storage_bits(bits)])
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    return unpack(stored, bits, int(state["weight_qmin"][index]), numel).reshape(shape)
