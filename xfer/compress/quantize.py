"""int8 with ONNX Runtime's quantisation tools, and PyTorch's own dynamic quantisation as a baseline.

- dynamic: weights stored as int8, activations quantised on the fly per batch; ONNX Runtime's choice for
  transformer and linear layers (MatMul, Gather of the embeddings).
- static: QDQ format with activation ranges calibrated on a sample of the training split; ONNX Runtime's
  maintainers recommend it over dynamic for CNNs (convolutions need fixed activation scales to run in int8).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from xfer.errors import XferError

MODES = ("dynamic", "static")


def preprocess(src: Path, dst: Path) -> Path:
    """The graph made ready to quantise: the exporter's intermediate shape annotations dropped (the dynamo exporter
    leaves some that ONNX's own inference contradicts, which stops the quantiser), then ONNX Runtime's
    quant_pre_process (shape inference, graph optimisation) where it succeeds. Returns the file to quantise."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    stripped = dst.with_name(dst.stem + ".stripped.onnx")
    onnx.save(model, str(stripped))
    import os
    import tempfile

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        # ONNX Runtime's symbolic shape inference dumps its partial graph into the working directory when it fails
        os.chdir(scratch)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(stripped.resolve()), str(dst.resolve()), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; the stripped graph quantises as it is
            return stripped
        finally:
            os.chdir(cwd)
    stripped.unlink(missing_ok=True)
    return dst


def quantize_onnx(src: Path, dst: Path, mode: str, calibration: Iterable[dict[str, np.ndarray]] | None = None) -> dict:
    """int8 copy of the graph at `src` written to `dst`; `calibration` yields input batches (static only)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if mode not in MODES:
        raise XferError(f"--int8 must be one of {', '.join(MODES)}, got {mode!r}: dynamic suits transformer (text) "
                        f"runs, static suits CNNs (it calibrates on training images).")
    dst = Path(dst)
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantiser logs a hint per graph at WARNING
    pre = preprocess(Path(src), dst.with_name(dst.stem + ".pre.onnx"))
    try:
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=False)
            return {"mode": "dynamic", "weights": "int8", "activations": "dynamic uint8"}
        if calibration is None:
            raise XferError("Static int8 needs calibration batches from the training split.")

        class Reader(CalibrationDataReader):
            def __init__(self, batches):
                self.batches = iter(batches)

            def get_next(self):
                return next(self.batches, None)

        batches = list(calibration)
        quantize_static(str(pre), str(dst), Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return {"mode": "static", "format": "QDQ", "weights": "int8 per channel", "activations": "int8",
                "calibration_examples": int(sum(len(next(iter(b.values()))) for b in batches))}
    finally:
        pre.unlink(missing_ok=True)


def int8_operators(path: Path) -> dict[str, int]:
    """How many int8 weight tensors and quantised operators the graph holds (what proves it was quantised)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    int8 = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        if any(k in node.op_type for k in ("Quant", "Integer")):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"int8_initializers": int8, **ops}


def torch_dynamic_int8(model):
    """PyTorch's own dynamic quantisation of Linear layers (torch.ao): the baseline row, where it still works."""
    import torch
    from torch import nn

    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    except (AttributeError, RuntimeError, NotImplementedError) as e:
        raise XferError(f"PyTorch dynamic quantisation is not available here: {e}") from e
