"""Suite files (bad lines by number, empty files as one error) and the run store (round trip, migrations)."""

from __future__ import annotations

import json

import pytest

from evals._runs import RunStore
from evals._suite import load_suite
from retrieval.errors import InputError


def test_suite_with_bad_lines(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "question": "Which port?", "answer": "8740", "sources": ["install.md"]}),
        "{not json",
        json.dumps({"question": "No answer here"}),
        "",
        "# a comment",
        json.dumps({"question": "Airspeed of a swallow?", "unanswerable": True}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "a", "question": "dup", "answer": "x"}),
        json.dumps({"question": "Q", "answer": "A", "sources": "notes.txt", "expect": ["8740", "port"]}),
        json.dumps({"question": "Q2", "answer": "A", "sources": [1, 2]}),
    ]) + "\n")
    warnings: list[str] = []
    items = load_suite(path, warn=warnings.append)
    assert [i.id for i in items] == ["a", "line-6", "line-9"]
    assert items[1].unanswerable and items[1].reference == ""
    assert items[2].sources == ["notes.txt"] and items[2].expect == ["8740", "port"]
    assert [w.split(":")[1] for w in warnings] == ["2", "3", "7", "8", "10"]
    assert "not valid JSON" in warnings[0]
    assert '"answer"' in warnings[1] and "unanswerable" in warnings[1]
    assert "duplicate id" in warnings[3] and "line 1" in warnings[3]


@pytest.mark.parametrize("content", ["", "\n\n", "{bad\n[1]\n"])
def test_unusable_suite_is_one_error(tmp_path, content):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match="no usable question"):
        load_suite(path)


def test_missing_or_binary_suite(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_suite(tmp_path / "nope.jsonl")
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="cannot read"):
        load_suite(bad)


def _sample(i: int, value: float) -> dict:
    return {"sample_id": f"s{i}", "question": f"q{i}", "reference": "r", "unanswerable": False,
            "gold_sources": ["a.md"], "expect": [], "answer": "ans", "contexts": [{"n": 1, "path": "a.md", "text": "t"}],
            "status": "complete", "error": "", "declined": False, "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "timings": {"ttft_ms": 1.0, "total_ms": 2.0}, "cost": {"input_usd": 0.0}, "speculative": {},
            "scores": {"rouge_l": value}, "score_status": {"rouge_l": "ok"}, "score_notes": {}}


def test_run_store_round_trip(tmp_path):
    store = RunStore(tmp_path / "evals.db")
    run = {"suite": "s.jsonl", "suite_sha": "abc", "n_samples": 2, "model": "fake", "adapter": "", "speculative": "off",
           "judge": "", "collection": "default", "collection_identity": "123", "index_stats": {"chunks": 4},
           "config": {"top_k": 4}, "versions": {"ragas": "0.4.3"}, "summary": {"metrics": {}}, "harness": {}, "label": ""}
    first = store.save(run, [_sample(0, 0.5), _sample(1, 1.0)])
    second = store.save(run | {"model": "other"}, [_sample(0, 0.25)])
    assert store.resolve("latest") == second and store.resolve("previous") == first
    assert store.run(first)["config"] == {"top_k": 4} and store.run("latest")["model"] == "other"
    back = store.samples(first)
    assert [s["scores"]["rouge_l"] for s in back] == [0.5, 1.0]
    assert back[0]["contexts"][0]["path"] == "a.md" and back[0]["declined"] is False
    assert [r["id"] for r in store.list()] == [second, first]
    with pytest.raises(InputError, match="does not exist"):
        store.resolve(99)
    with pytest.raises(InputError, match="not a run id"):
        store.resolve("banana")
    # migrations are idempotent
    from evals._runs import migrations

    assert migrations.apply(store.db) == []
    assert RunStore(tmp_path / "evals.db").resolve("latest") == second


def test_eval_cli_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, evals, evals.cli; from assistant.cli import cli; cli.get_command(None, 'eval'); "
            "heavy = [m for m in ('ragas', 'torch', 'transformers', 'langchain_core', 'faiss') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
