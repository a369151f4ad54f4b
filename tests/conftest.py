"""Shared fixtures: every test gets its own RAGDESK_HOME, the hashing embedder and the fake model by default;
`tiny_model` is a real transformers model built in code; `real_models_dir` is where slow tests cache the real
default model between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_tiny_model

SAMPLE_DOCS = {
    "guide/install.md": "# Installing Tidepool\n\nTidepool runs on Linux.\n\n## Ports\n\nThe server listens on "
                        "port 8740 by default. Change `port` in the `[server]` section.\n\n## Storage\n\nBlocks "
                        "live under /var/lib/tidepool/blocks.\n",
    "guide/accounts.md": "# Accounts\n\n## Lockout\n\nAn account is locked for 15 minutes after 8 failed "
                         "sign-ins.\n\n## Two-factor\n\nTOTP works in every edition.\n",
    "notes.txt": "Release notes\n=============\n\nVersion 3.4.2 fixed the sync conflict bug TP-2002.\n",
}


@pytest.fixture(autouse=True)
def ragdesk_env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("RAGDESK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RAGDESK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAGDESK_EMBEDDER", "hashing")
    monkeypatch.setenv("RAGDESK_MODEL", "fake")
    monkeypatch.setenv("RAGAS_DO_NOT_TRACK", "true")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def sample_docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    for rel, text in SAMPLE_DOCS.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def indexed(sample_docs):
    """The sample docs indexed into the default collection with the hashing embedder."""
    from assistant.settings import load_settings
    from retrieval import Collection, get_embedder

    s = load_settings()
    coll = Collection(s.collection_path(), get_embedder("hashing"))
    coll.update([sample_docs])
    return coll


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """Slow tests share one cache of the real default model across runs (set RAGDESK_TEST_MODELS to move it)."""
    path = Path(os.environ.get("RAGDESK_TEST_MODELS", Path.home() / ".cache" / "ragdesk-test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path
