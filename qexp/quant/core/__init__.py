"""The quantizer maths every method builds on: grids, observers, BatchNorm folding, fake-quantized
modules, learned step sizes."""
