"""Data for the model: synthetic motion clips, a real-video clip reader, and calibration sets for FP16/INT8.

Precision: ``calibset`` (recorded clip selections), ``int8`` (explicit Q/DQ for TensorRT, the fastest
ONNX Runtime CPU form), ``fp16`` (FP16 with measured FP32 islands), ``build.precision_onnx`` (cached,
used by ``make engine``), ``report`` (accuracy by precision) and ``bench_precision`` (CPU latency).
"""
