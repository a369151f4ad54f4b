"""Turn files into `Document`s: a flat text made of `Block`s that remember where they came from.

Each loader keeps the path, the title, the heading trail of every block and its line range (page range for
PDF), so a chunk can later say "install/docker.md, Docker > Volumes, lines 40-58". Loaders do not chunk and do
not embed; they never raise for a bad file either: `load_document` raises `SkipFile` with a reason, and the
indexer counts and reports it. What a parsing library warns about (pypdf on a truncated PDF) is caught and
handed to a `warn` callback naming the file, never left to reach stderr bare.
"""

from __future__ import annotations

import codecs
import contextlib
import html.parser
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["SUPPORTED_SUFFIXES", "Block", "Document", "SkipFile", "decode_text", "load_document"]

SUPPORTED_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text",
                      ".text": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}

BLOCK_SEP = "\n\n"

_log = logging.getLogger(__name__)


class SkipFile(Exception):
    """The file cannot be indexed; `str()` says why in a few words (binary, empty, unreadable...)."""


@dataclass(frozen=True)
class Block:
    """A paragraph, heading, list or code block. `start`/`end` are offsets into `Document.text`."""

    text: str
    trail: tuple[str, ...]
    first: int  # first line (or page) of the block in the source, 1-based
    last: int
    start: int = 0
    end: int = 0
    heading: bool = False


@dataclass
class Document:
    path: str
    title: str
    kind: str
    unit: str  # "line" or "page"
    blocks: list[Block] = field(default_factory=list)
    text: str = ""

    @classmethod
    def from_blocks(cls, path: str, title: str, kind: str, unit: str, raw: list[Block]) -> "Document":
        """Join the blocks into one text and give each block its offsets in it."""
        blocks, parts, pos = [], [], 0
        for b in raw:
            text = b.text.strip("\n")
            if not text.strip():
                continue
            if parts:
                parts.append(BLOCK_SEP)
                pos += len(BLOCK_SEP)
            parts.append(text)
            blocks.append(Block(text, b.trail, b.first, b.last, pos, pos + len(text), b.heading))
            pos += len(text)
        return cls(path, title, kind, unit, blocks, "".join(parts))


