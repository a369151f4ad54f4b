"""Weight-only quantization for CPU decoding: the `int8-wo` and `int4-wo` dtypes.

Decoding one token reads every weight once, so on a CPU its speed is bounded by memory bandwidth: weights
stored in 8 or 4 bits are read 2x or ~3.2x faster than bf16 ones. Each `nn.Linear` of the decoder (and the
output head) is replaced by a `WeightOnlyLinear` that keeps packed weights and calls PyTorch's own CPU kernels
(`torch._weight_int8pack_mm`: per-output-channel symmetric int8; `torch._weight_int4pack_mm_for_cpu`:
asymmetric int4 in groups of 32 along the input, scale and zero point per group, as GGUF's Q4_1). Activations
stay in bf16 (fp32 on CPUs without native bf16) and the embedding table stays as loaded (a lookup reads one
row). Imports torch: load it only when such a dtype is asked for. Not here: dynamic activation quantization (`int8`,
torch.ao), GPUs, calibration-based schemes (GPTQ, AWQ) - round-to-nearest only.

The packed kernels are made for decoding (a few rows at a time); on a prefill of hundreds of rows they are 2.5-3x
slower than the activation dtype's own matmul (measured here: a 600 x 1536 by 1536 x 8960 product takes 134 ms
in int4, 165 ms in int8 and 53 ms in bf16). So from `DEQUANT_MIN_ROWS` rows on a layer unpacks its weights into
a scratch buffer of the activation dtype (14 ms for that int4 matrix, 3 ms for int8) and multiplies with that:
same weights, one more rounding to the activation dtype, no lasting memory but the one buffer per thread.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["WEIGHT_ONLY_DTYPES", "WeightOnlyLinear", "quantize_weight_only"]

WEIGHT_ONLY_DTYPES = {"int8-wo": 8, "int4-wo": 4}
GROUP_SIZE = 32  # int4 group along the input dimension (GGUF Q4_0/Q4_1 use 32 too)
# from this many rows (tokens) on, a layer multiplies with its weights unpacked instead of the packed kernel;
# the crossover measured here: int8 at 32-64 rows, int4 at ~128 (its unpacking costs more)
DEQUANT_MIN_ROWS = {8: 64, 4: 128}
DEQUANT_MAX_WEIGHTS = 1 << 25  # larger layers (a 150K-token output head) keep the kernel: no 100s-of-MB buffer
QUANTIZE_ROWS = 4096  # rows quantized at a time (a multiple of the int4 packing block)
_INT4_BLOCK = 64  # the CPU int4 packing interleaves rows n and n + 32 of each block of 64 rows, per input column
_scratch = threading.local()
_int4_layout: list[bool] = []  # checked once per process: [whether `_unpack_int4` inverts the CPU packing]


def _buffer(name: str, numel: int, dtype):
    """A scratch tensor of at least `numel` elements, kept per thread and reused by every layer."""
    buf = getattr(_scratch, name, None)
    if (buf is None or buf.numel() < numel or buf.dtype != dtype
            or buf.is_inference() != torch.is_inference_mode_enabled()):  # an inference tensor stays in there
        buf = torch.empty(numel, dtype=dtype)
        setattr(_scratch, name, buf)
    return buf[:numel]


def _unpack_int4(packed, n: int, k: int, out):
    """The (n, k) int4 values (as uint8) that `_convert_weight_to_int4pack_for_cpu(q, 1)` packed into `packed`
    ((n, k / 2) bytes: per block of 64 rows and per column, 32 bytes whose low nibbles hold rows 0-31 and high
    nibbles rows 32-63), written into `out` ((n, k) uint8)."""
    src = packed.view(n // _INT4_BLOCK, k, _INT4_BLOCK // 2).transpose(1, 2)  # (blocks, 32, k)
    dst = out.view(n // _INT4_BLOCK, _INT4_BLOCK, k)
    torch.bitwise_and(src, 15, out=dst[:, : _INT4_BLOCK // 2])
    torch.bitwise_right_shift(src, 4, out=dst[:, _INT4_BLOCK // 2:])
    return out


def int4_layout_known() -> bool:
    """Whether this torch packs int4 for the CPU as `_unpack_int4` expects (checked on random values once);
    when it does not, int4 layers use the packed kernel for every input."""
    if not _int4_layout:
        q = torch.randint(0, 16, (2 * _INT4_BLOCK, 2 * GROUP_SIZE), dtype=torch.int32,
                          generator=torch.Generator().manual_seed(0))
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            ok = (packed.dtype == torch.uint8 and packed.numel() * 2 == q.numel()
                  and torch.equal(_unpack_int4(packed, *q.shape, torch.empty(q.shape, dtype=torch.uint8)).int(), q))
        except (RuntimeError, AttributeError):
            ok = False
        _int4_layout.append(ok)
    return _int4_layout[0]


def _in_known_int4_blocks(rows: int) -> bool:
    """Whether int4 weights of `rows` output rows are whole packing blocks in the layout `_unpack_int4` reads
    (so they can be packed in row chunks and unpacked)."""
    return rows % _INT4_BLOCK == 0 and int4_layout_known()


class WeightOnlyLinear(torch.nn.Module):
    """y = x W^T + b with W held as int8 (N, K) + scales (N,), or as int4 packed for the CPU kernel +
    (K / 32, N, 2) scales and zero points. Built from an `nn.Linear` with `from_linear`."""

    def __init__(self, bits: int, in_features: int, out_features: int, weight, scales, bias):
        super().__init__()
        self.bits, self.in_features, self.out_features = bits, in_features, out_features
        self.tied = False  # its float weight was the embedding table's (counted there as parameters)
        self.register_buffer("weight_packed", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear, bits: int, act_dtype):
        weight = linear.weight.detach()  # (N, K)
        n, k = weight.shape
        bias = None if linear.bias is None else linear.bias.detach().to(act_dtype)
        # a few thousand rows at a time, so that the float32 copies of a 150K-row output head never exist at
        # once (they took the 1.5B's load to 7.2 GB); int4 rows only in whole packing blocks, in a known layout
        step = QUANTIZE_ROWS if bits == 8 or _in_known_int4_blocks(n) else n
        if bits == 8:
            q, scales = torch.empty(n, k, dtype=torch.int8), torch.empty(n, dtype=act_dtype)
            for r in range(0, n, step):
                w = weight[r:r + step].float()
                s = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)  # per output row
                q[r:r + step] = torch.clamp(torch.round(w / s[:, None]), -127, 127)
                scales[r:r + step] = s
            return cls(8, k, n, q, scales, bias)
        packed = torch.empty(n, k // 2, dtype=torch.uint8)
        scale_zero = torch.empty(k // GROUP_SIZE, n, 2, dtype=act_dtype)
        for r in range(0, n, step):
            groups = weight[r:r + step].float().reshape(-1, k // GROUP_SIZE, GROUP_SIZE)
            lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
            scale = ((hi - lo) / 15).clamp(min=1e-10)
            q = torch.clamp(torch.round((groups - lo) / scale), 0, 15).to(torch.int32).reshape(-1, k)
            packed[r:r + step] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1).view(-1, k // 2)
            # the kernel dequantizes as (q - 8) * scale + zero, so zero is the group's value at q = 8
            zero = lo + 8 * scale
            scale_zero[:, r:r + step] = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1)
        return cls(4, k, n, packed, scale_zero, bias)

    @staticmethod
    def fits(linear, bits: int) -> bool:
        """int4 packing needs K a multiple of the group size and N of 16 (the kernel's tile)."""
        n, k = linear.weight.shape
        return bits == 8 or (k % GROUP_SIZE == 0 and n % 16 == 0)

    def can_unpack(self) -> bool:
        n, k = self.out_features, self.in_features
        return n * k <= DEQUANT_MAX_WEIGHTS and (self.bits == 8 or _in_known_int4_blocks(n))

    def unpacked_weight(self, dtype):
        """The (N, K) weights in `dtype`, as the kernel sees them, in this thread's scratch buffer (valid until
        the next layer unpacks)."""
        n, k = self.out_features, self.in_features
        w = _buffer("weight", n * k, dtype).view(n, k)
        if self.bits == 8:
            w.copy_(self.weight_packed)
            return w.mul_(self.scales.to(dtype)[:, None])
        q = _unpack_int4(self.weight_packed, n, k, _buffer("int4", n * k, torch.uint8).view(n, k))
        groups = w.copy_(q).sub_(8).view(n, k // GROUP_SIZE, GROUP_SIZE)  # small integers: exact in any dtype
        scale, zero = (t.t()[..., None] for t in self.scales.to(dtype).unbind(-1))  # (N, K / 32, 1) each
        # value = (q - 8) * scale + zero, rounded to `dtype` after the product and the sum (the kernel rounds once;
        # one fused addcmul would too but runs 4x slower here, and the difference is a bf16 ulp)
        return groups.mul_(scale).add_(zero).view(n, k)

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (tokens, K)
        if x2.shape[0] >= DEQUANT_MIN_ROWS[self.bits] and self.can_unpack():
            y = torch.nn.functional.linear(x2, self.unpacked_weight(x2.dtype))
        elif self.bits == 8:
            y = torch._weight_int8pack_mm(x2, self.weight_packed, self.scales)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2, self.weight_packed, GROUP_SIZE, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def quantize_weight_only(model, bits: int, act_dtype):
    """Replace every fitting `nn.Linear` in `model` (the output head included) by a `WeightOnlyLinear`, in
    place; returns the model. Layers that do not fit the int4 kernel's shape stay as they are."""
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and WeightOnlyLinear.fits(mod, bits)]
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    with torch.no_grad():
        for name, mod in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            packed = WeightOnlyLinear.from_linear(mod, bits, act_dtype)
            packed.tied = mod.weight is embedding
            setattr(parent, child, packed)
    return model
