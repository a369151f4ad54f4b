"""The model resolver and the guarded conversion: specs map to the right backend, server URLs are parsed
(and bad ones refused in one line), and two processes converting the same model at once convert it once,
with what a killed conversion left behind cleaned up."""

from __future__ import annotations

import json
import threading
import time

import pytest

from assistant.models import _presets, load_model, parse_server_spec, server_model
from assistant.settings import load_settings
from retrieval.errors import ModelError


def test_server_specs():
    assert parse_server_spec("http://127.0.0.1:8000/v1#smollm2") == ("http://127.0.0.1:8000/v1", "smollm2")
    assert parse_server_spec("https://h.example/v1/#m") == ("https://h.example/v1", "m")
    assert parse_server_spec("http://h:1/v1") == ("http://h:1/v1", "")
    assert parse_server_spec("qwen", base_url="http://h:2/v1") == ("http://h:2/v1", "qwen")
    assert parse_server_spec("smollm2-135m") is None
    with pytest.raises(ModelError, match="not a server URL"):
        parse_server_spec("http:// bad#m")
    s = load_settings({"base_url": "http://h:3/v1"})
    assert server_model("smollm2-135m", s) is None  # a preset stays local even with a base URL
    assert server_model("./folder", s) is None
    m = server_model("llama3", s)
    assert (m.url, m.name, m.remote, m.supports_concurrency) == ("http://h:3/v1", "llama3", True, True)


def test_adapter_with_a_server_is_refused():
    with pytest.raises(ModelError, match="local models only"):
        load_model("http://127.0.0.1:9/v1#m", load_settings(), adapter="/tmp/a")


def test_api_key_is_masked_in_settings_dumps():
    s = load_settings({"api_key": "sk-secret-123"})
    assert s.to_dict()["api_key"] == "***" and "sk-secret-123" not in json.dumps(s.to_dict())
    assert s.to_dict(secrets=True)["api_key"] == "sk-secret-123"


def test_two_conversions_at_once_convert_once(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    s = load_settings({"models_dir": str(tmp_path / "models")})
    root = tmp_path / "models"
    root.mkdir()
    sha = _presets._sha256(gguf)
    orphan = root / f"gguf-{sha[:16]}.converting"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"x" * 1000)  # left by a run that was killed
    calls = []

    def slow_convert(src, folder, progress, sha256=""):
        calls.append(folder)
        assert not orphan.exists()  # cleaned before anyone converts
        time.sleep(0.3)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "ragdesk.json").write_text(json.dumps({"storage_dtype": _presets.STORAGE_DTYPE}))
        return folder

    monkeypatch.setattr(_presets, "convert_gguf", slow_convert)
    waits, results = [], []

    def resolve():
        results.append(_presets.resolve_model_folder(str(gguf), s, progress=waits.append))

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1] == calls[0]
    assert any("waiting for another ragdesk process" in w for w in waits)


def test_unwritable_models_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    s = load_settings({"models_dir": str(blocker / "models")})
    with pytest.raises(ModelError, match="cannot write to the models folder"):
        _presets.resolve_model_folder(str(gguf), s, progress=lambda m: None)
