"""`ragdesk chat`: the Textual app. Conversations on the left, the streamed, cited answer in the middle,
the passages behind the selected answer on the right, model and speed figures in the status line.

The first frame is drawn before anything heavy is imported: the engine (torch, transformers, faiss) is built
and loaded after the first refresh in a child process (_engine_process.py) that stays warm for the session, so
decoding never competes with the event loop for this interpreter's lock; a worker thread relays each answer's
events as messages, and tokens reach the screen at most FRAME_S apart, so the screen keeps redrawing and taking
keys. Tests that pass `engine_factory` (a fake model) keep the engine in a worker thread of the app. Every question and every (partial) answer
goes to history as it happens, so closing or killing the app loses nothing.

Not here: retrieval and generation (engine.py), storage (history.py), the widgets (_widgets.py).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Footer, Input, Markdown, OptionList, Static

from ._actions import CORPUS_DIR, ChatActions
from ._commands import RagdeskCommands
from ._widgets import AnswerBox, ChatView, ConversationList, SourcesPanel, StatusLine, citation_note, meta_line

__all__ = ["CORPUS_DIR", "RagdeskApp"]

FRAME_S = 1 / 30  # tokens arriving within one frame are rendered together


class RagdeskApp(ChatActions, App):
    """The chat app. `engine_factory(settings)` builds an (unloaded) Engine that runs in a thread of the app
    (tests pass one with a fake model); without one the engine runs in a child process."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    TITLE = "ragdesk"
    COMMANDS = App.COMMANDS | {RagdeskCommands}
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", tooltip="Stop the answer being written (the partial text is kept)"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+o", "switch_collection", "Collection"),
        Binding("ctrl+y", "copy_answer", "Copy answer"),
        Binding("f2", "rename_chat", "Rename"),
        Binding("alt+up", "select_answer(-1)", "Previous answer", show=False),
        Binding("alt+down", "select_answer(1)", "Next answer", show=False),
        Binding("f1", "help", "Help"),
    ]
    # (palette entry, action, help): one for every action
    PALETTE = [
        ("New chat", "new_chat", "start a new conversation (ctrl+n)"),
        ("Rename chat", "rename_chat", "rename the current conversation (f2)"),
        ("Delete chat", "delete_chat", "delete the current conversation (delete in the list)"),
        ("Switch collection", "switch_collection", "answer from another indexed collection (ctrl+o)"),
        ("Copy last answer", "copy_answer", "copy the selected answer to the clipboard (ctrl+y)"),
        ("Cancel answer", "cancel", "stop the answer being written (esc)"),
        ("Index the bundled corpus", "index_corpus", "index the sample Tidepool docs into this collection"),
        ("Help: keys", "help", "list every key binding (f1)"),
    ]

    class EngineProgressed(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class EngineLoaded(Message):
        def __init__(self, engine: Any, token: int):
            super().__init__()
            self.engine, self.token = engine, token

    class EngineFailed(Message):
        def __init__(self, kind: str, text: str, token: int):
            super().__init__()
            self.kind, self.text, self.token = kind, text, token  # kind: index, model, error

    class CorpusIndexed(Message):
        def __init__(self, documents: int, chunks: int):
            super().__init__()
            self.documents, self.chunks = documents, chunks

    def __init__(self, settings, engine_factory: Callable[[Any], Any] | None = None):
        super().__init__()
        self.settings = settings
        self.engine_factory = engine_factory
        self.engine = None
        self._engine_process = None  # the child process, kept across collection switches and restarts
        self.engine_ready = threading.Event()  # set when loading ended, well or not
        self.engine_error = ""
        self._load_token = 0
        self.history = None
        self.sessions = None
        self.conversation_id: int | None = None
        self.generating: int | None = None  # assistant message id being written
        self._cancel: threading.Event | None = None
        self._gen_done = threading.Event()  # set when the answer worker has stored its last words
        self._gen_done.set()
        self._live: dict[int, str] = {}  # msg id -> text so far, for the answer being written
        self._live_sources: dict[int, list] = {}
        self._unshown: dict[int, str] = {}  # msg id -> text that arrived since the last frame
        self._flush_timer = None
        self.selected_msg: int | None = None
        self.timings: dict[str, float] = {"start": time.perf_counter()}  # first_frame, ready (for measurements)

    # ---- layout -----------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Static("Conversations", classes="title")
                yield ConversationList(id="conversations")
            with Vertical(id="center"):
                yield ChatView(id="chat")
                yield Input(placeholder="Ask about your documents (Enter sends, Esc cancels, F1 help)", id="prompt")
            yield SourcesPanel(id="sources")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        # kept, not queried: a modal screen may be on top when a worker's message arrives
        self.chat = self.query_one(ChatView)
        self.status = self.query_one(StatusLine)
        self.sources = self.query_one(SourcesPanel)
        self.prompt = self.query_one("#prompt", Input)
        self.conversation_list = self.query_one(ConversationList)
        self.status.set(model=self.settings.model, collection=self.settings.collection, state="starting")
        from assistant.sessions import Sessions

        try:  # answers are written through the Sessions service that ask and batch use too
            self.sessions = Sessions.open(self.settings)
            self.history = self.sessions.history
        except Exception as exc:  # a broken history file must not stop the app
            self.notify(f"history is not available: {exc}", severity="error", markup=False)
        self.refresh_conversations()
        await self.show_welcome()
        self.prompt.focus()
        self.call_after_refresh(self._first_frame)

    def _first_frame(self) -> None:
        self.timings.setdefault("first_frame", time.perf_counter())
        self.start_engine()

    async def show_welcome(self) -> None:
        await self.chat.show_notice(f"Ask a question about the documents in collection "
                                    f"'{self.settings.collection}'. Answers cite their sources as [n]; click "
                                    f"one to read the passage. F1 lists every key.")

    def _ui_alive(self) -> bool:
        """False once the app is closing (worker messages may still arrive then)."""
        return hasattr(self, "chat") and self.chat.is_attached

    def refresh_conversations(self) -> None:
        if self.history is not None:
            self.conversation_list.show(self.history.conversations(), self.conversation_id)

    # ---- engine -----------------------------------------------------------------------------------------
    def start_engine(self) -> None:
        self._load_token += 1
        self.engine_ready.clear()
        self.engine_error = ""
        self.engine = None
        self.status.set(state="loading…", collection=self.settings.collection)
        self._load_engine(self._load_token)

    @work(thread=True, group="engine", exit_on_error=False)
    def _load_engine(self, token: int) -> None:
        stage = ["collection"]

        def progress(msg: str) -> None:
            if not msg.startswith("opening collection"):
                stage[0] = "model"
            self.post_message(self.EngineProgressed(msg))

        try:
            if self.engine_factory is not None:
                engine = self.engine_factory(self.settings)
                engine.load(progress=progress)
            else:  # the child keeps its model when only the collection changes
                from assistant._engine_process import EngineProcess

                if self._engine_process is None:
                    self._engine_process = EngineProcess(self.settings)
                engine = self._engine_process.load(progress=progress, settings=self.settings)
        except Exception as exc:
            from retrieval.errors import IndexMissingError, InputError, ModelError, RagdeskError

            if isinstance(exc, IndexMissingError) or (isinstance(exc, InputError) and stage[0] == "collection"):
                kind = "index"
            else:
                kind = "model" if isinstance(exc, ModelError) else "error"
            if kind == "index":
                text = exc.message  # the app says how to fix it itself
            else:
                text = str(exc) if isinstance(exc, RagdeskError) else f"{type(exc).__name__}: {exc}"
            if token == self._load_token:
                self.engine_error = text
                self.engine_ready.set()
            self.post_message(self.EngineFailed(kind, text, token))
            return
        if token == self._load_token:
            self.engine = engine
            self.engine_ready.set()
        self.post_message(self.EngineLoaded(engine, token))

    def on_ragdesk_app_engine_progressed(self, event: EngineProgressed) -> None:
        if not self._ui_alive():
            return
        self.status.set(state=event.text)

    async def on_ragdesk_app_engine_loaded(self, event: EngineLoaded) -> None:
        if not self._ui_alive():
            return
        if event.token != self._load_token:
            return
        self.timings.setdefault("ready", time.perf_counter())
        self.status.set(model=event.engine.model_name, device=event.engine.device, state="ready")
        await self.chat.clear_notices("warning", "error")
        if self.conversation_id is None and not self.generating:
            await self.show_welcome()

    async def on_ragdesk_app_engine_failed(self, event: EngineFailed) -> None:
        if not self._ui_alive():
            return
        if event.token != self._load_token:
            return
        self.status.set(state="not ready")
        if event.kind == "index":
            c = self.settings.collection
            text = (f"Nothing to answer from yet: {event.text}.\n\nIndex your documents with:\n"
                    f"    ragdesk index PATH --collection {c}")
            button = None
            if CORPUS_DIR.is_dir():
                text += "\nor index the bundled sample corpus (corpus/ of ragdesk) with the button below."
                button = ("Index the bundled corpus", "index-corpus")
            await self.chat.show_notice(text, "warning", button)
        else:
            what = "The model could not be loaded" if event.kind == "model" else "The assistant could not start"
            await self.chat.show_notice(f"{what}: {event.text}\n\nPick another model with "
                                        f"`ragdesk chat --model NAME` or see `ragdesk models`.", "error")
            self.notify(f"{what}: {event.text}", severity="error", markup=False, timeout=10)

    # ---- asking -----------------------------------------------------------------------------------------
    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt":
            return
        question = event.value.strip()
        if not question:
            return
        if self.generating is not None:
            self.notify("An answer is still being written; Esc cancels it.", severity="warning")
            return
        if self.history is None:
            self.notify("history is not available, so the question cannot be stored", severity="error")
            return
        event.input.value = ""
        if self.conversation_id is None:
            self.conversation_id = self.sessions.new_conversation(self.settings.collection, origin="chat")
        turns = self.sessions.turns(self.conversation_id)
        rec = self.sessions.start(self.conversation_id, question)  # stored before it is answered
        msg_id = rec.message_id
        # busy from here on, before the first await: a second Enter must not start a second answer
        self.generating, self.selected_msg = msg_id, msg_id
        self._live[msg_id], self._live_sources[msg_id] = "", []
        self._cancel = threading.Event()
        self._gen_done.clear()
        await self.chat.clear_notices("info")  # warnings and errors stay until they are resolved
        await self.chat.add_question(question)
        await self.chat.add_answer(AnswerBox(msg_id, meta=meta_line("pending", "", {}, {}, "")))
        self.chat.scroll_end(animate=False)
        self.sources.show_sources([])
        self.refresh_conversations()
        self.status.set(state="answering…" if self.engine_ready.is_set() else "waiting for the model…")
        self._generate(rec, question, turns, self._cancel)

    @work(thread=True, group="answer", exit_on_error=False)
    def _generate(self, rec, question: str, turns: list, cancel: threading.Event) -> None:
        from assistant.answer import Answer, Retrieved, TokenArrived

        msg_id = rec.message_id
        text, sources, answer = "", [], None
        try:
            while not self.engine_ready.wait(0.05):  # the question may come before the model is loaded
                if cancel.is_set():
                    break
            engine = self.engine
            if cancel.is_set() and engine is None:
                answer = Answer(question, status="cancelled")
            elif engine is None:
                answer = Answer(question, status="failed", error=f"the assistant is not ready: {self.engine_error}")
            else:
                for event in engine.stream(question, turns, cancel):
                    if isinstance(event, Retrieved):
                        sources = event.passages
                        self.post_message(ChatView.PassagesRetrieved(msg_id, sources))
                        self.sessions.sources(rec, sources)
                    elif isinstance(event, TokenArrived):
                        text += event.text
                        self.post_message(ChatView.TokensArrived(msg_id, event.text))
                        self.sessions.progress(rec, event.text)  # saved a few times a second
                    elif isinstance(event, Answer):
                        answer = event
        except Exception as exc:  # shown as a failed answer, never as a traceback
            from retrieval.errors import RagdeskError

            error = str(exc) if isinstance(exc, RagdeskError) else f"{type(exc).__name__}: {exc}"
            answer = Answer(question, text=text.strip(), sources=sources, status="failed", error=error)
        if answer is None:
            answer = Answer(question, text=text.strip(), sources=sources, status="cancelled")
        try:
            self.sessions.finish(rec, answer)
        finally:
            self._gen_done.set()
            self.post_message(ChatView.AnswerFinished(msg_id, answer))

    def on_chat_view_passages_retrieved(self, event: ChatView.PassagesRetrieved) -> None:
        if not self._ui_alive():
            return
        self._live_sources[event.msg_id] = event.passages
        box = self.chat.answer(event.msg_id)
        if box is not None:
            box.sources = list(event.passages)
        if self.selected_msg == event.msg_id:
            self.sources.show_sources(event.passages)

    def on_chat_view_tokens_arrived(self, event: ChatView.TokensArrived) -> None:
        if not self._ui_alive():
            return
        if event.msg_id in self._live:
            self._live[event.msg_id] += event.text
        # rendered once a frame: appending to the Markdown (and scrolling) at every token would make the
        # event loop's work grow with the decoding speed
        self._unshown[event.msg_id] = self._unshown.get(event.msg_id, "") + event.text
        if self._flush_timer is None:
            self._flush_timer = self.set_timer(FRAME_S, self._show_tokens)

    async def _show_tokens(self) -> None:
        self._flush_timer = None
        unshown, self._unshown = self._unshown, {}
        if not self._ui_alive():
            return
        for msg_id, text in unshown.items():
            box = self.chat.answer(msg_id)
            if box is not None:
                at_end = self.chat.at_end
                await box.append(text)
                self.chat.follow(at_end)

    async def on_chat_view_answer_finished(self, event: ChatView.AnswerFinished) -> None:
        if not self._ui_alive():
            return
        a = event.answer
        self._unshown.pop(event.msg_id, None)  # finish() shows the whole text
        try:
            usage, timings, cost = (dataclasses.asdict(a.usage), dataclasses.asdict(a.timings),
                                    dataclasses.asdict(a.cost))
            box = self.chat.answer(event.msg_id)
            if box is not None:
                note = citation_note(a.text, a.sources) if a.status != "failed" else ""
                await box.finish(a.text, a.sources, a.status,
                                 meta_line(a.status, a.error, usage, timings, a.model, note))
                if self.selected_msg == event.msg_id:
                    self.sources.show_sources(a.sources, a.cited)
            self.status.show_answer(usage, timings, cost)
        finally:  # the app takes the next question only once this answer is on screen
            self._live.pop(event.msg_id, None)
            self._live_sources.pop(event.msg_id, None)
            if self.generating == event.msg_id:
                self.generating = None
        self.status.set(state="ready" if self.engine is not None else "not ready")
        self.refresh_conversations()
        if a.status == "failed":
            self.notify(f"The answer failed: {a.error}", severity="error", markup=False, timeout=8)
        elif a.status == "cancelled":
            self.notify("Answer cancelled; the partial answer is kept in history.", markup=False)

    # ---- conversations ----------------------------------------------------------------------------------
    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "conversations" and event.option_id:
            await self.open_conversation(int(event.option_id))

    def open_conversation_later(self, conv_id: int) -> None:
        self.run_worker(self.open_conversation(conv_id), exclusive=False)

    async def open_conversation(self, conv_id: int) -> None:
        conv = self.history.conversation(conv_id)
        if conv.collection != self.settings.collection and self.generating is None:
            self.settings = dataclasses.replace(self.settings, collection=conv.collection)
            self.start_engine()
        self.conversation_id = conv_id
        await self.chat.clear()
        last = None
        for m in self.history.messages(conv_id):
            if m.role == "user":
                await self.chat.add_question(m.content)
                continue
            live = m.id == self.generating
            text = self._live.get(m.id, m.content) if live else m.content
            sources = self._live_sources.get(m.id) or m.sources if live else m.sources
            status = "pending" if live else m.status
            note = citation_note(text, sources) if status in ("complete", "cancelled") else ""
            await self.chat.add_answer(AnswerBox(m.id, text, sources, status,
                                                 meta_line(status, m.error, m.usage, m.timings, m.model, note)))
            last = m
        self.chat.scroll_end(animate=False)
        self.selected_msg = last.id if last else None
        self.sources.show_sources(last.sources if last else [])
        measured = [m for m in self.history.messages(conv_id) if m.role == "assistant" and m.usage]
        if measured:
            self.status.show_answer(measured[-1].usage, measured[-1].timings, measured[-1].cost)
        self.refresh_conversations()
        self.prompt.focus()

    def selected_sources(self) -> list:
        return list(getattr(self.sources, "passages", []))

    def show_source(self, n: int) -> None:
        if not self.sources.show_passage(n):
            self.notify(f"there is no source [{n}] for this answer", severity="warning")

    def on_markdown_link_clicked(self, event: Markdown.LinkClicked) -> None:
        if event.href.startswith("cite:"):
            box = next((a for a in event.markdown.ancestors if isinstance(a, AnswerBox)), None)
            if box is not None:
                self.select_answer_box(box)
            self.show_source(int(event.href.split(":", 1)[1]))

    def on_answer_box_selected(self, event: AnswerBox.Selected) -> None:
        self.select_answer_box(event.box)

    def select_answer_box(self, box: AnswerBox) -> None:
        if self.selected_msg != box.msg_id:
            self.selected_msg = box.msg_id
            self.sources.show_sources(box.sources)
        for other in self.chat.answers():
            other.set_class(other is box, "selected")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "index-corpus":
            self.action_index_corpus()

    # ---- actions ----------------------------------------------------------------------------------------
    def action_cancel(self) -> None:
        if self.generating is not None and self._cancel is not None:
            self._cancel.set()
            self.status.set(state="cancelling…")

    async def action_new_chat(self) -> None:
        self.conversation_id = None
        self.selected_msg = None
        await self.chat.clear()
        await self.show_welcome()
        self.sources.show_sources([])
        self.refresh_conversations()
        self.prompt.focus()

    # ---- closing ----------------------------------------------------------------------------------------
    def on_unmount(self) -> None:
        """Stop an answer in progress and make sure its partial text is stored, marked cancelled; stop the
        engine's child process."""
        msg_id = self.generating
        if msg_id is not None:
            if self._cancel is not None:
                self._cancel.set()
            self._gen_done.wait(timeout=3)
            if self.history is not None and self.history.message(msg_id).status == "pending":
                self.history.update_message(msg_id, content=self._live.get(msg_id, ""), status="cancelled",
                                            error="closed")
        if self._engine_process is not None:
            self._engine_process.close()
