"""What a deployment stores and runs: the integer export of our PTQ, sizes, the ONNX QDQ graph on ONNX Runtime
(``deploy.py``: written, run and timed for ``export=onnx``), and the latency protocol (``timing.py``)."""
