from pathlib import Path

import pytest

from retrieval import SkipFile, load_document
from retrieval._loaders import decode_text


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def test_markdown_keeps_title_trail_and_lines(tmp_path):
    p = write(tmp_path, "a.md", "# Guide\n\nIntro text.\n\n## Setup\n\nStep one.\nStep two.\n\n```\n# not a heading\n```\n\n### Deep\n\nDeep text.\n")
    doc = load_document(p)
    assert doc.title == "Guide"
    step = next(b for b in doc.blocks if b.text.startswith("Step one"))
    assert step.trail == ("Guide", "Setup") and (step.first, step.last) == (7, 8)
    code = next(b for b in doc.blocks if "not a heading" in b.text)
    assert code.trail == ("Guide", "Setup") and not code.heading
    deep = next(b for b in doc.blocks if b.text == "Deep text.")
    assert deep.trail == ("Guide", "Setup", "Deep") and deep.first == 16
    for b in doc.blocks:
        assert doc.text[b.start:b.end] == b.text


def test_rst_heading_levels_follow_adornment_order(tmp_path):
    p = write(tmp_path, "r.rst", "=====\nTitle\n=====\n\nIntro.\n\nSection\n-------\n\nBody here.\n\nSub\n~~~\n\nSub body.\n\nOther\n-------\n\nMore.\n")
    doc = load_document(p)
    assert doc.title == "Title"
    trails = {b.text: b.trail for b in doc.blocks if not b.heading}
    assert trails["Body here."] == ("Title", "Section")
    assert trails["Sub body."] == ("Title", "Section", "Sub")
    assert trails["More."] == ("Title", "Other")
    assert next(b for b in doc.blocks if b.text == "Sub body.").first == 15


def test_html_headings_paragraphs_and_skipped_script(tmp_path):
    p = write(tmp_path, "h.html", "<html><head><title>FAQ page</title><script>var x = 'secret';</script></head>"
              "<body>\n<h1>FAQ</h1>\n<h2>Ports</h2>\n<p>The port is\n 8740.</p>\n<ul><li>one</li><li>two</li></ul>\n</body></html>")
    doc = load_document(p)
    assert doc.title == "FAQ page"
    assert "secret" not in doc.text
    para = next(b for b in doc.blocks if "8740" in b.text)
    assert para.text == "The port is 8740." and para.trail == ("FAQ", "Ports") and para.first == 4
    assert "- one" in doc.text and "- two" in doc.text


def test_plain_text_and_non_utf8(tmp_path):
    p = write(tmp_path, "t.txt", "Caf\xe9 notes\n\nThe r\xe9sum\xe9 is here.\n".encode("cp1252"))
    doc = load_document(p)
    assert "résumé" in doc.text and doc.title == "Café notes"
    assert decode_text("naïve".encode("utf-16")) == "naïve"
    assert decode_text("\u00e9t\u00e9".encode("utf-8")) == "été"


def test_pdf_pages(tmp_path):
    pdf = Path(__file__).resolve().parents[1] / "corpus/docs/billing/subscription-terms.pdf"
    if not pdf.exists():
        pytest.skip("bundled PDF not present")
    doc = load_document(pdf)
    assert doc.unit == "page" and doc.kind == "pdf"
    assert max(b.last for b in doc.blocks) >= 2
    assert "refund" in doc.text.lower()


@pytest.mark.parametrize("name,data,reason", [
    ("empty.md", b"   \n\n", "empty"),
    ("bin.txt", b"abc\x00\x01\x02" * 100, "binary"),
    ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "unreadable PDF"),
    ("image.png", b"\x89PNG", "unsupported"),
])
def test_bad_files_are_skipped_with_a_reason(tmp_path, name, data, reason):
    with pytest.raises(SkipFile, match=reason):
        load_document(write(tmp_path, name, data))


def test_unreadable_file(tmp_path):
    with pytest.raises(SkipFile, match="unreadable"):
        load_document(tmp_path / "missing.md")
