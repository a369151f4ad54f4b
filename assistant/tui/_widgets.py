"""The widgets of the chat app: conversation list, chat view with streamed answers, sources panel, status line.

Widgets only show things; the app decides what happens (history, engine, workers). Text that comes from
documents, users or the model is always shown literally: plain strings go through `rich.text.Text` or
`markup=False`, answers through the Markdown widget (which never reads console markup such as `[bold]`), the
line of an answer still being written as `rich.text.Text` in a Static.
Rich passes escape sequences through, so document text and answers (which quote documents) also go through
`safe_text` first: an ESC in a passage shows as `\x1b` and never reaches the terminal.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from assistant._terminal import safe_text

if TYPE_CHECKING:
    from retrieval import Passage

__all__ = ["AnswerBox", "ChatView", "ConversationList", "Notice", "QuestionBox", "SourcesPanel", "StatusLine",
           "link_citations"]

_CITATION = re.compile(r"\[(\d{1,3})\]")


def link_citations(text: str, n_sources: int) -> str:
    """Markdown where each [n] that names a source is a link `cite:n` (clicking it shows the passage)."""
    def repl(m: re.Match) -> str:
        n = int(m.group(1))
        return f"[\\[{n}\\]](cite:{n})" if 1 <= n <= n_sources else m.group(0)

    return _CITATION.sub(repl, text)


def citation_note(text: str, sources: list["Passage"]) -> str:
    """Which passages back an answer: the [n] the model wrote, or, when it wrote none, the passages that
    hold its words (matched by ragdesk, and said so)."""
    if not text or not sources:
        return ""
    from assistant.engine import attribute_citations, cited_numbers, is_refusal

    cited = cited_numbers(text, len(sources))
    if cited:
        return "cites " + " ".join(f"[{n}]" for n in cited)
    matched = [] if is_refusal(text) else attribute_citations(text, sources)
    return ("supported by " + " ".join(f"[{n}]" for n in matched) + " (matched by ragdesk)") if matched else ""


def meta_line(status: str, error: str, usage: dict[str, Any], timings: dict[str, Any], model: str,
              note: str = "") -> Text:
    """The small line under an answer: status, citations, tokens, speed (literal text)."""
    parts = [note] if note else []
    if status == "cancelled":
        parts.append("cancelled" + (" (interrupted)" if error == "interrupted" else ""))
    elif status == "failed":
        parts.append(f"failed: {error}" if error else "failed")
    elif status == "pending":
        parts.append("answering…")
    if usage.get("completion_tokens"):
        parts.append(f"{usage.get('prompt_tokens', 0)}+{usage['completion_tokens']} tokens")
    if timings.get("ttft_ms"):
        parts.append(f"first token {timings['ttft_ms']:.0f} ms")
    if timings.get("tokens_per_s"):
        parts.append(f"{timings['tokens_per_s']:.1f} tok/s")
    if model and status != "pending":
        parts.append(model)
    return Text(" · ".join(parts), style="dim")


class ConversationList(OptionList):
    """Earlier conversations, most recent first; Enter opens one."""

    BINDINGS = [Binding("delete", "app.delete_chat", "Delete chat", tooltip="Delete the highlighted conversation")]

    def on_focus(self) -> None:
        if self.highlighted is None and self.option_count:
            self.highlighted = 0

    def show(self, conversations: list, current: int | None) -> None:
        self.clear_options()
        self.add_options([Option(Text(c.title, no_wrap=True, overflow="ellipsis"), id=str(c.id))
                          for c in conversations])
        ids = [c.id for c in conversations]
        if current in ids:
            self.highlighted = ids.index(current)

    @property
    def highlighted_id(self) -> int | None:
        if self.highlighted is None or self.option_count == 0:
            return None
        return int(self.get_option_at_index(self.highlighted).id)


class QuestionBox(Static):
    def __init__(self, question: str):
        super().__init__(Text(question), markup=False)


class Notice(Vertical):
    """An empty or error state in the chat view (literal text, an optional action button)."""

    def __init__(self, text: str, kind: str = "info", button: tuple[str, str] | None = None):
        super().__init__(classes=f"notice {kind}")
        self.text = text
        self.button = button

    def compose(self):
        yield Static(Text(self.text), markup=False)
        if self.button:
            label, action_id = self.button
            yield Button(label, id=action_id, variant="primary")


class AnswerBox(Vertical, can_focus=False):
    """One answer: Markdown that grows as tokens arrive, then gets clickable [n] citations and a meta line.

    While it streams, only finished lines go to the Markdown (appended to its stream, which re-parses only its
    last block); the line being written is plain text in a `.tail` Static whose height grows TAIL_STEP rows at a
    time. Every change of a widget's height reflows and repaints the whole screen, and re-parsing or re-wrapping
    the whole answer at every frame makes the screen's work grow with the answer: this way a frame repaints one
    line and the screen reflows about once a line (measured with a fake model streaming a 400-word answer at
    ~33 words/s: the app's process took 0.50-0.61 cores before, about 0.3 after)."""

    TAIL_STEP = 4

    class Selected(Message):
        """The user clicked this answer (the sources panel should show its passages)."""

        def __init__(self, box: "AnswerBox"):
            super().__init__()
            self.box = box

    def __init__(self, msg_id: int, text: str = "", sources: list["Passage"] | None = None, status: str = "pending",
                 meta: Text | None = None):
        super().__init__(id=f"msg-{msg_id}", classes=f"answer {status if status in ('failed', 'cancelled') else ''}")
        self.msg_id = msg_id
        self.text = text
        self.sources = list(sources or [])
        self.status = status
        self._meta = meta or Text("")
        self._stream = None
        self._in_markdown = 0  # how much of self.text the Markdown shows (the rest is the tail)
        self._tail_rows = 0

    def compose(self):
        if self.status == "pending":
            self._in_markdown = self.text.rfind("\n") + 1
            yield Markdown(safe_text(self.text[: self._in_markdown], keep="\n\t"), open_links=False)
            yield Static("", classes="tail", markup=False)
        else:
            yield Markdown(safe_text(link_citations(self.text, len(self.sources)), keep="\n\t"), open_links=False)
        yield Static(self._meta, classes="meta", markup=False)

    def on_mount(self) -> None:
        if self.status == "pending" and self.text:
            self._show_tail()

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    async def append(self, fragment: str) -> None:
        if not fragment:
            return
        self.text += fragment
        end = self.text.rfind("\n", self._in_markdown) + 1
        if end > self._in_markdown:  # lines finished since the last frame
            if self._stream is None:
                self._stream = Markdown.get_stream(self.markdown)
            await self._stream.write(safe_text(self.text[self._in_markdown: end], keep="\n\t"))
            self._in_markdown = end
        self._show_tail()

    def _show_tail(self) -> None:
        """The unfinished line as plain text; the screen reflows only when it needs more rows."""
        tails = self.query(".tail")
        if not tails:
            return
        tail = tails.first(Static)
        text = Text(safe_text(self.text[self._in_markdown:], keep="\n\t"))
        width = tail.content_region.width or max(20, self.size.width - 3)
        rows = len(text.wrap(self.app.console, width)) if text else 0
        rows = -(-rows // self.TAIL_STEP) * self.TAIL_STEP
        if rows != self._tail_rows:
            self._tail_rows = rows
            tail.styles.height = rows
        tail.update(text, layout=False)

    async def finish(self, text: str, sources: list["Passage"], status: str, meta: Text) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        await self.query(".tail").remove()
        self.text, self.sources, self.status = text, list(sources), status
        shown = link_citations(text, len(sources))
        if not text and status != "complete":
            shown = "*(no answer text)*"
        await self.markdown.update(safe_text(shown, keep="\n\t"))
        self.query_one(".meta", Static).update(meta)
        self.set_class(status == "failed", "failed")
        self.set_class(status == "cancelled", "cancelled")

    def on_click(self) -> None:
        self.post_message(self.Selected(self))


class ChatView(VerticalScroll):
    """The conversation: questions, answers and notices, kept scrolled to the newest."""

    class PassagesRetrieved(Message):
        def __init__(self, msg_id: int, passages: list["Passage"]):
            super().__init__()
            self.msg_id, self.passages = msg_id, passages

    class TokensArrived(Message):
        def __init__(self, msg_id: int, text: str):
            super().__init__()
            self.msg_id, self.text = msg_id, text

    class AnswerFinished(Message):
        def __init__(self, msg_id: int, answer: Any):
            super().__init__()
            self.msg_id, self.answer = msg_id, answer

    def follow(self, was_at_end: bool) -> None:
        """Keep the newest text in view, unless the user has scrolled up to read."""
        if was_at_end:
            self.scroll_end(animate=False, immediate=False)

    @property
    def at_end(self) -> bool:
        return self.scroll_y >= self.max_scroll_y - 1

    async def clear(self) -> None:
        await self.remove_children()

    async def add_question(self, text: str) -> None:
        await self.mount(QuestionBox(text))

    async def add_answer(self, box: AnswerBox) -> AnswerBox:
        await self.mount(box)
        return box

    async def show_notice(self, text: str, kind: str = "info", button: tuple[str, str] | None = None) -> None:
        await self.query(Notice).remove()
        await self.mount(Notice(text, kind, button))

    async def clear_notices(self, *kinds: str) -> None:
        """Remove notices of these kinds (all when none are named)."""
        for notice in list(self.query(Notice)):
            if not kinds or any(notice.has_class(k) for k in kinds):
                await notice.remove()

    def answer(self, msg_id: int) -> AnswerBox | None:
        found = self.query(f"#msg-{msg_id}")
        return found.first() if found else None

    def answers(self) -> list[AnswerBox]:
        return list(self.query(AnswerBox))


class SourcesPanel(Vertical):
    """The passages behind the selected answer (path, heading, lines, score) and the text of the chosen one."""

    def compose(self):
        yield Static("Sources", classes="title")
        yield OptionList(id="source-list")
        with VerticalScroll(id="passage-scroll"):
            yield Static(Text("Select a source or a citation [n] to read its passage.", style="dim"),
                         id="passage", markup=False)

    passages: list = []

    def show_sources(self, passages: list["Passage"], cited: list[int] | None = None) -> None:
        self.passages = list(passages)
        if not self.is_attached:
            return
        cited = cited or []
        options = []
        for n, p in enumerate(passages, 1):
            line = Text.assemble((f"[{n}]", "bold" if n in cited else "dim"), " ",
                                 (_short(safe_text(p.path), 38), "bold"), "\n", f"  {safe_text(p.heading or '-')}\n",
                                 (f"  {p.location} · score {p.score:.3f}", "dim"))
            options.append(Option(line, id=str(n)))
        olist = self.query_one("#source-list", OptionList)
        olist.clear_options()
        olist.add_options(options)
        self.query_one("#passage", Static).update(
            Text("Select a source or a citation [n] to read its passage." if passages else "No sources.",
                 style="dim"))

    def show_passage(self, n: int) -> bool:
        passages = self.passages
        if not 1 <= n <= len(passages) or not self.is_attached:
            return False
        p = passages[n - 1]
        head = Text.assemble((f"[{n}] {safe_text(p.path)}", "bold"), "\n",
                             (f"{safe_text(p.heading)} · {p.location}", "italic"), "\n\n")
        self.query_one("#passage", Static).update(head + Text(safe_text(p.text, keep="\n\t")))
        olist = self.query_one("#source-list", OptionList)
        if olist.highlighted != n - 1:
            olist.highlighted = n - 1
        return True

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "source-list" and event.option_id:
            self.show_passage(int(event.option_id))


def _short(path: str, width: int) -> str:
    """A path that fits `width` cells, keeping its end (the file name matters most)."""
    return path if len(path) <= width else "…" + path[-(width - 1):]


class StatusLine(Static):
    """Model, device, collection, state, and the figures of the last answer."""

    def __init__(self, **kwargs):
        super().__init__("", markup=False, **kwargs)
        self.model = "-"
        self.device = "-"
        self.collection = "-"
        self.state = "starting"
        self.figures = ""

    def set(self, **values: str) -> None:
        for k, v in values.items():
            setattr(self, k, v)
        self.update(self.render_text())

    def show_answer(self, usage: dict[str, Any], timings: dict[str, Any], cost: dict[str, Any]) -> None:
        total_cost = sum(float(cost.get(k, 0.0)) for k in ("input_usd", "output_usd", "device_usd"))
        self.set(figures=f"{timings.get('tokens_per_s', 0.0):.1f} tok/s · TTFT {timings.get('ttft_ms', 0.0):.0f} ms"
                         f" · {usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)} tokens"
                         f" · ${total_cost:.6f}")

    def render_text(self) -> Text:
        text = Text.assemble((f" {self.model}", "bold"), f" · {self.device} · collection {self.collection} · ",
                             (self.state, "italic"))
        if self.figures:
            text.append(f"  │  last answer: {self.figures}")
        return text
