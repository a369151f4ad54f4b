import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ragdesk(*args, env=None, check=None):
    proc = subprocess.run([sys.executable, "-c", "from assistant.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_help_is_instant_and_imports_nothing_heavy():
    code = ("import sys; from assistant.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'textual', 'ragas', 'sentence_transformers') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out and "Examples:" in out


def test_every_command_has_help_with_an_example():
    for cmd in ("index", "search", "ask", "models"):
        out = ragdesk(cmd, "--help", check=0).stdout
        assert "Examples:" in out and f"ragdesk {cmd}" in out, cmd


def test_version():
    assert "ragdesk, version 0.1.0" in ragdesk("--version", check=0).stdout


def test_index_search_json_and_incremental(sample_docs):
    out = json.loads(ragdesk("index", str(sample_docs), "--json", check=0).stdout)
    assert out["added"] == 3 and out["chunks"] > 0 and out["embedded"] == out["chunks"]
    again = json.loads(ragdesk("index", str(sample_docs), "--json", check=0).stdout)
    assert again["embedded"] == 0 and again["unchanged"] == 3
    hits = json.loads(ragdesk("search", "port 8740", "-k", "2", "--json", check=0).stdout)
    assert len(hits) == 2 and hits[0]["n"] == 1 and "8740" in hits[0]["text"]
    assert set(hits[0]) >= {"n", "path", "heading", "lines", "score", "text"}
    human = ragdesk("index", str(sample_docs), check=0)
    assert "0 added, 0 updated, 0 removed, 3 unchanged" in human.stdout


def test_ask_json_with_fake_model(sample_docs):
    ragdesk("index", str(sample_docs), check=0)
    data = json.loads(ragdesk("ask", "Which port does the server use?", "--json", check=0).stdout)
    assert data["answer"].endswith("[1]") and data["sources"][0]["n"] == 1 and data["model"] == "fake"
    streamed = ragdesk("ask", "Which port does the server use?", check=0)
    assert "[1]" in streamed.stdout and "*[1]" in streamed.stdout


@pytest.mark.parametrize("args,needle", [
    (["search", "port"], "no index yet"),
    (["ask", "port?"], "no index yet"),
    (["index", "does/not/exist"], "path not found: does/not/exist"),
])
def test_errors_are_one_line_exit_1(args, needle):
    proc = ragdesk(*args, check=1)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]


def test_bad_settings_and_values(sample_docs, tmp_path):
    ragdesk("index", str(sample_docs), check=0)
    proc = ragdesk("ask", "port?", env={"RAGDESK_MAX_NEW_TOKENS": "lots"}, check=1)
    assert "RAGDESK_MAX_NEW_TOKENS: max_new_tokens='lots' is not a valid int" in proc.stderr
    (tmp_path / "ragdesk.toml").write_text('speculative = "fast"\n')
    proc = ragdesk("ask", "port?", check=1)
    assert "speculative='fast' is not valid" in proc.stderr
    (tmp_path / "ragdesk.toml").unlink()
    proc = ragdesk("ask", "   ", check=1)
    assert "question is empty" in proc.stderr
    proc = ragdesk("ask", "port?", "--model", "no-such-model", check=1)
    assert "unknown model 'no-such-model'" in proc.stderr and "smollm2-135m" in proc.stderr


def test_usage_error_exit_2():
    proc = ragdesk("search", "--mode", "fuzzy", "x", check=2)
    assert "Invalid value" in proc.stderr


def test_settings_layers(tmp_path, monkeypatch):
    from assistant.settings import load_settings

    (tmp_path / "ragdesk.toml").write_text("top_k = 7\nmax_new_tokens = 99\nspeculative = 'off'\n")
    s = load_settings({"max_new_tokens": 5}, environ={"RAGDESK_TOP_K": "3", "RAGDESK_HOME": str(tmp_path)},
                      cwd=tmp_path)
    assert (s.top_k, s.max_new_tokens, s.speculative) == (3, 5, "off")
