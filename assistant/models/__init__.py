"""Generators behind one interface (`ChatModel`) and the one resolver that turns a model spec into a model.

A spec is a registered name (tests register fakes), a preset, a local model folder, a `.gguf` file, a cached
Hugging Face id, or a server: `http(s)://HOST:PORT/v1#MODEL`, or a bare MODEL with `base_url` set
(`--base-url` / `RAGDESK_BASE_URL`). `--model`, `--draft-model` and `--judge` all go through `load_model`.
"""

from __future__ import annotations

from typing import Callable

from retrieval.errors import ModelError

from ..settings import Settings
from ._base import ChatModel, Completion, GenerationConfig, Messages
from ._device import pick_device
from ._fake import FakeModel
from ._presets import PRESETS, Preset, convert_gguf, fetch_preset_gguf, models_dir, resolve_model_folder
from ._server import ServerModel, parse_server_spec
from ._transformers import TransformersModel  # torch is imported when one is built, not here

__all__ = ["PRESETS", "ChatModel", "Completion", "FakeModel", "GenerationConfig", "Messages", "Preset",
           "ServerModel", "TransformersModel", "convert_gguf", "fetch_preset_gguf", "generation_config", "load_model", "models_dir",
           "parse_server_spec", "pick_device", "register_model", "resolve_model_folder", "server_model"]

Progress = Callable[[str], None]
_FACTORIES: dict[str, Callable[[Settings], ChatModel]] = {}


def register_model(name: str, factory: Callable[[Settings], ChatModel]) -> None:
    """Make `--model NAME` build a model with `factory(settings)` (tests register fakes and tiny models)."""
    _FACTORIES[name] = factory


register_model("fake", lambda settings: FakeModel())


def server_model(spec: str, settings: Settings) -> ServerModel | None:
    """The (unconnected) server model for `spec`, or None when `spec` names a local model."""
    local = spec in _FACTORIES or spec in PRESETS or spec.endswith(".gguf") or spec.startswith((".", "/", "~"))
    parsed = parse_server_spec(spec, "" if local else settings.base_url)
    if parsed is None:
        return None
    url, name = parsed
    return ServerModel(url, name, api_key=settings.api_key, request_timeout=settings.request_timeout,
                       connect_timeout=settings.connect_timeout, context_window=settings.context_window)


def load_model(spec: str, settings: Settings, progress: Progress | None = None, adapter: str = "") -> ChatModel:
    """Build the model `spec` names (see the module docstring); errors are one-line `ModelError`s."""
    progress = progress or (lambda msg: None)
    if spec in _FACTORIES:
        return _FACTORIES[spec](settings)
    served = server_model(spec, settings)
    if served is not None:
        if adapter:
            raise ModelError("a LoRA adapter applies to local models only, not to a server",
                             "load the adapter into the server itself (vLLM: --enable-lora), or drop --adapter")
        progress(f"connecting to {served.url}")
        return served.connect()
    folder = resolve_model_folder(spec, settings, progress)
    progress(f"loading {spec} from {folder}")
    return TransformersModel(folder, spec, settings.device, settings.dtype, settings.threads, adapter,
                             settings.decode_threads, settings.kv_cache)


def generation_config(settings: Settings, method: str | None = None) -> GenerationConfig:
    """The `GenerationConfig` the settings describe (`method` overrides the speculative method)."""
    from .._decoding import SpeculativeConfig

    spec = SpeculativeConfig(method or settings.speculative, settings.lookup_tokens, settings.lookup_ngram, 1,
                             settings.draft_tokens)
    return GenerationConfig(settings.max_new_tokens, settings.repetition_penalty, spec)
