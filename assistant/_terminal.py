"""Text from documents made safe to write to a terminal.

Indexed documents are untrusted: a heading, a passage or a file name can hold escape sequences that retitle
the window, clear the screen or plant a hyperlink (OSC 8) to somewhere else, and bidi overrides that make a
line read differently from what it holds. `safe_text` replaces each such character with a visible escape
(`\\x1b`, `\\x9b`, `\\u202e`) so the reader sees that it is there and the terminal never acts on it;
`safe_json` does the same inside JSON strings, where the escapes decode back to the original text.

It neutralises characters only; it does not shorten, wrap or otherwise format text, and it is not an HTML
escaper (the eval report escapes its own output).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["UNSAFE", "safe_json", "safe_text"]

# C0 controls, DEL and C1 controls, then the bidi embeddings/overrides (U+202A-202E) and isolates (U+2066-2069)
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# what json.dumps leaves raw; not C0, which it escapes inside strings and uses (newlines) for its indentation
_JSON_RAW = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: Any, keep: str = "") -> str:
    """`text` with every control and bidi-override character shown as an escape, except those in `keep`.

    `keep="\\n\\t"` suits multi-line text such as a streamed answer; the default keeps nothing, so a file name
    holding a newline stays on one line.
    """
    text = str(text)
    if not keep:
        return UNSAFE.sub(_visible, text)
    return UNSAFE.sub(lambda m: m.group() if m.group() in keep else _visible(m), text)


def safe_json(obj: Any, **kwargs: Any) -> str:
    """`json.dumps(obj, ensure_ascii=False, ...)` with DEL, C1 and bidi overrides escaped as `\\uXXXX` too.

    json.dumps already escapes C0 controls; the others are legal raw in JSON, so it leaves them. They can only
    occur inside strings (JSON's own syntax is ASCII), where `\\uXXXX` is the same character to a parser.
    """
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
