"""ONNX Runtime session setup, written once: execution providers by name and thread counts. Imports no torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Map "cpu" / "cuda" / "auto" (CUDA when ONNX Runtime has it) or explicit provider names to a list."""
    available = ort.get_available_providers()
    if isinstance(providers, str):
        choice = providers.lower()
        if choice == "cpu":
            return ["CPUExecutionProvider"]
        if choice in ("cuda", "auto"):
            if "CUDAExecutionProvider" in available:
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if choice == "cuda":
                raise ValueError(f"CUDAExecutionProvider is not available (have {available}); install onnxruntime-gpu")
            return ["CPUExecutionProvider"]
        raise ValueError(f"unknown providers {providers!r}: use cpu, cuda, auto or a list of provider names")
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"execution providers {missing} are not available (have {available})")
    return list(providers)


def create_session(path: str | Path, providers: str | Sequence[str] = "cpu", intra_op_threads: int | None = None,
                   inter_op_threads: int | None = None) -> ort.InferenceSession:
    """An inference session of the ONNX file at ``path``; thread counts left as None keep ONNX Runtime's defaults."""
    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    return ort.InferenceSession(str(path), options, providers=resolve_providers(providers))
