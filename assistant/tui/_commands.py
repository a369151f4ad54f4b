"""The command palette provider: one entry for every action of the chat app, plus "open conversation" and
"show source [n]" entries built from what is on screen.

It only lists and runs the app's own actions; the actions themselves live on `RagdeskApp`.
"""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from assistant._terminal import safe_text

__all__ = ["RagdeskCommands"]


class RagdeskCommands(Provider):
    def _entries(self) -> list[tuple[str, str, object]]:
        app = self.app
        entries = [(name, help_text, partial(app.run_action, action)) for name, action, help_text in app.PALETTE]
        for conv in app.history.conversations()[:50] if app.history else []:
            entries.append((f"Open conversation: {conv.title}", f"collection {conv.collection}",
                            partial(app.open_conversation_later, conv.id)))
        for n, p in enumerate(app.selected_sources(), 1):
            entries.append((f"Show source [{n}]: {safe_text(p.path)}", safe_text(p.heading or ""),
                            partial(app.show_source, n)))
        return entries

    async def discover(self) -> Hits:
        for name, help_text, command in self._entries():
            yield DiscoveryHit(Content(name), command, text=name, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, command in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, self._highlight(matcher, name), command, text=name, help=help_text)

    @staticmethod
    def _highlight(matcher, name: str) -> Content:
        # Matcher.highlight parses console markup; titles and paths must stay literal
        content = Content(name)
        _, offsets = matcher.fuzzy_search.match(matcher.query, name)
        for offset in offsets:
            if not name[offset].isspace():
                content = content.stylize(matcher.match_style, offset, offset + 1)
        return content
