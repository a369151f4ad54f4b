"""Slow: the chat app with the real default model decodes about as fast as `ragdesk ask` (issue 10). Both
paths answer the same questions, interleaved in this test (benchmarks/chat_vs_ask.py's `measure_app`), so
the ratio holds on a shared, noisy machine. The bar is low (half of ask's tokens/s) because it must not flake:
it catches the app's decoding being starved by its own event loop (0.05x under load before the engine moved
to a child process), not a few percent; the benchmark reports the real ratios."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest

from benchmarks.chat_vs_ask import measure_app

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Which port does the Tidepool server listen on by default?",
             "How do I run Tidepool in Docker?"]


@pytest.fixture
def real_env(monkeypatch, real_models_dir):
    monkeypatch.setenv("RAGDESK_EMBEDDER", "minilm")
    monkeypatch.setenv("RAGDESK_MODEL", "smollm2-135m")
    monkeypatch.setenv("RAGDESK_MODELS_DIR", str(real_models_dir))
    monkeypatch.setenv("RAGDESK_MAX_NEW_TOKENS", "32")


def test_chat_app_decodes_nearly_as_fast_as_ask(real_env):
    from assistant.engine import Engine
    from assistant.settings import load_settings
    from retrieval import Collection, get_embedder

    s = load_settings()
    coll = Collection(s.collection_path(), get_embedder("minilm"))
    coll.update([REPO / "corpus" / "docs" / "install"])  # a few documents: indexing is not what is tested
    coll.close()
    engine = Engine(s).load()
    engine.ask("What is Tidepool?")  # warm-up
    app, ask, keys = asyncio.run(measure_app(s, QUESTIONS, ask_engine=engine))
    assert [r["status"] for r in app] == ["complete"] * len(QUESTIONS)
    assert all(r["tokens"] > 5 for r in app + ask), (app, ask)
    app_tps = statistics.median(r["tokens_per_s"] for r in app)
    ask_tps = statistics.median(r["tokens_per_s"] for r in ask)
    assert ask_tps > 0 and app_tps >= 0.5 * ask_tps, f"app {app_tps:.2f} tok/s vs ask {ask_tps:.2f} tok/s"
    assert keys and statistics.median(keys) < 500  # keys are taken while it streams
