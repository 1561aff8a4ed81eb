"""PyTorch's own PTQ (``quant=torch_ptq``): the FX flow, the pt2e flow and the float16 cast."""
