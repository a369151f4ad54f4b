"""Hostile input at the command line (issue 12): `--collection` after every subcommand, escape sequences and
bidi overrides from documents kept away from the terminal (CLI and chat app), one-line errors for unwritable
paths and malformed settings instead of tracebacks or silent coercion, and the options the errors point to."""

from __future__ import annotations

import asyncio
import json
import math

import click
import pytest
from click.testing import CliRunner

from assistant.cli import cli, main
from assistant.settings import Settings, load_settings
from retrieval.errors import ConfigError

# a window title, a screen clear, a C1 CSI, a right-to-left override, DEL and an OSC 8 hyperlink
EVIL = ("Evil \x1b]0;pwned\x07 title \x1b[2J cleared \x9b31m red \u202eoverride\u202c \u2066iso\u2069 del\x7f "
        "\x1b]8;;file:///etc/passwd\x1b\\click me\x1b]8;;\x1b\\ done")
# what must never reach the terminal raw (the styles click adds, \x1b[1m, are ours and allowed)
RAW = ["\x1b]", "\x1b[2J", "\x07", "\x9b", "\u202e", "\u202c", "\u2066", "\u2069", "\x7f"]


def run_main(capsys, *args) -> tuple[int, str, str]:
    """`ragdesk ARGS` in this process, through main() (so errors are formatted as for a user)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


def tty(*args):
    """Invoke as on a terminal: color=True stops click from stripping ANSI sequences, as it does for pipes."""
    result = CliRunner().invoke(cli, list(args), color=True, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def hostile_docs(sample_docs):
    (sample_docs / "evil.md").write_text(f"# {EVIL}\n\nThe zebra note: {EVIL}\n", encoding="utf-8")
    (sample_docs / "split\nname.txt").write_text("Zebra crossings are striped.\n", encoding="utf-8")
    return sample_docs


# ---- 1. --collection after the subcommand ---------------------------------------------------------------

def test_collection_after_the_subcommand(sample_docs, capsys):
    code, out, err = run_main(capsys, "index", str(sample_docs), "--collection", "team", "--json")
    assert code == 0, err
    assert json.loads(out)["collection"] == "team" and json.loads(out)["added"] == 3
    code, out, _ = run_main(capsys, "search", "port 8740", "--collection", "team", "-k", "1", "--json")
    assert code == 0 and "8740" in json.loads(out)[0]["text"]
    code, out, _ = run_main(capsys, "ask", "Which port does the server use?", "-c", "team", "--json")
    assert code == 0 and json.loads(out)["sources"][0]["n"] == 1
    # the default collection was never indexed: the flag really chose `team`
    code, _, err = run_main(capsys, "search", "port 8740")
    assert code == 1 and "collection 'default' has no index yet" in one_error_line(err)


def test_collection_before_still_works_and_the_subcommands_value_wins(sample_docs, capsys):
    assert run_main(capsys, "-c", "team", "index", str(sample_docs))[0] == 0
    assert run_main(capsys, "-c", "team", "search", "port", "--json")[0] == 0
    code, _, err = run_main(capsys, "-c", "team", "search", "port", "-c", "other")
    assert code == 1 and "collection 'other' has no index yet" in one_error_line(err)
    code, out, _ = run_main(capsys, "-c", "other", "search", "port", "-c", "team", "--json")
    assert code == 0 and json.loads(out)


def _option(cmd: click.Command, name: str) -> click.Option:
    return next(p for p in cmd.params if p.name == name)


def test_every_collection_command_has_the_same_option():
    ctx = click.Context(cli)
    eval_group = cli.get_command(ctx, "eval")
    commands = {name: cli.get_command(ctx, name) for name in ("index", "search", "ask", "chat", "bench")}
    commands["eval run"] = eval_group.get_command(ctx, "run")
    helps = {name: (tuple(_option(cmd, "collection").opts), _option(cmd, "collection").help)
             for name, cmd in commands.items()}
    assert len(set(helps.values())) == 1, helps  # one shared decorator
    assert helps["index"][0] == ("--collection", "-c")
    for name in ("list", "compare", "report"):  # these read the evals database, not a collection
        assert "collection" not in {p.name for p in eval_group.get_command(ctx, name).params}


def test_chat_and_bench_take_collection_after_the_subcommand(monkeypatch):
    seen = {}
    from assistant import engine as engine_mod
    from assistant.tui import app as app_mod

    monkeypatch.setattr(app_mod.RagdeskApp, "run", lambda self: seen.setdefault("chat", self.settings.collection))

    class Stop(Exception):
        pass

    def fake_engine(settings, *a, **k):
        seen["bench"] = settings.collection
        raise Stop

    monkeypatch.setattr(engine_mod, "Engine", fake_engine)
    CliRunner().invoke(cli, ["chat", "--collection", "team"], catch_exceptions=False)
    result = CliRunner().invoke(cli, ["-c", "x", "bench", "-c", "team"])
    assert isinstance(result.exception, Stop), result.output
    assert seen == {"chat": "team", "bench": "team"}


# ---- 2. escape sequences from documents -----------------------------------------------------------------

def _no_raw(text: str) -> None:
    leaked = [r for r in RAW if r in text]
    assert not leaked, (leaked, text)


def test_search_shows_control_characters_visibly(hostile_docs, capsys):
    assert run_main(capsys, "index", str(hostile_docs))[0] == 0
    out = tty("search", "zebra note", "-k", "5")
    _no_raw(out)
    assert r"Evil \x1b]0;pwned\x07 title \x1b[2J cleared \x9b31m red \u202eoverride\u202c" in out
    assert r"\x1b]8;;file:///etc/passwd\x1b\click me" in out and r"del\x7f" in out
    # each hit is exactly two lines, even the file whose name holds a newline
    lines = out.splitlines()
    assert len(lines) == 2 * sum(line.startswith("\x1b[1m[") for line in lines)
    assert any(r"split\x0aname.txt" in line for line in lines)


def test_search_json_round_trips_but_carries_no_raw_controls(hostile_docs, capsys):
    assert run_main(capsys, "index", str(hostile_docs))[0] == 0
    code, out, _ = run_main(capsys, "search", "zebra note", "--json")
    assert code == 0
    _no_raw(out)
    assert "\x1b" not in out and "\\u009b" in out and "\\u202e" in out and "\\u007f" in out
    hits = json.loads(out)
    evil = next(h for h in hits if h["path"].endswith("evil.md"))
    assert EVIL in evil["text"] and evil["heading"] == EVIL  # the data itself is unchanged
    assert any(h["path"].endswith("split\nname.txt") for h in hits)


def test_ask_streams_and_lists_sources_without_raw_controls(hostile_docs, capsys):
    assert run_main(capsys, "index", str(hostile_docs))[0] == 0
    out = tty("ask", "What does the zebra note say?", "-k", "5")
    _no_raw(out)
    assert r"\x1b]0;pwned\x07" in out  # the fake model quotes the passage, so the answer holds it too
    source_lines = [line for line in out.splitlines() if line[:2] in ("*[", " [")]
    assert any(r"evil.md - Evil \x1b]0;pwned\x07" in line for line in source_lines)
    assert any(r"split\x0aname.txt" in line for line in source_lines)
    code, out, _ = run_main(capsys, "ask", "What does the zebra note say?", "--json")
    _no_raw(out)
    assert EVIL in json.loads(out)["answer"]


def test_eval_compare_shows_quoted_controls_visibly(hostile_docs, tmp_path, capsys):
    from assistant.models import FakeModel, register_model

    register_model("fake-hostile", lambda settings: FakeModel(reply=f"It says {EVIL} [1]"))
    assert run_main(capsys, "index", str(hostile_docs))[0] == 0
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"id": "z\x1b]0;id\x07", "question": f"What does the zebra note say? {EVIL}",
                                 "answer": "Zebra crossings are striped."}) + "\n")
    assert run_main(capsys, "eval", str(suite))[0] == 0
    assert run_main(capsys, "eval", str(suite), "--model", "fake-hostile")[0] == 0
    code, out, err = run_main(capsys, "eval", "compare", "previous", "latest", "--by", "rouge_l")
    assert code == 0, err
    _no_raw(out)
    assert r"z\x1b]0;id\x07:" in out and r"B: It says Evil \x1b]0;pwned\x07" in out


def test_error_messages_show_control_characters_visibly(capsys):
    code, _, err = run_main(capsys, "index", "docs/\x1b]0;pwned\x07\nfake line")
    line = one_error_line(err)
    assert code == 1 and r"path not found: docs/\x1b]0;pwned\x07\x0afake line" in line
    _no_raw(err)


def test_safe_text_keeps_ordinary_text_and_layout():
    from assistant._terminal import safe_json, safe_text

    text = "Grüße, 東京, emoji 🚀, Hebrew שלום, tab\tand\nnewline"
    assert safe_text(text, keep="\n\t") == text
    assert safe_text("a\tb\nc") == r"a\x09b\x0ac"
    assert safe_text("\x00\x1f\x7f\x80\x9f\u202a\u202e\u2066\u2069") == (
        r"\x00\x1f\x7f\x80\x9f\u202a\u202e\u2066\u2069")
    assert safe_text("\u200b\u00a0") == "\u200b\u00a0"  # not controls: left alone
    obj = {"t": "\x1b\x7f\x85\u202e ok é", "n": [1, 2.5, None]}
    assert json.loads(safe_json(obj, indent=2)) == obj
    assert not any(0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in safe_json(obj, indent=2))


def _hostile_chat(hostile_docs, model):
    """The chat app answering from the hostile documents with `model`, and a coroutine that waits for the
    engine and asks the zebra question."""
    from assistant.engine import Engine
    from assistant.tui.app import RagdeskApp
    from retrieval import Collection, get_embedder

    coll = Collection(load_settings().collection_path(), get_embedder("hashing"))
    coll.update([hostile_docs])
    app = RagdeskApp(load_settings(), engine_factory=lambda s: Engine(s, model=model, collection=coll))

    async def ask_zebra(pilot):
        while app.engine is None:
            await pilot.pause(0.02)
        app.query_one("#prompt").value = "What does the zebra note say?"
        await pilot.press("enter")

    return app, ask_zebra


def test_chat_app_keeps_control_characters_from_the_terminal(hostile_docs):
    """The bytes the app would write to the terminal (the compositor's full update) hold no document ESC."""
    from assistant.models import FakeModel
    from assistant.tui._widgets import SourcesPanel

    app, ask_zebra = _hostile_chat(hostile_docs, FakeModel())

    async def scenario():
        async with app.run_test(size=(150, 44)) as pilot:
            await ask_zebra(pilot)
            for _ in range(500):
                if app.chat.answers() and app.generating is None:
                    break
                await pilot.pause(0.02)
            box = app.chat.answers()[-1]
            assert EVIL in box.text  # the fake model quoted the passage
            panel = app.query_one(SourcesPanel)
            n = next(i for i, p in enumerate(panel.passages, 1) if p.path.endswith("evil.md"))
            assert panel.show_passage(n)
            await pilot.pause(0.1)
            return app.screen._compositor.render_update(full=True).render_segments(app.console)

    written = asyncio.run(scenario())
    _no_raw(written)
    assert r"\x1b]0;pwned\x07" in written  # shown, visibly


def test_chat_app_keeps_control_characters_from_the_terminal_while_streaming(hostile_docs):
    """The same while the answer streams: the unfinished line (plain text, not yet Markdown) is shown through
    safe_text too."""
    from assistant.models import FakeModel

    reply = f"A first paragraph.\n\nThe note says {EVIL} " + " ".join(f"w{i}" for i in range(60))
    app, ask_zebra = _hostile_chat(hostile_docs, FakeModel(reply=reply, delay_s=0.03))

    async def scenario():
        async with app.run_test(size=(150, 44)) as pilot:
            await ask_zebra(pilot)
            for _ in range(500):
                if app.chat.answers() and " w3" in app.chat.answers()[-1].text:
                    break
                await pilot.pause(0.02)
            await pilot.pause(0.1)
            assert app.generating is not None and app.chat.answers()[-1].query(".tail")  # still streaming
            return app.screen._compositor.render_update(full=True).render_segments(app.console)

    written = asyncio.run(scenario())
    _no_raw(written)
    assert r"\x1b]0;pwned\x07" in written  # shown, visibly, in the tail


# ---- 3. one-line errors and values refused, not coerced --------------------------------------------------

def test_report_to_an_unwritable_path_is_one_line(indexed, tmp_path, capsys):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"question": "Which port does the server use?", "answer": "8740"}) + "\n")
    assert run_main(capsys, "eval", str(suite))[0] == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for target in (blocker / "report.html", blocker / "sub" / "report.html", "/proc/x.html"):
        code, _, err = run_main(capsys, "eval", "report", "latest", "--html", str(target))
        line = one_error_line(err)
        assert code == 1 and f"cannot write the report to {target}" in line and "--html" in line, line
    assert list(tmp_path.glob("**/*.tmp")) == []


