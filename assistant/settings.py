"""The one settings object: flags > environment (`RAGDESK_*`) > `ragdesk.toml` > defaults.

Every field is documented here and nowhere else; nothing else in ragdesk reads `os.environ`. `ragdesk.toml`
is looked for in the working directory, then in the home folder. Values from the environment and the file are
converted to the field's type and checked; a bad one is a `ConfigError` naming its source.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigError

from ._decoding import KV_CACHES

__all__ = ["Settings", "load_settings"]

SPECULATIVE = ("off", "prompt-lookup", "draft")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8", "int8-wo", "int4-wo")
_KINDS = {"int": int, "float": (int, float), "str": (str, os.PathLike)}
_HINTS = {"int": "use a whole number, e.g. 4", "float": "use a finite number, e.g. 0.5",
          "str": 'quote it in ragdesk.toml, e.g. model = "smollm2-135m"'}


def _default_home() -> str:
    import platformdirs

    return platformdirs.user_data_dir("ragdesk", appauthor=False)


@dataclass
class Settings:
    home: str = field(default_factory=_default_home, metadata={"doc": "folder holding all state (RAGDESK_HOME)"})
    models_dir: str = field(default="", metadata={"doc": "where converted models are cached (default HOME/models)"})
    collection: str = field(default="default", metadata={"doc": "collection that index/search/ask use"})
    embedder: str = field(default="minilm", metadata={"doc": "embedder name or local sentence-transformers folder"})
    chunk_tokens: int = field(default=192, metadata={"doc": "target chunk size in embedder tokens"})
    chunk_overlap: int = field(default=32, metadata={"doc": "overlap between neighbouring chunks, in tokens"})
    max_file_mb: float = field(default=50.0, metadata={"doc": "larger files are skipped by index, with a message"})
    top_k: int = field(default=4, metadata={"doc": "passages retrieved per question"})
    search_mode: str = field(default="hybrid", metadata={"doc": "hybrid, dense or bm25"})
    abstain: str = field(default="auto", metadata={"doc": "auto: decline without generating when retrieval "
                                                   "evidence is below the collection's fitted thresholds "
                                                   "(ragdesk eval calibrate); off: always generate"})
    model: str = field(default="smollm2-135m", metadata={"doc": "preset name, HF id, model folder or .gguf file"})
    base_url: str = field(default="", metadata={"doc": "OpenAI-compatible server for --model NAME "
                                                  "(http://HOST:PORT/v1; or give --model URL#NAME)"})
    api_key: str = field(default="", metadata={"doc": "API key for the server (RAGDESK_API_KEY); never printed "
                                                 "or stored", "secret": True})
    request_timeout: float = field(default=120.0, metadata={"doc": "seconds to wait for a server's next "
                                                                 "chunk (and its first)"})
    connect_timeout: float = field(default=10.0, metadata={"doc": "seconds to wait for a server to accept "
                                                                "the connection"})
    concurrency: int = field(default=1, metadata={"doc": "answers at once in eval and ask --batch (pays "
                                                          "off against a server)"})
    draft_model: str = field(default="", metadata={"doc": "draft model for --speculative draft (preset, id, path)"})
    adapter: str = field(default="", metadata={"doc": "LoRA adapter folder applied on top of the model"})
    speculative: str = field(default="prompt-lookup", metadata={"doc": "off, prompt-lookup or draft"})
    lookup_tokens: int = field(default=4, metadata={"doc": "most tokens proposed per prompt-lookup step"})
    lookup_ngram: int = field(default=3, metadata={"doc": "longest n-gram matched by prompt lookup"})
    draft_tokens: int = field(default=5, metadata={"doc": "tokens the draft model proposes per step"})
    max_new_tokens: int = field(default=256, metadata={"doc": "longest answer, in model tokens"})
    repetition_penalty: float = field(default=1.1, metadata={"doc": "penalty on tokens already generated (1 = off)"})
    context_window: int = field(default=0, metadata={"doc": "prompt + answer token budget (0 = min(model, 4096))"})
    device: str = field(default="auto", metadata={"doc": "auto, cpu, cuda or mps"})
    dtype: str = field(default="auto", metadata={"doc": "auto (int4-wo on a CPU with native bf16, else float32; bfloat16 on CUDA, float16 on MPS), float32, bfloat16, float16, int8 (CPU, dynamic), int8-wo or int4-wo (CPU, weight-only)"})
    threads: int = field(default=0, metadata={"doc": "CPU threads for torch (0 = torch's default)"})
    decode_threads: int = field(default=0, metadata={"doc": "CPU threads for the decoding steps after the prefill (0 = as threads, and the prefill and the steps on fewer while other programs keep CPUs busy; the chat app's engine uses one fewer than the CPUs, leaving the screen a core)"})
    kv_cache: str = field(default="static", metadata={"doc": "static (preallocated per answer; faster, measured "
                                                              "in ragdesk bench) or dynamic (grows per token)"})
    price_input_per_1k: float = field(default=0.00015, metadata={"doc": "$ per 1K prompt tokens (price table)"})
    price_output_per_1k: float = field(default=0.0006, metadata={"doc": "$ per 1K completion tokens"})
    device_cost_per_hour: float = field(default=0.05, metadata={"doc": "$ per hour of the device's time"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            # values set in code (Settings(top_k=True)) get the checks that _coerce gives the file and env
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, _KINDS[f.type]):
                raise ConfigError(f"{f.name}={value!r} is not a valid {f.type}", _HINTS[f.type])
            if f.type == "float" and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value!r} is not a valid float", _HINTS["float"])
        checks = [("speculative", SPECULATIVE), ("device", DEVICES), ("dtype", DTYPES), ("kv_cache", KV_CACHES),
                  ("search_mode", ("hybrid", "dense", "bm25"))]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid", f"use one of {', '.join(allowed)}")
        for name in ("chunk_tokens", "top_k", "max_new_tokens", "lookup_tokens", "lookup_ngram", "draft_tokens",
                     "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("price_input_per_1k", "price_output_per_1k", "device_cost_per_hour", "context_window",
                     "threads", "decode_threads", "chunk_overlap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        for name in ("request_timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive number of seconds")
        if not self.max_file_mb > 0:
            raise ConfigError(f"max_file_mb={self.max_file_mb} must be a positive number of megabytes")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty={self.repetition_penalty} must be positive")
        if not self.collection or "/" in self.collection or self.collection.startswith("."):
            raise ConfigError(f"collection name {self.collection!r} is not valid", "use letters, digits, - and _")

    # ---- paths ------------------------------------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    def collection_path(self, name: str | None = None) -> Path:
        return self.home_path / "collections" / (name or self.collection)

    @property
    def models_path(self) -> Path:
        return self.home_path / "models"

    @property
    def history_db(self) -> Path:
        return self.home_path / "history.db"

    @property
    def evals_db(self) -> Path:
        return self.home_path / "evals.db"

    def to_dict(self, secrets: bool = False) -> dict[str, Any]:
        """Every setting; secrets (the API key) are shown as "***" when set, unless `secrets`."""
        out = dataclasses.asdict(self)
        if not secrets:
            for f in fields(Settings):
                if f.metadata.get("secret") and out[f.name]:
                    out[f.name] = "***"
        return out

    @staticmethod
    def docs() -> dict[str, str]:
        return {f.name: f.metadata.get("doc", "") for f in fields(Settings)}


def _coerce(name: str, raw: Any, source: str) -> Any:
    """`raw` as the field's type, refusing what would only fit by losing or inventing something.

    A TOML `true` is not the number 1, `4.9` is not the whole number 4, `nan` and `inf` are no price or
    penalty, and a TOML number is no model name: each is a ConfigError naming the source, field and value.
    """
    ftype = {f.name: f.type for f in fields(Settings)}[name]
    bad = ConfigError(f"{source}: {name}={raw!r} is not a valid {ftype}", _HINTS.get(ftype))
    if isinstance(raw, bool):
        raise bad
    if ftype == "int":
        if isinstance(raw, float):
            raise bad
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise bad from None
    if ftype == "float":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value):
            raise bad
        return value
    if isinstance(raw, os.PathLike):  # a click.Path flag
        return os.fspath(raw)
    if not isinstance(raw, str):
        raise bad
    return raw


def load_settings(flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Settings:
    """Resolve settings from the four layers; `flags` holds only options the user actually gave."""
    environ = dict(os.environ) if environ is None else environ
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    env_home = environ.get("RAGDESK_HOME")
    home = Path(env_home).expanduser() if env_home else None
    for candidate in [(cwd or Path.cwd()) / "ragdesk.toml", (home or Path(_default_home())) / "ragdesk.toml"]:
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{candidate}: {exc}", "fix the TOML syntax") from None
            for key, raw in data.items():
                key = key.replace("-", "_")
                if key not in names:
                    raise ConfigError(f"{candidate}: unknown setting {key!r}",
                                      "see `ragdesk models --settings` for the list")
                values[key] = _coerce(key, raw, str(candidate))
            break
    for key in names:
        raw = environ.get("RAGDESK_" + key.upper())
        if raw is not None and raw != "":
            values[key] = _coerce(key, raw, "RAGDESK_" + key.upper())
    for key, raw in (flags or {}).items():
        if raw is not None:
            values[key] = _coerce(key, raw, "--" + key.replace("_", "-"))
    return Settings(**values)
