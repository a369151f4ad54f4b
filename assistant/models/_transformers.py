"""The in-process backend: a transformers causal LM on this machine's CPU or GPU, with ragdesk's own
speculative decoding (prompt lookup, or a draft model attached with `attach_draft`).

Token ids, the tokenizer, the KV cache and the candidate generators stay inside this class; callers see
`ChatModel.stream` only. Text is detokenized incrementally (a window of recent tokens, not the whole answer
each step), and a piece that ends inside a multi-byte character is held back until it is complete.
Not here: the decoding loop itself (`_decoding.py`), fetching weights (`_presets.py`).
"""

from __future__ import annotations

import threading
from pathlib import Path

from retrieval.errors import ModelError

from .. import _cpuload
from ..answer import SpeculativeStats, TokenUsage
from .._decoding import (CrossTokenizerDraftCandidates, DecodingConfig, DecodingStats, DraftModelCandidates,
                         PromptLookupCandidates, greedy_decode)
from . import _attention
from ._base import ChatModel, Completion, GenerationConfig, Messages
from ._device import pick_device

__all__ = ["IncrementalDetokenizer", "TransformersModel"]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces in O(new tokens) per step: decode a short window
    that ends at the new tokens and emit what it adds (the way serving engines do), holding back a trailing
    U+FFFD while a multi-byte character is only half decoded."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # ids up to here are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, new: list[int]) -> str:
        self.ids.extend(new)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """What is left once decoding ends (a dangling partial character is emitted as is)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if after.startswith(before) else ""


class TransformersModel(ChatModel):
    supports_adapters = True
    supports_speculative = True

    def __init__(self, folder: Path, name: str, device: str = "auto", dtype: str = "auto", threads: int = 0,
                 adapter: str = "", decode_threads: int = 0, kv_cache: str = "static"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        _cpuload.mark()  # the load is the first window over which the first prefill fits its threads to the load
        self.device, self.dtype = pick_device(device, dtype)
        self.name = name
        self.folder = folder
        torch_dtype = _activation_dtype(self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
        if adapter:
            model = _apply_adapter(model, adapter)
        if self.dtype == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.dtype in ("int8-wo", "int4-wo"):
            from ._quantize import WEIGHT_ONLY_DTYPES, quantize_weight_only

            model = quantize_weight_only(model, WEIGHT_ONLY_DTYPES[self.dtype], torch_dtype)
        self.model = model.to(self.device).eval()
        _attention.use_for(self.model)  # verification passes over the KV cache as stored (no per-head copies)
        self.adapter = adapter
        self.decode_threads = decode_threads if self.device == "cpu" else 0
        self.kv_cache = kv_cache
        self.draft: TransformersModel | None = None
        self._lock = threading.Lock()  # one generation at a time: the KV cache and weights are shared
        cfg = self.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        stops = {self.tokenizer.eos_token_id}
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None:
                stops.add(tid)
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for tid in (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
            if tid is not None:
                stops.add(int(tid))
        self.stop_ids = tuple(sorted(t for t in stops if t is not None))

    # ---- tokens -----------------------------------------------------------------------------------------
    def encode_chat(self, messages: Messages) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_messages(self, messages: Messages) -> int:
        return len(self.encode_chat(messages))

    def attach_draft(self, draft: "TransformersModel") -> None:
        """Use `draft` for `speculative.method == "draft"` (same tokenizer: token drafts; another: text)."""
        if not isinstance(draft, TransformersModel):
            raise ModelError(f"draft model {draft.name} is not a local transformers model",
                             "pass a model folder or preset as --draft-model")
        self.draft = draft

    def _candidates(self, messages: Messages, config: GenerationConfig):
        spec = config.speculative
        if spec.method == "off":
            return None, "off"
        if spec.method == "draft":
            if self.draft is None:
                raise ModelError("--speculative draft needs a draft model", "pass --draft-model NAME or PATH")
            if self.draft.tokenizer.get_vocab() == self.tokenizer.get_vocab():
                return DraftModelCandidates(self.draft.model, spec), "draft"
            return CrossTokenizerDraftCandidates(self.draft.model, self.draft.tokenizer, self.tokenizer,
                                                 self.draft.encode_chat(messages), spec), "draft-universal"
        return PromptLookupCandidates(spec), "prompt-lookup"

    # ---- generation -------------------------------------------------------------------------------------
    def stream(self, messages, config, cancel=None):
        prompt_ids = self.encode_chat(messages)
        candidates, method = self._candidates(messages, config)
        decoding = DecodingConfig(config.max_new_tokens, config.repetition_penalty, self.stop_ids,
                                  self.decode_threads, self.kv_cache)
        stats = DecodingStats()
        detok = IncrementalDetokenizer(self.tokenizer)
        text, finish, error = "", "stop", ""
        with self._lock:
            try:
                for step in greedy_decode(self.model, prompt_ids, decoding, candidates, cancel, stats):
                    piece = detok.add(step)
                    if piece:
                        text += piece
                        yield piece
                finish = {"cancelled": "cancelled", "length": "length"}.get(stats.stopped, "stop")
            except Exception as exc:  # an error mid-answer ends it; the partial text is kept
                finish, error = "error", f"{type(exc).__name__}: {exc}"
        rest = detok.flush()
        if rest:
            text += rest
            yield rest
        yield Completion(text=text, finish_reason=finish, error=error,
                         usage=TokenUsage(len(prompt_ids), len(stats.tokens)),
                         speculative=SpeculativeStats(method, stats.draft_tokens, stats.accepted_tokens, stats.steps),
                         token_ids=list(stats.tokens))

    def memory_estimate(self, context: int) -> dict[str, int]:
        """Parameters, the bytes the loaded weights really take (packed quantized buffers included, tied
        tensors once) and the KV cache at `context` tokens in the activation dtype."""
        cfg = self.model.config
        tensors = {t.data_ptr(): t for t in [*self.model.parameters(), *self.model.buffers()]}
        params = sum(p.numel() for p in self.model.parameters()) + sum(
            m.in_features * m.out_features for m in self.model.modules() if hasattr(m, "weight_packed") and not m.tied)
        layers = cfg.num_hidden_layers
        kv_heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        width = _activation_dtype(self.dtype).itemsize
        kv = 2 * layers * kv_heads * head_dim * context * width
        return {"parameters": params, "weights_bytes": sum(t.nbytes for t in tensors.values()),
                "kv_cache_bytes": kv}


def _activation_dtype(dtype: str):
    """The torch dtype a model computes in: quantized weights keep bf16 activations where the CPU has native
    bf16 (fp32 otherwise, and for dynamic int8, whose kernels take fp32)."""
    import torch

    from ._device import cpu_flags

    if dtype == "int8":
        return torch.float32
    if dtype in ("int8-wo", "int4-wo"):
        return torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & cpu_flags() else torch.float32
    return getattr(torch, dtype)


def _apply_adapter(model, adapter: str):
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise ModelError(f"no LoRA adapter in {adapter}", "point --adapter at a folder written by ragdesk finetune")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
