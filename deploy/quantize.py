"""The int8 dense graph: ONNX Runtime's dynamic quantization of the exported fp32 graph.

Every MatMul (the ViT's linear layers and attention projections) gets int8 weights, one scale per output
channel; its activations are quantized on the fly from each run's observed range (no calibration set).
Convolutions stay fp32: ORT's ConvInteger was slower than the fp32 convolution on this CPU (tiny@128's
dense graph: 11.4 ms with convolutions quantized, 6.1 ms without, 7.4 ms all fp32; AMD EPYC, AVX-512 VNNI).
"""

from __future__ import annotations

import logging
from pathlib import Path

INT8_GRAPH = "dense-int8.onnx"
# The int8 graph is kept when, on the export's check frames, no output differs from PyTorch's by more than
# this share of that output's largest magnitude (random-weight models of every size: 1-3 %).
INT8_TOLERANCE = 0.1


def quantize_dense(source: Path, target: Path) -> None:
    """Write the int8 variant of the fp32 ONNX graph at `source` to `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # the quantizer's advice to pre-process for static quantization
    try:
        quantize_dynamic(Path(source), Path(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.disable(logging.NOTSET)
