"""The `ragdesk_sdpa` attention: a verification pass over the KV cache without per-head copies, same logits."""

import pytest
import torch
import transformers.integrations.sdpa_attention as sdpa_module
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

from assistant._decoding import SpeculativeConfig, _cache_kw
from assistant.models import _attention
from assistant.models._base import Completion, GenerationConfig
from assistant.models._transformers import TransformersModel

from .test_decoding import prompt_ids


@pytest.fixture
def count_repeat_kv(monkeypatch):
    calls = []
    real = sdpa_module.repeat_kv

    def counted(hidden, n_rep):
        calls.append(n_rep)
        return real(hidden, n_rep)

    monkeypatch.setattr(sdpa_module, "repeat_kv", counted)
    return calls


def _verification_logits(model, ids, rows: int, cache_kind: str):
    """Logits of a `rows`-token pass after a prefill of `ids` (what a speculative step feeds)."""
    cache = (StaticCache(config=model.config, max_cache_len=len(ids) + rows + 8) if cache_kind == "static"
             else DynamicCache(config=model.config))
    kw = {_cache_kw(model): cache}
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), use_cache=True, **kw)
        return model(input_ids=torch.tensor([ids[-rows:]]), use_cache=True, **kw).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
@pytest.mark.parametrize("rows", [1, 4])
def test_verification_pass_is_bit_identical_to_sdpa_without_copying_the_cache(tiny_model, count_repeat_kv,
                                                                               dtype, cache_kind, rows):
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype).eval()
    ids = prompt_ids(AutoTokenizer.from_pretrained(tiny_model))
    assert model.config.num_attention_heads // model.config.num_key_value_heads == 2  # grouped heads
    reference = _verification_logits(model, ids, rows, cache_kind)
    copies = len(count_repeat_kv)
    # for a pass of several rows sdpa copies K and V once per layer
    assert copies == (2 * model.config.num_hidden_layers if rows > 1 else 0)

    assert _attention.use_for(model)
    assert model.config._attn_implementation == "ragdesk_sdpa"
    count_repeat_kv.clear()
    ours = _verification_logits(model, ids, rows, cache_kind)
    assert count_repeat_kv == []
    if dtype == torch.float32:
        assert torch.equal(ours, reference)
    else:  # bit-identical on this CPU; another CPU's bf16 kernels may round a row count differently
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-3)


@pytest.mark.parametrize("case", ["plain", "batch 2, mask of batch 1", "value heads wider", "query batch broadcast"])
def test_the_function_gives_sdpa_s_result_for_every_shape_it_takes(case):
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(0)
    b, kv_heads, group, p, length, d, dv = 2, 2, 3, 4, 11, 8, 8
    if case == "value heads wider":
        dv = 16
    qb = 1 if case == "query batch broadcast" else b
    query = torch.randn(qb, kv_heads * group, p, d, generator=gen)
    key = torch.randn(b, kv_heads, length, d, generator=gen)
    value = torch.randn(b, kv_heads, length, dv, generator=gen)
    mask = torch.rand(1 if case == "batch 2, mask of batch 1" else b, 1, p, length, generator=gen) > 0.3
    mask[..., 0] = True  # every row sees something
    module = SimpleNamespace(num_key_value_groups=group, is_causal=True)
    want, _ = sdpa_module.sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = _attention.ragdesk_sdpa_forward(module, query, key, value, mask, scaling=0.3)
    assert got.shape == want.shape == (b, p, kv_heads * group, dv)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_local_model_uses_it_on_cpu_and_answers_as_with_sdpa(tiny_model, count_repeat_kv, monkeypatch):
    from assistant.models import _transformers

    # proposals on every match: the cost-aware policy would pick pass widths by the clock
    original = _transformers.PromptLookupCandidates
    monkeypatch.setattr(_transformers, "PromptLookupCandidates", lambda spec: original(spec, cost_aware=False))
    model = TransformersModel(tiny_model, "tiny", dtype="float32")
    assert model.model.config._attn_implementation == "ragdesk_sdpa"
    messages = [{"role": "user", "content": "Tidepool listens on port 8740 by default. " * 3 + "Which port?"}]
    config = GenerationConfig(24, 1.0, SpeculativeConfig("prompt-lookup", lookup_tokens=3))

    def answer():
        *_, done = model.stream(messages, config)
        assert isinstance(done, Completion) and done.finish_reason in ("stop", "length")
        return done

    ours = answer()
    assert count_repeat_kv == [] and ours.speculative.draft_tokens > 0  # several-row passes ran, no copies
    model.model.set_attn_implementation("sdpa")
    reference = answer()
    assert count_repeat_kv  # the same answer under sdpa copied K/V
    assert ours.token_ids == reference.token_ids
