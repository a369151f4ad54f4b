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


def test_every_collection_command_has_the_same_option(monkeypatch):
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


# ---- 3. one-line errors and values refused, not coerced --------------------------------------------------


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
