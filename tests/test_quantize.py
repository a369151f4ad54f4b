import pytest
import torch

from assistant._decoding import DecodingConfig, DecodingStats, PromptLookupCandidates, SpeculativeConfig, greedy_decode
from assistant.models import pick_device
from assistant.models import _quantize
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


def _kernel(q, x):
    if q.bits == 8:
        return torch._weight_int8pack_mm(x, q.weight_packed, q.scales)
    return torch._weight_int4pack_mm_for_cpu(x, q.weight_packed, _quantize.GROUP_SIZE, q.scales)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16])
def test_unpacked_weights_are_the_kernels_weights(bits, act_dtype):
    torch.manual_seed(1)
    lin = torch.nn.Linear(96, 128)
    q = WeightOnlyLinear.from_linear(lin, bits, act_dtype)
    assert q.can_unpack()
    eye = torch.eye(96, dtype=act_dtype)
    seen = _kernel(q, eye).t().float()  # (N, K): what the packed kernel multiplies by
    w = q.unpacked_weight(act_dtype).float()
    assert w.shape == (128, 96)
    # fp32: the same to rounding; bf16: rounded after the product and the sum (the kernel rounds once)
    tol = (1e-6 if act_dtype == torch.float32 else 2**-7) * seen.abs().max()
    assert (w - seen).abs().max() <= tol
    # a wrong unpacking (rows or nibbles swapped) would be off by the weights' own size
    assert (w - seen.roll(1, 0)).abs().max() > 20 * tol


@pytest.mark.parametrize("bits", [8, 4])
def test_long_inputs_use_the_unpacked_weights_and_short_ones_the_kernel(bits, monkeypatch):
    torch.manual_seed(2)
    lin = torch.nn.Linear(64, 128, bias=True).to(torch.bfloat16)
    q = WeightOnlyLinear.from_linear(lin, bits, torch.bfloat16)
    rows = _quantize.DEQUANT_MIN_ROWS[bits]
    long_x, short_x = torch.randn(2, rows, 64, dtype=torch.bfloat16), torch.randn(rows - 1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected_long = (_kernel(q, long_x.reshape(-1, 64)) + q.bias).float()
        expected_short = (_kernel(q, short_x) + q.bias).float()
        kernel = "_weight_int8pack_mm" if bits == 8 else "_weight_int4pack_mm_for_cpu"
        calls = []
        real = getattr(torch, kernel)
        monkeypatch.setattr(torch, kernel, lambda *a: calls.append(a[0].shape[0]) or real(*a))
        y_long, y_short = q(long_x).float(), q(short_x).float()
    assert calls == [rows - 1]  # only the short input went through the kernel
    assert y_long.shape == (2, rows, 128)
    assert (y_long.reshape(-1, 128) - expected_long).abs().max() <= 0.02 * expected_long.abs().max()
    assert torch.equal(y_short, expected_short)


def test_int4_layers_the_unpacking_does_not_fit_keep_the_kernel(monkeypatch):
    lin = torch.nn.Linear(64, 48)  # 48 rows: the kernel's tile fits, the 64-row packing block does not
    assert WeightOnlyLinear.fits(lin, 4) and not WeightOnlyLinear.from_linear(lin, 4, torch.float32).can_unpack()
    assert WeightOnlyLinear.from_linear(lin, 8, torch.float32).can_unpack()
    monkeypatch.setattr(_quantize, "_int4_layout", [False])  # a torch that packs int4 some other way
    assert not WeightOnlyLinear.from_linear(torch.nn.Linear(64, 128), 4, torch.float32).can_unpack()


def test_the_int4_packing_is_the_one_unpacking_expects():
    # if a torch release changes its CPU packing, this fails here (and int4 layers fall back to the kernel)
    _quantize._int4_layout.clear()
    assert _quantize.int4_layout_known()


@pytest.mark.parametrize("dtype", ["int8-wo", "int4-wo"])
@pytest.mark.parametrize("unpacked_prefill", [False, True])
def test_quantized_tiny_model_speculative_equals_its_own_off(tiny_model, dtype, unpacked_prefill, monkeypatch):
    if unpacked_prefill:  # the prompt's prefill multiplies by unpacked weights, the steps by the kernel
        monkeypatch.setattr(_quantize, "DEQUANT_MIN_ROWS", {8: 16, 4: 16})
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


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizing_in_row_chunks_gives_the_whole_layers_packing(bits, monkeypatch):
    torch.manual_seed(3)
    lin = torch.nn.Linear(64, 320)  # 5 chunks of 64 rows
    whole = WeightOnlyLinear.from_linear(lin, bits, torch.bfloat16)
    monkeypatch.setattr(_quantize, "QUANTIZE_ROWS", 64)
    chunked = WeightOnlyLinear.from_linear(lin, bits, torch.bfloat16)
    assert torch.equal(chunked.weight_packed, whole.weight_packed) and torch.equal(chunked.scales, whole.scales)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert torch.equal(chunked(x), whole(x))


@pytest.mark.parametrize("flags,layout,expected", [
    ({"avx2", "avx512_bf16"}, True, "int4-wo"),    # native bf16 and the int4 packing ragdesk unpacks
    ({"avx2", "amx_bf16"}, True, "int4-wo"),
    ({"avx2", "avx512_bf16"}, False, "bfloat16"),  # a torch that packs int4 some other way
    ({"avx2"}, True, "float32"),                   # no native bf16: unmeasured there, so fp32 as before
])
def test_auto_dtype_on_a_cpu(flags, layout, expected, monkeypatch):
    from assistant.finetune import training_dtype
    from assistant.models import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(_device, "cpu_flags", lambda: flags)
    monkeypatch.setattr(_quantize, "_int4_layout", [layout])
    assert pick_device("auto", "auto") == ("cpu", expected)
    # training never gets a quantized dtype: bf16 wherever the CPU has it
    assert pick_device("auto", "auto", weight_only=False) == ("cpu", "float32" if expected == "float32" else "bfloat16")
    assert training_dtype("auto", "auto") == ("cpu", "float32" if expected == "float32" else "bfloat16")


def test_auto_dtype_without_the_int4_kernel_is_bf16(monkeypatch):
    from assistant.models import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_device, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.delattr(torch, "_weight_int4pack_mm_for_cpu")
    assert pick_device("cpu", "auto") == ("cpu", "bfloat16")
