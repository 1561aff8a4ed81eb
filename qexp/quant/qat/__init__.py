"""Quantization-aware training: our PTQ model fine-tuned with learned step sizes and distillation (quant=qat)."""
