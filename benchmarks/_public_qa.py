"""Public test material for `retrieval_bench.py`: a QA set built from the Python FAQ and real doc corpora.

Everything comes from Debian documentation packages installed at run time (nothing is committed):
`python3.11-doc` gives the QA set (each FAQ heading that is a question -> the FAQ page and section that
answer it) and the distractor pages; `python-django-doc`, `postgresql-doc-15`, `python-sqlalchemy-doc`,
`python-sympy-doc`, `python-scipy-doc` add real text for the latency runs at 10K-100K chunks.

Questions are the FAQ headings themselves, so each one appears verbatim in the heading trail of its gold
section (which ragdesk embeds with the chunk and indexes in the FTS `heading` column): that is easy mode.
`mask_faq_html` writes a "masked" copy of a FAQ page in which every question heading (and its entry in the
page's table of contents) reads "FAQ entry N", so only the answer text can match the question.

Not here: searching, timing or scoring (the benchmark does that); downloading anything.
"""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

PY_DOCS = Path("/usr/share/doc/python3.11/html")
SCALE_ROOTS = [PY_DOCS, Path("/usr/share/doc/python-django-doc/html"), Path("/usr/share/doc/postgresql-doc-15/html"),
               Path("/usr/share/doc/python-sqlalchemy-doc/html"), Path("/usr/share/doc/python-sympy-doc/html"),
               Path("/usr/share/doc/python-scipy-doc/html")]
# the order distractors are taken in: narrative docs first, then the library reference
DISTRACTOR_ORDER = ["tutorial", "howto", "reference", "using", "extending", "library", "c-api", "whatsnew"]
_SKIP_NAMES = re.compile(r"^(genindex.*|search|py-modindex|contents|copyright|license|download)\.html$")
_HEADING = re.compile(r"<h([2-6])([^>]*)>(.*?)</h\1>", re.S)
_HEADERLINK = re.compile(r'class="headerlink" href="#([^"]+)"')


class MissingDocs(RuntimeError):
    """A documentation package is not installed; `str()` says which and how to install it."""


@dataclass(frozen=True)
class QAPair:
    question: str  # the FAQ heading, without the permalink sign
    rel: str  # gold page, relative to the docs root (faq/programming.html)
    heading: str  # the gold heading as it appears in ragdesk's heading trail (verbatim variant)
    slug: str  # the heading's anchor, stable across the masked variant
    index: int  # 1-based position among the page's questions (the masked heading is "FAQ entry N")

    def masked_heading(self) -> str:
        return f"FAQ entry {self.index}"


def require_docs(root: Path = PY_DOCS, package: str = "python3.11-doc") -> Path:
    if not root.is_dir():
        raise MissingDocs(f"{root} not found: apt-get update && apt-get install -y {package}")
    return root


def html_files(root: Path) -> list[Path]:
    """Content pages under `root`, sorted; Sphinx's generated index/search pages and `_static` etc. excluded."""
    out = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root)
        if any(part.startswith("_") for part in rel.parts) or _SKIP_NAMES.match(rel.name):
            continue
        out.append(p)
    return out


def _clean(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split())


def faq_pairs(root: Path = PY_DOCS) -> list[QAPair]:
    """One pair per FAQ heading that ends with a question mark (faq/index.html has none)."""
    pairs: list[QAPair] = []
    for page in html_files(root / "faq"):
        raw = page.read_text(encoding="utf-8")
        n = 0
        for m in _HEADING.finditer(raw):
            inner = m.group(3)
            link = _HEADERLINK.search(inner)
            text = _clean(inner)  # includes the permalink sign, exactly as the HTML loader reads it
            question = text.rstrip("¶").strip()
            if not link or not question.endswith("?"):
                continue
            n += 1
            pairs.append(QAPair(question, str(page.relative_to(root)), text, link.group(1), n))
    return pairs


def mask_faq_html(raw: str, pairs: list[QAPair]) -> str:
    """The page with each question heading and its table-of-contents link replaced by "FAQ entry N"."""
    by_slug = {p.slug: p for p in pairs}

    def heading(m: re.Match) -> str:
        link = _HEADERLINK.search(m.group(3))
        pair = by_slug.get(link.group(1)) if link else None
        if pair is None:
            return m.group(0)
        return (f'<h{m.group(1)}{m.group(2)}>{pair.masked_heading()}<a class="headerlink" '
                f'href="#{pair.slug}">¶</a></h{m.group(1)}>')

    raw = _HEADING.sub(heading, raw)
    for p in pairs:  # contents lists (in-page and sidebar) link to the heading's anchor with its text
        raw = re.sub(rf'(<a [^>]*href="#{re.escape(p.slug)}"[^>]*>)(?!¶)(.*?)(</a>)',
                     lambda m, p=p: m.group(1) + p.masked_heading() + m.group(3), raw, flags=re.S)
    return raw


def select_distractors(root: Path, budget_chunks: int, estimate) -> list[Path]:
    """Pages from DISTRACTOR_ORDER, in order, until `estimate(path)` (chunks) sums past `budget_chunks`."""
    chosen, total = [], 0
    for section in DISTRACTOR_ORDER:
        for p in html_files(root / section):
            if total >= budget_chunks:
                return chosen
            chosen.append(p)
            total += estimate(p)
    return chosen


def copy_corpus(root: Path, files: list[Path], dest: Path) -> None:
    """Copy `files` (under `root`) to `dest`, keeping relative paths, so the FAQ can be rewritten in place."""
    if dest.exists():
        shutil.rmtree(dest)
    for p in files:
        target = dest / p.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)


def scale_files(first: list[Path]) -> list[Path]:
    """Every content page of the installed doc packages, starting with `first` (the QA corpus, whose
    chunks have real embeddings), without repeats."""
    seen = set()
    out = []
    for p in list(first) + [q for r in SCALE_ROOTS if r.is_dir() for q in html_files(r)]:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
