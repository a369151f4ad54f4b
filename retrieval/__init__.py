"""Retrieval for ragdesk: load documents, chunk them, embed them, and search them (dense + BM25, fused).

Knows nothing of the assistant or the evals; they build on it.
"""

from ._chunking import Chunk, ChunkingConfig, chunk_document
from ._embedders import DEFAULT_EMBEDDER, Embedder, HashingEmbedder, get_embedder, register_embedder
from ._index import Collection, IndexReport, Passage, SearchConfig
from ._loaders import Document, SkipFile, load_document
from .errors import RagdeskError

__all__ = [
    "DEFAULT_EMBEDDER",
    "Chunk",
    "ChunkingConfig",
    "Collection",
    "Document",
    "Embedder",
    "HashingEmbedder",
    "IndexReport",
    "Passage",
    "RagdeskError",
    "SearchConfig",
    "SkipFile",
    "chunk_document",
    "get_embedder",
    "load_document",
    "register_embedder",
]
