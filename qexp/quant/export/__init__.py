"""What a deployment stores and runs: the integer export of our PTQ, sizes, and the ONNX QDQ graph on ONNX Runtime."""