def test_index_with_an_unwritable_home_is_one_line(sample_docs, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RAGDESK_HOME", str(blocker / "home"))
    code, _, err = run_main(capsys, "index", str(sample_docs))
    line = one_error_line(err)
    assert code == 1 and f"the home folder {blocker / 'home'} cannot be written" in line and "RAGDESK_HOME" in line


def test_disk_errors_elsewhere_are_one_line_and_bugs_keep_tracebacks(monkeypatch, capsys):
    import errno
    import sqlite3

    from assistant import cli as cli_mod
    from assistant._oserrors import disk_problem

    assert disk_problem(OSError(errno.ENOSPC, "No space left on device", "/data/x")) == (
        "No space left on device: /data/x (the disk is full; free some space and run it again)")
    assert "RAGDESK_HOME" in disk_problem(sqlite3.OperationalError("attempt to write a readonly database"))
    assert disk_problem(sqlite3.OperationalError("no such column: x")) is None
    assert disk_problem(ValueError("bug")) is None

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x")

    monkeypatch.setattr(cli_mod, "settings_from", full)
    code, _, err = run_main(capsys, "models")
    assert code == 1 and "No space left on device: /data/x" in one_error_line(err)

    def bug(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr(cli_mod, "settings_from", bug)
    with pytest.raises(ValueError):
        main(["models"])


@pytest.mark.parametrize("line,needle", [
    ("top_k = 1e400", "top_k=inf"),
    ("top_k = true", "top_k=True"),
    ("top_k = 4.0", "top_k=4.0"),
    ("max_new_tokens = 4.9", "max_new_tokens=4.9"),
    ("price_input_per_1k = nan", "price_input_per_1k=nan"),
    ("price_output_per_1k = inf", "price_output_per_1k=inf"),
    ("repetition_penalty = inf", "repetition_penalty=inf"),
    ("device_cost_per_hour = true", "device_cost_per_hour=True"),
    ("model = 5", "model=5"),
    ("collection = false", "collection=False"),
    ("top_k = [4]", "top_k=[4]"),
])
def test_bad_toml_values_are_refused_with_the_settings_name(tmp_path, capsys, line, needle):
    (tmp_path / "ragdesk.toml").write_text(line + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cwd=tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'ragdesk.toml'}: {needle} is not a valid"), str(err.value)
    code, _, out = run_main(capsys, "search", "port")
    assert code == 1 and needle in one_error_line(out)


@pytest.mark.parametrize("var,value", [
    ("RAGDESK_TOP_K", "true"), ("RAGDESK_TOP_K", "4.9"), ("RAGDESK_TOP_K", "1e400"),
    ("RAGDESK_REPETITION_PENALTY", "inf"), ("RAGDESK_REPETITION_PENALTY", "nan"),
    ("RAGDESK_PRICE_INPUT_PER_1K", "nan"), ("RAGDESK_DEVICE_COST_PER_HOUR", "Infinity"),
])
def test_bad_environment_values_are_refused(var, value):
    with pytest.raises(ConfigError) as err:
        load_settings(environ={var: value})
    name = var.removeprefix("RAGDESK_").lower()
    assert str(err.value).startswith(f"{var}: {name}={value!r} is not a valid"), str(err.value)


def test_good_values_still_load(tmp_path):
    (tmp_path / "ragdesk.toml").write_text("top_k = 7\nrepetition_penalty = 1\nprice_input_per_1k = 0.5\n"
                                           "model = 'fake'\n")
    s = load_settings(environ={"RAGDESK_MAX_NEW_TOKENS": " 64 ", "RAGDESK_DEVICE_COST_PER_HOUR": "1e-3"},
                      cwd=tmp_path)
    assert (s.top_k, s.repetition_penalty, s.price_input_per_1k, s.max_new_tokens) == (7, 1, 0.5, 64)
    assert math.isclose(s.device_cost_per_hour, 0.001)


@pytest.mark.parametrize("field,value", [("top_k", True), ("top_k", 4.5), ("repetition_penalty", math.inf),
                                         ("price_input_per_1k", math.nan), ("model", 5)])
def test_settings_made_in_code_are_checked_too(field, value):
    with pytest.raises(ConfigError, match=f"^{field}="):
        Settings(**{field: value})


@pytest.mark.parametrize("k", ["0", "-3"])
def test_search_k_must_be_positive(indexed, capsys, k):
    code, out, err = run_main(capsys, "search", "port", "-k", k)
    assert code == 2 and f"Invalid value for '-k': {k} is not in the range x>=1" in err and out == ""


def test_ask_accepts_the_context_window_the_error_suggests(indexed, capsys):
    question = "Which port does the server use? " + "please " * 300
    code, _, err = run_main(capsys, "ask", question, "--context-window", "128")
    line = one_error_line(err)
    assert code == 1 and "too long for the model's context" in line and "128 available" in line
    assert "--context-window" in line
    code, out, err = run_main(capsys, "ask", question, "--context-window", "4096", "--json")
    assert code == 0, err
    assert json.loads(out)["usage"]["prompt_tokens"] > 300
    assert "--context-window" in CliRunner().invoke(cli, ["eval", "run", "--help"]).output
