"""The integer export of a model quantized by our PTQ, and how many bytes it takes.

Fake quantization keeps an fp32 model, so its ``state_dict`` says nothing about the size of the
quantized network. What a deployment stores is the export below: integer weights in their
storage type (bit-packed at 2 and 4 bits), per-channel scales, the fp32 biases (an integer
kernel would keep them as int32 at scale ``s_x * s_w``: the same 4 bytes) and each activation
quantizer's scale and zero point. Its size is measured as serialised bytes, like every other
size in qexp, so formats are compared on equal terms.
"""

from __future__ import annotations

import io

import torch
from torch import Tensor, nn

from qexp.quant.affine import pack, quantize
from qexp.quant.modules import QuantLayer, quantizers


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
    state: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantLayer):
            continue
        weight = module.layer.weight
        wq = module.weight_quantizer
        q = quantize(weight, wq.scale, wq.zero_point, wq.qmin, wq.qmax, wq.observer.axis)
        state[f"{name}.weight"] = pack(q, wq.bits, wq.qmin)
        state[f"{name}.weight_shape"] = torch.tensor(weight.shape, dtype=torch.int16)
        state[f"{name}.weight_bits"] = torch.tensor(wq.bits, dtype=torch.uint8)
        state[f"{name}.weight_scale"] = wq.scale.float()
        if module.layer.bias is not None:
            state[f"{name}.bias"] = module.layer.bias.detach().float()
    for name, quantizer in quantizers(model, "activation").items():
        state[f"{name}.scale"] = quantizer.scale.float()
        state[f"{name}.zero_point"] = quantizer.zero_point.to(torch.int32)
    return state
