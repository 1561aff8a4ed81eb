"""Quantization of a trained model: the public API that the entry points use (see ``api.py``)."""

from qexp.quant.api import (
    Quantized,
    check_supported,
    ptq_config,
    qat_config,
    quantize,
    recovery,
    weight_grid,
)
from qexp.quant.core.affine import check_bits
from qexp.quant.core.modules import layer_bits, layer_names
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.custom.reconstruct import units as reconstruction_units
from qexp.quant.export.packed import serialized_bytes
from qexp.quant.export.payload import payload_bytes
from qexp.quant.qat.finetune import QATConfig
from qexp.quant.unsupported import Unsupported

__all__ = [
    "PTQConfig",
    "QATConfig",
    "Quantized",
    "Unsupported",
    "check_bits",
    "check_supported",
    "layer_bits",
    "layer_names",
    "payload_bytes",
    "ptq_config",
    "qat_config",
    "quantize",
    "quantize_model",
    "reconstruction_units",
    "recovery",
    "serialized_bytes",
    "weight_grid",
]
