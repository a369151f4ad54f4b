"""Structure-aware chunking: split a `Document` at headings and paragraphs into `Chunk`s sized in the
embedder's own tokens, with overlap between neighbours of the same section.

Invariants (tested): every chunk's text is the slice `doc.text[start:end]`, the chunks of a document cover
every non-blank character of its text, and no chunk (with its heading prefix) exceeds the embedder's maximum
sequence length. This module knows nothing about embeddings or storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError
from ._loaders import Document

__all__ = ["Chunk", "ChunkingConfig", "chunk_document", "chunk_prefix"]


@dataclass(frozen=True)
class ChunkingConfig:
    """How big chunks are, in embedder tokens. `max_tokens` is the embedder's limit, filled in by the index.
    `max_file_mb` bounds the input: the index skips (and names) larger files before reading them."""

    chunk_tokens: int = 192
    overlap_tokens: int = 32
    max_tokens: int = 256
    max_file_mb: float = 50.0

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ConfigError(f"chunk_tokens={self.chunk_tokens} is too small", "use 16 or more")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ConfigError(f"overlap_tokens={self.overlap_tokens} must be >= 0 and under half of "
                              f"chunk_tokens={self.chunk_tokens}", "lower overlap_tokens")
        if self.max_tokens < 32:
            raise ConfigError(f"max_tokens={self.max_tokens} is too small", "use the embedder's max length")
        if not self.max_file_mb > 0:
            raise ConfigError(f"max_file_mb={self.max_file_mb} must be above 0", "use e.g. 50")


@dataclass(frozen=True)
class Chunk:
    ord: int
    text: str
    trail: tuple[str, ...]
    first: int
    last: int
    start: int
    end: int
    n_tokens: int


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    first: int
    last: int
    trail: tuple[str, ...]
    heading: bool
    n_tokens: int


_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n")
_WORD = re.compile(r"\S+")


def chunk_prefix(title: str, trail: tuple[str, ...]) -> str:
    """The heading context embedded with a chunk (not part of its text): 'Title > Section > Sub'."""
    parts = [title] + [t for t in trail if t != title]
    return " > ".join(p for p in parts if p)


def _split_spans(text: str, base: int, count: Callable[[str], int], budget: int) -> list[tuple[int, int, int]]:
    """Split text (at offset base) into (start, end, tokens) spans of at most `budget` tokens: sentences first,
    then words. `tokens` is -1 where the span was not counted whole.

    Linear in len(text): the sentence and word matches are streamed and each character is counted once or
    twice, never re-scanned from the start (a 20 MB one-paragraph file must not stall the index)."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        _add_sentence(text, pos, m.start(), base, count, budget, out)
        pos = m.end()
    _add_sentence(text, pos, len(text), base, count, budget, out)
    return out


def _add_sentence(text: str, s: int, e: int, base: int, count: Callable[[str], int], budget: int,
                  out: list[tuple[int, int, int]]) -> None:
    """Append the sentence text[s:e] as one span, or cut at words (and absurd words by characters)."""
    sentence = text[s:e]
    if not sentence.strip():
        return
    # a span over 64 characters per token of budget fits only if its tokens average over 64 characters: cut it
    # without counting it whole (counting a multi-megabyte "sentence" with a real tokenizer costs seconds and
    # memory for nothing)
    n = count(sentence) if len(sentence) <= 64 * budget else budget + 1
    if n <= budget:
        out.append((base + s, base + e, n))
        return
    cur = prev_end = -1  # cur: start of the open span of words, -1 when none is open
    acc = 0
    for m in _WORD.finditer(text, s, e):
        ws, we = m.start(), m.end()
        n = count(m.group())
        if cur >= 0 and acc + n > budget:
            out.append((base + cur, base + prev_end, -1))  # a sum of word counts is not the count of the span
            cur, acc = -1, 0
        if n > budget:  # one absurdly long "word": cut it by characters
            step = max(1, (we - ws) * budget // (n + 1))
            for cs in range(ws, we, step):
                out.append((base + cs, base + min(we, cs + step), -1))
            continue
        if cur < 0:
            cur = ws
        acc += n
        prev_end = we
    if cur >= 0:
        out.append((base + cur, base + prev_end, -1))


def chunk_document(doc: Document, count_tokens: Callable[[str], int], config: ChunkingConfig) -> list[Chunk]:
    """Split `doc` into chunks; `count_tokens` must be the embedder's own token counter."""
    text = doc.text
    prefix_cache: dict[tuple[str, ...], int] = {}

    def prefix_tokens_of(trail: tuple[str, ...]) -> int:  # counted once per section, not once per piece
        if trail not in prefix_cache:
            prefix_cache[trail] = count_tokens(chunk_prefix(doc.title, trail))
        return prefix_cache[trail]

    pieces: list[_Piece] = []
    for block in doc.blocks:
        prefix_tokens = prefix_tokens_of(block.trail)
        budget = max(8, min(config.chunk_tokens, config.max_tokens - prefix_tokens - 4))
        n = count_tokens(block.text) if len(block.text) <= 64 * budget else budget + 1  # see _add_sentence
        if n <= budget:
            pieces.append(_Piece(block.start, block.end, block.first, block.last, block.trail, block.heading, n))
            continue
        # line numbers by a running newline count: recounting from the block start for every span was
        # quadratic in the block's length
        lines_before, counted_to = 0, block.start
        for s, e, n_span in _split_spans(block.text, block.start, count_tokens, budget):
            if doc.unit == "line":
                lines_before += text.count("\n", counted_to, s)
                counted_to = s
                first = block.first + lines_before
                last = first + text.count("\n", s, e)
            else:
                first, last = block.first, block.last
            pieces.append(_Piece(s, e, first, min(last, max(block.last, first)), block.trail, False,
                                 n_span if n_span >= 0 else count_tokens(text[s:e])))

    chunks: list[Chunk] = []
    current: list[_Piece] = []

    def budget_for(trail: tuple[str, ...]) -> int:
        return max(8, min(config.chunk_tokens,
                          config.max_tokens - prefix_tokens_of(trail) - 4))

    def emit() -> None:
        body = [p for p in current if not p.heading] or current
        trail = body[0].trail
        s, e = current[0].start, current[-1].end
        chunks.append(Chunk(len(chunks), text[s:e], trail, current[0].first, current[-1].last, s, e,
                            prefix_tokens_of(trail) + count_tokens(text[s:e])))

    for piece in pieces:
        if current:
            has_body = any(not p.heading for p in current)
            new_section = piece.heading and has_body
            used = sum(p.n_tokens for p in current) + 2 * (len(current) - 1)
            over = used + piece.n_tokens + 2 > budget_for(piece.trail)
            if new_section or over:
                emit()
                carry: list[_Piece] = []
                if over and not new_section and config.overlap_tokens:
                    acc = 0
                    for p in reversed(current):
                        if p.heading or acc + p.n_tokens > config.overlap_tokens or len(carry) + 1 >= len(current):
                            break
                        carry.insert(0, p)
                        acc += p.n_tokens
                    if acc + piece.n_tokens + 2 > budget_for(piece.trail):
                        carry = []
                current = carry
        current.append(piece)
    if current:
        emit()
    return chunks
