"""Frozen pretrained bodies through ONNX Runtime on the CPU, checked against torch before they are used."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn


class OrtBackbone(nn.Module):
    """A frozen network run by ONNX Runtime on the CPU: 3-8× eager torch for EfficientNet-style bodies on a
    few cores (depthwise convolutions are where eager CPU torch is slowest). Inference only; it pickles (as
    its ONNX bytes) so the Ray executor can ship it to actors."""

    def __init__(self, onnx_bytes: bytes, norm: Any = None, threads: int | None = None) -> None:
        super().__init__()
        self.onnx_bytes, self.threads = onnx_bytes, threads
        self.plada_norm = norm
        self._session: Any = None

    def _sess(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads or torch.get_num_threads()
            so.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx_bytes, so, providers=["CPUExecutionProvider"])
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self._sess().run(None, {"x": arr})[0])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state


def for_cpu_inference(model: nn.Module, size: tuple[int, int], channels: int = 3, *, onnx: bool = True) -> nn.Module:
    """``model`` exported to ONNX Runtime when it is installed and ``onnx`` is on (``PLADA_ONNX=0`` turns it
    off on either side), else as is.

    The exported graph is checked against torch on one input before it is used: a network the exporter gets
    wrong falls back to eager torch instead of producing wrong features."""
    if not onnx:
        return model
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return model
    model = model.eval().cpu()
    x = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buf,  # type: ignore[arg-type]  # a file object works (torch's docs); its annotation says paths only
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}},
                dynamo=False,
                opset_version=17,
            )
        ort_model = OrtBackbone(buf.getvalue(), getattr(model, "plada_norm", None))
        with torch.no_grad():
            ref, got = model(x), ort_model(x)
    except Exception:  # any exporter or runtime failure: eager torch is always correct
        return model
    if ref.shape != got.shape or not torch.allclose(ref, got, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
        return model
    return ort_model
