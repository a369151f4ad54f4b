"""Modal screens of the chat app: help (every key binding), rename, confirm delete, pick a collection.

Each returns its result with `dismiss`; none touches history or the engine itself.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, OptionList, Static
from textual.widgets.option_list import Option

__all__ = ["CollectionScreen", "ConfirmScreen", "HelpScreen", "RenameScreen"]


class HelpScreen(ModalScreen[None]):
    """Every key binding of the app, with what it does."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close help")]

    def __init__(self, rows: list[tuple[str, str, str]]):
        super().__init__()
        self.rows = rows  # (key, action description, where)

    def compose(self):
        with Vertical(id="help-box", classes="dialog"):
            yield Static("Keys", classes="title")
            table = DataTable(id="help-table", cursor_type="row", zebra_stripes=True)
            table.add_columns("key", "does", "where")
            for key, desc, where in self.rows:
                table.add_row(Text(key, style="bold"), Text(desc), Text(where, style="dim"))
            yield table
            yield Static(Text("Every action is also in the command palette (ctrl+p). Esc closes this help.",
                              style="dim"), markup=False)


class RenameScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str):
        super().__init__()
        self.title_now = title

    def compose(self):
        with Vertical(classes="dialog small"):
            yield Static("Rename conversation", classes="title")
            yield Input(self.title_now, id="rename-input", select_on_focus=True)
            yield Static(Text("Enter saves, Esc cancels.", style="dim"), markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(value or None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape,n", "dismiss(False)", "No"), Binding("y", "dismiss(True)", "Yes")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self):
        with Vertical(classes="dialog small"):
            yield Static(Text(self.question), markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Delete (y)", id="yes", variant="error")
                yield Button("Keep (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class CollectionScreen(ModalScreen[str | None]):
    """Pick one of the indexed collections."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, names: list[str], current: str):
        super().__init__()
        self.names = names
        self.current = current

    def compose(self):
        with Vertical(classes="dialog small"):
            yield Static("Switch collection", classes="title")
            olist = OptionList(*[Option(Text(n + ("  (current)" if n == self.current else "")), id=n)
                                 for n in self.names], id="collection-list")
            yield olist
            if not self.names:
                yield Static(Text("No collections yet: run ragdesk index PATH --collection NAME", style="dim"),
                             markup=False)
            yield Static(Text("Enter switches, Esc cancels.", style="dim"), markup=False)

    def on_mount(self) -> None:
        if self.current in self.names:
            self.query_one(OptionList).highlighted = self.names.index(self.current)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option_id)
