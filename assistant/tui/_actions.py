"""The chat app's actions on conversations and collections (rename, delete, switch collection, copy, help,
index the bundled corpus), kept apart from app.py so each module stays small.

A mixin for `RagdeskApp` only: it uses the app's widgets, history and messages and has no state of its own.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work

from ._screens import CollectionScreen, ConfirmScreen, HelpScreen, RenameScreen
from ._widgets import ConversationList

if TYPE_CHECKING:
    from .app import RagdeskApp

__all__ = ["ChatActions"]

CORPUS_DIR = Path(__file__).resolve().parents[2] / "corpus"  # the bundled sample corpus (source checkout)


class ChatActions:
    def _target_conversation(self) -> int | None:
        clist = self.conversation_list
        if clist.has_focus and clist.highlighted_id is not None:
            return clist.highlighted_id
        return self.conversation_id

    def action_rename_chat(self) -> None:
        conv_id = self._target_conversation()
        if conv_id is None or self.history is None:
            self.notify("Nothing to rename yet: ask a question first.")
            return

        def done(title: str | None) -> None:
            if title:
                self.history.rename(conv_id, title)
                self.refresh_conversations()

        self.push_screen(RenameScreen(self.history.conversation(conv_id).title), done)

    def action_delete_chat(self) -> None:
        conv_id = self._target_conversation()
        if conv_id is None or self.history is None:
            self.notify("No conversation selected.")
            return
        conv = self.history.conversation(conv_id)

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if self.generating is not None and self.conversation_id == conv_id and self._cancel is not None:
                self._cancel.set()
            self._gen_done.wait(timeout=2)  # the worker stores its last words before the row goes
            self.history.delete(conv_id)
            if self.conversation_id == conv_id:
                await self.action_new_chat()
            self.refresh_conversations()
            self.notify(f"Deleted '{conv.title}'.", markup=False)

        self.push_screen(ConfirmScreen(f"Delete the conversation '{conv.title}'?"), done)

    def action_switch_collection(self) -> None:
        if self.generating is not None:
            self.notify("Wait for the answer or cancel it (Esc) before switching collections.", severity="warning")
            return
        root = self.settings.home_path / "collections"
        names = sorted(p.name for p in root.iterdir() if (p / "index.db").exists()) if root.is_dir() else []

        async def done(name: str | None) -> None:
            if name and name != self.settings.collection:
                self.settings = dataclasses.replace(self.settings, collection=name)
                await self.action_new_chat()
                self.start_engine()
                self.notify(f"Collection: {name}", markup=False)

        self.push_screen(CollectionScreen(names, self.settings.collection), done)

    def action_copy_answer(self) -> None:
        boxes = self.chat.answers()
        box = next((b for b in boxes if b.msg_id == self.selected_msg), boxes[-1] if boxes else None)
        if box is None or not box.text:
            self.notify("No answer to copy yet.")
            return
        self.copy_to_clipboard(box.text)
        self.notify(f"Copied the answer ({len(box.text)} characters).")

    def action_select_answer(self, step: int) -> None:
        boxes = self.chat.answers()
        if not boxes:
            return
        ids = [b.msg_id for b in boxes]
        i = ids.index(self.selected_msg) + step if self.selected_msg in ids else len(ids) - 1
        box = boxes[max(0, min(len(boxes) - 1, i))]
        self.select_answer_box(box)
        box.scroll_visible()

    def action_help(self) -> None:
        rows = [(b.key, b.description, "anywhere") for b in self.BINDINGS]
        rows += [(b.key, b.description, "conversation list") for b in ConversationList.BINDINGS]
        rows += [("enter", "Send the question", "input"), ("enter", "Open the conversation", "conversation list"),
                 ("up/down", "Show a source's passage", "sources"), ("click [n]", "Show the cited passage", "answer"),
                 ("tab/shift+tab", "Move between list, input and sources", "anywhere"),
                 ("ctrl+p", "Command palette (every action)", "anywhere"), ("ctrl+q", "Quit", "anywhere")]
        self.push_screen(HelpScreen(rows))

    def action_index_corpus(self) -> None:
        if not CORPUS_DIR.is_dir():
            self.notify(f"the bundled corpus is not here ({CORPUS_DIR}); run: ragdesk index PATH", severity="warning",
                        markup=False)
            return
        self.status.set(state=f"indexing {CORPUS_DIR}…")
        rel = os.path.relpath(CORPUS_DIR)  # sources then show short paths such as corpus/docs/faq.html
        self._index_corpus(Path(rel) if not rel.startswith("..") else CORPUS_DIR)

    @work(thread=True, group="index", exclusive=True, exit_on_error=False)
    def _index_corpus(self, folder: Path) -> None:
        try:
            from retrieval import Collection, get_embedder
            from retrieval._chunking import ChunkingConfig

            s = self.settings
            self.post_message(self.EngineProgressed(f"indexing: loading embedder {s.embedder}"))
            coll = Collection(s.collection_path(), get_embedder(s.embedder),
                              ChunkingConfig(s.chunk_tokens, s.chunk_overlap, max_file_mb=s.max_file_mb))
            report = coll.update([folder], progress=lambda stage, done, total: self.post_message(
                self.EngineProgressed(f"indexing: {stage} {done}/{total}")))
            coll.close()
        except Exception as exc:
            self.post_message(self.EngineFailed("error", f"indexing failed: {exc}", self._load_token))
            return
        self.post_message(self.CorpusIndexed(report.added + report.updated, report.chunks))

    async def on_ragdesk_app_corpus_indexed(self, event: "RagdeskApp.CorpusIndexed") -> None:
        if not self._ui_alive():
            return
        self.notify(f"Indexed {event.documents} documents ({event.chunks} chunks).", markup=False)
        await self.chat.clear_notices()
        await self.show_welcome()
        self.prompt.focus()
        self.start_engine()
