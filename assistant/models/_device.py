"""Which device and dtype a local model runs on: CUDA bf16 > MPS fp16 > CPU. On a CPU with native bf16
instructions (AVX512-BF16 or AMX) "auto" is int4 weight-only with bf16 activations, where this torch has the
kernel and packs int4 as ragdesk unpacks it (measured here against bf16 on the default model, 60 questions of
the bundled suite in one `ragdesk eval compare`: 2.0x the tokens/s, answers 31% sooner, first token 16% later,
quality within its intervals); bf16 where it has not; fp32 on CPUs without native bf16 (int4 there is
unmeasured). Not here: loading anything."""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import ModelError

__all__ = ["cpu_flags", "pick_device"]


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def pick_device(device: str = "auto", dtype: str = "auto", weight_only: bool = True) -> tuple[str, str]:
    """(device, dtype) after resolving "auto"; a combination that cannot run is a one-line ModelError.
    `weight_only=False`: "auto" never picks a quantized dtype (training needs float weights)."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but no CUDA GPU is available", "use --device auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("device mps was asked for but this machine has no Apple GPU", "use --device auto or cpu")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device == "mps":
            dtype = "float16"
        elif not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            dtype = "float32"
        else:
            dtype = "int4-wo" if weight_only and _int4_runs(torch) else "bfloat16"
    if dtype in ("int8", "int8-wo", "int4-wo") and device != "cpu":
        kind = "dynamic" if dtype == "int8" else "weight-only"
        raise ModelError(f"dtype {dtype} ({kind} quantization) runs on the CPU only, not on {device}",
                         "use --device cpu, or --dtype auto")
    kernel = {"int8-wo": "_weight_int8pack_mm", "int4-wo": "_weight_int4pack_mm_for_cpu"}.get(dtype)
    if kernel and not hasattr(torch, kernel):
        raise ModelError(f"dtype {dtype} needs torch.{kernel}, which torch {torch.__version__} lacks",
                         "upgrade torch (2.6 or later), or use --dtype int8 or auto")
    return device, dtype


def _int4_runs(torch) -> bool:
    if not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        return False
    from ._quantize import int4_layout_known

    return int4_layout_known()
