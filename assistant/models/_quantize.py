"""Weight-only quantization for CPU decoding: the `int8-wo` and `int4-wo` dtypes.

Decoding one token reads every weight once, so on a CPU its speed is bounded by memory bandwidth: weights
stored in 8 or 4 bits are read 2x or ~3.2x faster than bf16 ones. Each `nn.Linear` of the decoder (and the
output head) is replaced by a `WeightOnlyLinear` that keeps packed weights and calls PyTorch's own CPU kernels
(`torch._weight_int8pack_mm`: per-output-channel symmetric int8; `torch._weight_int4pack_mm_for_cpu`:
asymmetric int4 in groups of 32 along the input, scale and zero point per group, as GGUF's Q4_1). Activations
stay in bf16 (fp32 on CPUs without native bf16) and the embedding table stays as loaded (a lookup reads one
row). Imports torch: load it only when such a dtype is asked for. Not here: dynamic activation quantization (`int8`,
torch.ao), GPUs, calibration-based schemes (GPTQ, AWQ) - round-to-nearest only.
"""

from __future__ import annotations

import torch

__all__ = ["WEIGHT_ONLY_DTYPES", "WeightOnlyLinear", "quantize_weight_only"]

WEIGHT_ONLY_DTYPES = {"int8-wo": 8, "int4-wo": 4}
GROUP_SIZE = 32  # int4 group along the input dimension (GGUF Q4_0/Q4_1 use 32 too)


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
        w = linear.weight.detach().float()  # (N, K)
        n, k = w.shape
        bias = None if linear.bias is None else linear.bias.detach().to(act_dtype)
        if bits == 8:
            scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)  # (N,)
            q = torch.clamp(torch.round(w / scales[:, None]), -127, 127).to(torch.int8)
            return cls(8, k, n, q.contiguous(), scales.to(act_dtype), bias)
        groups = w.reshape(n, k // GROUP_SIZE, GROUP_SIZE)
        lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-10)
        q = torch.clamp(torch.round((groups - lo) / scale), 0, 15).to(torch.int32).reshape(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        # the kernel dequantizes as (q - 8) * scale + zero, so zero is the group's value at q = 8
        zero = lo + 8 * scale
        scale_zero = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1)  # (N, K/32, 2)
        return cls(4, k, n, packed, scale_zero.transpose(0, 1).contiguous().to(act_dtype), bias)

    @staticmethod
    def fits(linear, bits: int) -> bool:
        """int4 packing needs K a multiple of the group size and N of 16 (the kernel's tile)."""
        n, k = linear.weight.shape
        return bits == 8 or (k % GROUP_SIZE == 0 and n % 16 == 0)

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (tokens, K)
        if self.bits == 8:
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
