"""Retrieval for ragdesk: load documents, chunk them, embed them, and search them (dense + BM25, fused).

Knows nothing of the assistant or the evals; they build on it. Names are imported on first use (PEP 562), so
`from retrieval.errors import RagdeskError` stays cheap: sqlite-utils alone pulls in pandas (~1 s), which
`ragdesk --help` and the chat app's first frame must not pay for.
"""

from importlib import import_module

__all__ = [
    "AbstainRule",
    "DEFAULT_EMBEDDER",
    "Chunk",
    "ChunkingConfig",
    "Collection",
    "Document",
    "Embedder",
    "Evidence",
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

_WHERE = {
    "AbstainRule": "_abstain", "Evidence": "_abstain",
    "Chunk": "_chunking", "ChunkingConfig": "_chunking", "chunk_document": "_chunking",
    "DEFAULT_EMBEDDER": "_embedders", "Embedder": "_embedders", "HashingEmbedder": "_embedders",
    "get_embedder": "_embedders", "register_embedder": "_embedders",
    "Collection": "_index", "IndexReport": "_index", "Passage": "_index", "SearchConfig": "_index",
    "Document": "_loaders", "SkipFile": "_loaders", "load_document": "_loaders",
    "RagdeskError": "errors",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
