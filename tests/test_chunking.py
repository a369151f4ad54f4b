import random
import re

import pytest

from retrieval import ChunkingConfig, HashingEmbedder, chunk_document
from retrieval._chunking import chunk_prefix
from retrieval._loaders import _load_markdown
from retrieval.errors import ConfigError

EMB = HashingEmbedder(max_tokens=64)


def random_markdown(seed: int) -> str:
    rng = random.Random(seed)
    words = "port sync library block version share token quota error server client admin".split()
    out = []
    for s in range(rng.randint(1, 6)):
        out.append("#" * rng.randint(1, 3) + f" Section {s}")
        for _ in range(rng.randint(0, 5)):
            n = rng.choice([3, 10, 40, 150])  # includes paragraphs far over the chunk size
            out.append(" ".join(rng.choice(words) + ("." if rng.random() < 0.1 else "") for _ in range(n)))
    return "\n\n".join(out) + "\n"


@pytest.mark.parametrize("seed", range(25))
def test_chunks_cover_every_character_and_respect_max(seed):
    doc = _load_markdown(random_markdown(seed), f"doc{seed}.md")
    cfg = ChunkingConfig(chunk_tokens=40, overlap_tokens=8, max_tokens=64)
    chunks = chunk_document(doc, EMB.count_tokens, cfg)
    covered = [False] * len(doc.text)
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text
        assert c.n_tokens <= cfg.max_tokens, (c.n_tokens, c.text[:80])
        assert EMB.count_tokens(chunk_prefix(doc.title, c.trail)) + EMB.count_tokens(c.text) <= cfg.max_tokens
        for i in range(c.start, c.end):
            covered[i] = True
    missing = "".join(ch for ch, cov in zip(doc.text, covered) if not cov)
    assert missing.strip() == "", repr(missing[:100])


def test_split_at_headings_and_overlap():
    text = "# T\n\n## A\n\n" + "\n\n".join(f"Para {i} " + "word " * 12 for i in range(8)) + "\n\n## B\n\nOnly B.\n"
    doc = _load_markdown(text, "t.md")
    chunks = chunk_document(doc, EMB.count_tokens, ChunkingConfig(chunk_tokens=40, overlap_tokens=16, max_tokens=64))
    b = [c for c in chunks if "Only B." in c.text]
    assert len(b) == 1 and b[0].trail == ("T", "B") and "Para" not in b[0].text
    a_chunks = [c for c in chunks if c.trail == ("T", "A")]
    assert len(a_chunks) >= 3
    # neighbours in the same section overlap
    assert any(a_chunks[i].end > a_chunks[i + 1].start for i in range(len(a_chunks) - 1))
    # line ranges point at the source lines
    lines = text.split("\n")
    for c in chunks:
        first_line = c.text.split("\n", 1)[0]
        assert first_line in lines[c.first - 1]


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="overlap_tokens=100"):
        ChunkingConfig(chunk_tokens=128, overlap_tokens=100)
    with pytest.raises(ConfigError, match="chunk_tokens=4"):
        ChunkingConfig(chunk_tokens=4)
