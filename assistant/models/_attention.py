"""Attention for verification passes on a CPU without copying the KV cache: the `ragdesk_sdpa` implementation.

A model with grouped-query attention (SmolLM2: 9 query heads over 3 key/value heads; Qwen2.5: 12 over 2) keeps
one K/V head per group. For a single query row and for a prefill, transformers' `sdpa` path lets SDPA read the
shared heads as they are; for a pass of several rows with a mask (each verification pass of speculative
decoding over a KV cache) it copies every K/V head once per query head in the group (`repeat_kv`), every layer,
every step: 1.8 MB written per layer of SmolLM2 at 800 tokens of context, about what the layer's int4 weights
take.

Here such a pass folds the group's query heads into the rows of their K/V head instead ((b, heads, p, d) ->
(b, kv_heads, group * p, d), the mask repeated to match), as transformers already does for one row, so SDPA runs
on the cache as stored. Same kernel, same dot products: here the logits are bit-identical to `sdpa`'s in the
tests (which require it in fp32, and bf16 within 1e-3) and in a 4-row pass of SmolLM2-135M; in bf16 the
kernel's inner products may still round differently for another row count, so over long answers a bf16 model
can part from `sdpa`'s output (3 of 8 answers under prompt lookup), as it already parts between row counts.
Measured here, a 4-row pass of SmolLM2-135M int4-wo over an 800-token context, steps alternated with `sdpa` in
one process: 18.0 against 20.0 ms (p10, 2 threads); one-row steps: no change.
`benchmarks/profile_decode.py --attention ragdesk_sdpa,sdpa` compares the two on whole answers. What is still
copied is the mask, repeated per group (a few KB). Every other call (one row, a prefill without a mask, GPUs,
no groups, a query batch that broadcasts) goes to transformers' own function; a masked prefill over a filled
cache is folded as well (ragdesk's prefills start empty, unmasked).
"""

from __future__ import annotations

import functools

NAME = "ragdesk_sdpa"


def ragdesk_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                         scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature; returns (output (b, p, heads, value head size), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, p, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    if (p == 1 or group == 1 or attention_mask is None or attention_mask.dtype != torch.bool
            or attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or key.shape[0] != b
            or query.device.type != "cpu" or dropout or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or heads != kv_heads * group):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # query heads h = k * group + j use K/V head k: rows (j, i) of head k's block, j-major
    q = query.reshape(b, kv_heads, group * p, d)
    mask = attention_mask.expand(b, 1, p, kv_len).unsqueeze(2).expand(b, 1, group, p, kv_len)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=mask.reshape(b, 1, group * p, kv_len), scale=scaling)
    return out.view(b, heads, p, value.shape[-1]).transpose(1, 2).contiguous(), None


def use_for(model) -> bool:
    """Switch a loaded transformers model on the CPU from `sdpa` to `ragdesk_sdpa` (registered on first use,
    with `sdpa`'s mask function: the masks are the same). Returns whether it did; other implementations
    (eager, flash) and models that do not take one stay as they are."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or model.device.type != "cpu":
        return False
    _register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, KeyError, AttributeError):
        return False
    return model.config._attn_implementation == NAME


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, ragdesk_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
