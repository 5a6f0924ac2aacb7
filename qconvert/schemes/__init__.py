"""Schemes: how a whole weight tensor is rounded onto a quantization grid.

A scheme sees whole tensors (the kernels see blocks). Calibrated schemes are pure
functions over arrays — GPTQ is `accumulate_hessian` plus `gptq_quantize(W, H, ...)`
(or `gptq_gguf` for ggml block grids); the driver that runs calibration text through a
model, hooks layers and moves data between devices lives elsewhere (qconvert.calib).
"""
