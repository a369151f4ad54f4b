"""Reading an eval suite: JSONL, one question a line (SPEC.md's format plus two optional fields).

A line is `{"id"?, "question", "answer", "sources"?, "unanswerable"?, "expect"?}`: `answer` is the reference
answer, `sources` paths or path fragments of the gold documents, `unanswerable: true` marks a question the
documents cannot answer (scored by whether the assistant declines; `answer` may then be left out), and
`expect` a short string (or list) that a correct answer must contain, for the string-presence metric (default:
the reference answer itself). Blank lines and `#` comments are skipped; a bad line is reported by number and
skipped; a file with no usable line is one `InputError`. Not here: running or scoring the questions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from retrieval.errors import InputError

__all__ = ["SuiteItem", "load_suite"]


@dataclass
class SuiteItem:
    id: str
    question: str
    reference: str = ""
    sources: list[str] = field(default_factory=list)
    unanswerable: bool = False
    expect: list[str] = field(default_factory=list)
    line: int = 0

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "answer": self.reference, "sources": self.sources,
                "unanswerable": self.unanswerable, "expect": self.expect, "line": self.line}


def _strings(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'"{name}" must be a string or a list of strings')
    return [v for v in value if v.strip()]


def _item(obj, n: int) -> SuiteItem:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" is missing or empty')
    unanswerable = obj.get("unanswerable", False)
    if not isinstance(unanswerable, bool):
        raise ValueError('"unanswerable" must be true or false')
    reference = obj.get("answer", "")
    if not isinstance(reference, str):
        raise ValueError('"answer" must be a string')
    if not reference.strip() and not unanswerable:
        raise ValueError('"answer" (the reference answer) is missing; mark the item "unanswerable": true '
                         'if the documents cannot answer it')
    item_id = obj.get("id", f"line-{n}")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise ValueError('"id" must be a string or a number')
    return SuiteItem(str(item_id), question.strip(), reference.strip(), _strings(obj.get("sources"), "sources"),
                     unanswerable, _strings(obj.get("expect"), "expect"), n)


def load_suite(path: Path | str, warn: Callable[[str], None] | None = None) -> list[SuiteItem]:
    """The usable items of the suite at `path`; `warn` gets one line per skipped line."""
    path = Path(path)
    warn = warn or (lambda msg: None)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"suite file not found: {path}", "give the path of a JSONL eval suite") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read suite {path}: {exc}", "it must be a UTF-8 JSONL file") from None
    items: list[SuiteItem] = []
    seen: dict[str, int] = {}
    bad = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = _item(json.loads(line), n)
            if item.id in seen:
                raise ValueError(f'duplicate id "{item.id}" (first on line {seen[item.id]})')
        except json.JSONDecodeError as exc:
            bad += 1
            warn(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno}); line skipped")
            continue
        except ValueError as exc:
            bad += 1
            warn(f"{path}:{n}: {exc}; line skipped")
            continue
        seen[item.id] = n
        items.append(item)
    if not items:
        what = f"all {bad} lines are invalid" if bad else "it is empty"
        raise InputError(f"suite {path} has no usable question: {what}",
                         'one JSON object a line: {"question": ..., "answer": ..., "sources": [...]}')
    return items


def suite_digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
