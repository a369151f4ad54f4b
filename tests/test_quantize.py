import pytest
import torch

from assistant._decoding import DecodingConfig, DecodingStats, PromptLookupCandidates, SpeculativeConfig, greedy_decode
from assistant.models import pick_device
from assistant.models._quantize import WeightOnlyLinear
from retrieval.errors import ModelError


@pytest.mark.parametrize("bits,tolerance", [(8, 0.02), (4, 0.15)])
@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16])
def test_weight_only_linear_is_close_to_the_float_layer(bits, tolerance, act_dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(2, 3, 64)
    q = WeightOnlyLinear.from_linear(lin, bits, act_dtype)
    y = q(x.to(act_dtype)).float()
    ref = lin(x)
    assert y.shape == ref.shape == (2, 3, 48)
    err = (y - ref).abs().max() / ref.abs().max()
    assert err < tolerance
    # it is really quantized: not the float result to the last bit
    assert not torch.equal(y, ref)


@pytest.mark.parametrize("dtype", ["int8-wo", "int4-wo"])
def test_quantized_tiny_model_speculative_equals_its_own_off(tiny_model, dtype):
    from assistant.models._transformers import TransformersModel

    m = TransformersModel(tiny_model, "tiny", "cpu", dtype)
    packed = [mod for mod in m.model.modules() if isinstance(mod, WeightOnlyLinear)]
    assert len(packed) == 2 * 7 + 1 and all(mod.bits == int(dtype[3]) for mod in packed)  # 7 per layer + head
    text = " ".join(["Tidepool listens on port 8740 by default. Version history is kept for 30 days."] * 3)
    ids = m.encode_chat([{"role": "user", "content": text}])
    for penalty in (1.0, 1.3):
        cfg = DecodingConfig(max_new_tokens=50, repetition_penalty=penalty)
        runs = []
        for cand in (None, PromptLookupCandidates(SpeculativeConfig(lookup_tokens=4))):
            stats = DecodingStats()
            runs.append(([t for step in greedy_decode(m.model, ids, cfg, cand, None, stats) for t in step], stats))
        (off, _), (pl, stats) = runs
        assert pl == off and len(off) == 50 and stats.draft_tokens > 0


@pytest.mark.parametrize("dtype", ["int8", "int8-wo", "int4-wo"])
def test_quantized_dtypes_are_cpu_only(dtype, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ModelError, match=f"dtype {dtype} .* runs on the CPU only, not on cuda"):
        pick_device("cuda", dtype)
    assert pick_device("cpu", dtype) == ("cpu", dtype)


def test_weight_only_dtype_without_its_kernel_is_a_model_error(monkeypatch):
    monkeypatch.delattr(torch, "_weight_int4pack_mm_for_cpu")
    with pytest.raises(ModelError, match="int4-wo needs torch._weight_int4pack_mm_for_cpu"):
        pick_device("cpu", "int4-wo")


def test_weight_only_dtypes_take_fewer_bytes(tiny_model):
    from assistant.models._transformers import TransformersModel

    est = {d: TransformersModel(tiny_model, "tiny", "cpu", d).memory_estimate(1024)
           for d in ("bfloat16", "int8-wo", "int4-wo")}
    assert len({e["parameters"] for e in est.values()}) == 1
    sizes = [est[d]["weights_bytes"] for d in ("bfloat16", "int8-wo", "int4-wo")]
    # the embedding table stays bf16 (its rows are looked up, the output head is quantized separately)
    assert sizes[0] > sizes[1] > sizes[2]
    assert est["int8-wo"]["kv_cache_bytes"] == est["bfloat16"]["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 1024 * 2