def decode_text(data: bytes) -> str:
    """Decode bytes sensibly: BOMs first, then UTF-8, then Windows-1252, then Latin-1 (which never fails)."""
    for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                     (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(enc, errors="replace")
    # any NUL byte makes the file binary, not only one in the first 8 KB: a text header over binary data would
    # otherwise put NULs and mojibake into chunks. Skipping (with the offset) beats silently stripping them.
    nul = data.find(b"\x00")
    if nul >= 0:
        raise SkipFile("binary file (NUL bytes)" if nul < 8192 else f"binary file (NUL byte at offset {nul})")
    for enc in ("utf-8", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def load_document(path: Path, display_path: str | None = None, data: bytes | None = None,
                  warn: Callable[[str], None] | None = None) -> Document:
    """Load one file (or its already-read `data`); raises SkipFile (unsupported, unreadable, binary, empty)
    instead of failing the run. Warnings of the parsing libraries (pypdf's "EOF marker not found"...) are
    caught and passed to `warn` prefixed with the file's name, once each; without `warn` they are logged."""
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SkipFile(f"unsupported file type {path.suffix or '(none)'}")
    name = display_path or str(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SkipFile(f"unreadable ({exc.strerror or exc})") from None
    if not data.strip():
        raise SkipFile("empty file")
    if kind == "pdf":
        with _library_warnings(name, warn):
            doc = _load_pdf(data, name)
    else:
        text = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
        loader = {"markdown": _load_markdown, "rst": _load_rst, "text": _load_text, "html": _load_html}[kind]
        doc = loader(text, name)
    if not doc.text.strip():
        raise SkipFile("no text found")
    return doc


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _library_warnings(name: str, warn: Callable[[str], None] | None):
    """Catch what pypdf logs or `warnings.warn`s while one file is parsed, and hand it on naming the file:
    left alone it reaches stderr as a bare "EOF marker not found" with no hint of which file."""
    logger = logging.getLogger("pypdf")
    handler = _Collect()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        messages = handler.messages + [str(w.message) for w in caught]
        for msg in dict.fromkeys(m.strip() for m in messages if m.strip()):
            if warn:
                warn(f"{name}: {msg}")
            else:
                _log.warning("%s: %s", name, msg)


class _BlockBuilder:
    """Collects paragraph lines into blocks under the current heading trail (shared by the line-based
    loaders: Markdown, reStructuredText and plain text)."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.trail: list[tuple[int, str]] = []  # (level, heading)
        self.para: list[str] = []
        self.para_first = 0

    def add_line(self, lineno: int, line: str) -> None:
        if not self.para:
            self.para_first = lineno
        self.para.append(line)

    def flush(self, upto: int) -> None:
        if self.para:
            self.blocks.append(Block("\n".join(self.para), self.current_trail(), self.para_first, upto))
            self.para = []

    def heading(self, level: int, title: str, first: int, last: int, raw: str) -> None:
        while self.trail and self.trail[-1][0] >= level:
            self.trail.pop()
        self.trail.append((level, title))
        self.blocks.append(Block(raw, self.current_trail(), first, last, heading=True))

    def current_trail(self) -> tuple[str, ...]:
        return tuple(h for _, h in self.trail)

    def first_heading(self) -> str:
        return next((b.trail[0] for b in self.blocks if b.heading and b.trail), "")


# --- Markdown -------------------------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")


def _strip_md_inline(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[*_`]+", "", text).strip()


def _load_markdown(text: str, path: str) -> Document:
    lines = text.split("\n")
    out = _BlockBuilder()
    i = 0
    while i < len(lines):
        line = lines[i]
        lineno = i + 1
        if _FENCE.match(line):
            out.flush(lineno - 1)
            fence = _FENCE.match(line).group(1)
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(fence):
                j += 1
            j = min(j, len(lines) - 1)
            out.blocks.append(Block("\n".join(lines[i:j + 1]), out.current_trail(), lineno, j + 1))
            i = j + 1
            continue
        m = _ATX.match(line)
        if m:
            out.flush(lineno - 1)
            out.heading(len(m.group(1)), _strip_md_inline(m.group(2)), lineno, lineno, line)
        elif len(out.para) == 1 and _SETEXT.match(line) and out.para[0].strip():
            title, first = out.para[0], out.para_first
            out.para = []
            out.heading(1 if line.strip().startswith("=") else 2, _strip_md_inline(title), first, lineno,
                        title + "\n" + line)
        elif not line.strip():
            out.flush(lineno - 1)
        else:
            out.add_line(lineno, line)
        i += 1
    out.flush(len(lines))
    return Document.from_blocks(path, out.first_heading() or Path(path).stem, "markdown", "line", out.blocks)


# --- reStructuredText and plain text ----------------------------------------------------------------------

_ADORN = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")


def _load_underlined(text: str, path: str, kind: str) -> Document:
    """Shared by rst and txt: headings are a line underlined (optionally overlined) by a run of punctuation;
    heading levels follow the order in which adornment styles first appear, as docutils does."""
    lines = text.split("\n")
    styles: list[tuple[str, bool]] = []
    out = _BlockBuilder()
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        over = _ADORN.match(line)
        # overlined heading: ===== / Title / =====
        if over and i + 2 < len(lines) and lines[i + 1].strip() and _ADORN.match(lines[i + 2]) \
                and lines[i + 2].strip()[0] == line.strip()[0] and not out.para:
            style, title, first, last = (line.strip()[0], True), lines[i + 1].strip(), i + 1, i + 3
            raw = "\n".join(lines[i:i + 3])
            i += 3
        elif line.strip() and not out.para and _ADORN.match(nxt) and len(nxt.strip()) >= len(line.strip()) \
                and not _ADORN.match(line):
            style, title, first, last = (nxt.strip()[0], False), line.strip(), i + 1, i + 2
            raw = line + "\n" + nxt
            i += 2
        else:
            if not line.strip():
                out.flush(i)
            else:
                out.add_line(i + 1, line)
            i += 1
            continue
        out.flush(first - 1)
        if style not in styles:
            styles.append(style)
        out.heading(styles.index(style) + 1, title, first, last, raw)
    out.flush(len(lines))
    title = out.first_heading()
    if not title:
        first_line = text.strip().split("\n", 1)[0].strip()
        title = first_line if 0 < len(first_line) <= 80 else Path(path).stem
    return Document.from_blocks(path, title, kind, "line", out.blocks)


def _load_rst(text: str, path: str) -> Document:
    return _load_underlined(text, path, "rst")


def _load_text(text: str, path: str) -> Document:
    return _load_underlined(text, path, "text")


# --- HTML -----------------------------------------------------------------------------------------------

_BLOCK_TAGS = {"p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "div", "section", "article", "tr",
               "table", "ul", "ol", "dl", "figcaption", "caption", "br", "hr", "main", "header", "footer"}
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg"}


class _HtmlBlocks(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.trail: list[tuple[int, str]] = []
        self.buf: list[str] = []
        self.buf_first = 0
        self.skip = 0
        self.heading_level = 0
        self.title = ""
        self.in_title = False
        self.in_pre = 0

    def _flush(self) -> None:
        raw = "".join(self.buf)
        if self.in_pre:
            text = re.sub(r"\n{3,}", "\n\n", raw.strip("\n"))
        else:
            text = " ".join(raw.split())
        line = self.getpos()[0]
        if text.strip():
            if self.heading_level:
                title = " ".join(text.split())
                while self.trail and self.trail[-1][0] >= self.heading_level:
                    self.trail.pop()
                self.trail.append((self.heading_level, title))
                self.blocks.append(Block(title, tuple(h for _, h in self.trail), self.buf_first, line,
                                         heading=True))
            else:
                for part in re.split(r"\n\s*\n", text):
                    if part.strip():
                        self.blocks.append(Block(part, tuple(h for _, h in self.trail), self.buf_first, line))
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "title":
            self.in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = int(tag[1])
            self.buf_first = self.getpos()[0]
        elif tag in _BLOCK_TAGS:
            if tag == "td" or tag == "th":
                self.buf.append(" | ")
            elif tag == "li" or tag == "tr":
                self._flush()
                self.buf_first = self.getpos()[0]
                if tag == "li":
                    self.buf.append("- ")
            else:
                self._flush()
                self.buf_first = self.getpos()[0]
            if tag == "pre":
                self.in_pre += 1

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag == "title":
            self.in_title = False
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = 0
        elif tag in _BLOCK_TAGS and tag not in ("td", "th"):
            self._flush()
            if tag == "pre":
                self.in_pre = max(0, self.in_pre - 1)

    def handle_data(self, data):
        if self.skip:
            return
        if self.in_title:
            self.title += data
            return
        if not self.buf:
            self.buf_first = self.getpos()[0]
        self.buf.append(data)


def _load_html(text: str, path: str) -> Document:
    parser = _HtmlBlocks()
    parser.feed(text)
    parser.close()
    parser._flush()
    title = " ".join(parser.title.split()) or next(
        (b.text for b in parser.blocks if b.heading), Path(path).stem)
    return Document.from_blocks(path, title, "html", "line", parser.blocks)


# --- PDF ------------------------------------------------------------------------------------------------

def _load_pdf(data: bytes, path: str) -> Document:
    import io

    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as exc:  # pypdf raises many types for broken files
        raise SkipFile(f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    blocks: list[Block] = []
    trail: tuple[str, ...] = ()
    for pageno, page in enumerate(pages, 1):
        for para in re.split(r"\n\s*\n", page.replace("\r", "")):
            para = para.strip()
            if not para:
                continue
            # a short line without end punctuation standing alone reads as a heading in extracted PDF text
            if "\n" not in para and len(para) < 70 and not para.endswith((".", ",", ":", ";")):
                trail = (para,)
                blocks.append(Block(para, trail, pageno, pageno, heading=True))
            else:
                blocks.append(Block(para, trail, pageno, pageno))
    title = meta_title.strip() or next((b.text for b in blocks if b.heading), Path(path).stem)
    blocks = [Block(b.text, (title,) + tuple(t for t in b.trail if t != title), b.first, b.last, heading=b.heading)
              for b in blocks]
    return Document.from_blocks(path, title, "pdf", "page", blocks)
