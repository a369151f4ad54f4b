"""LoRA fine-tuning: ticket reading and its errors, the reply-only loss mask, only adapter weights training,
exact resume, adapter save/load round trip (also through `--adapter` at answer time), and the CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from assistant.cli import cli
from assistant.finetune import FinetuneConfig, FinetuneRun, read_tickets, render_ticket, split_tickets
from retrieval.errors import ConfigError, InputError, RagdeskError

TICKETS = [
    {"question": "Which port does Tidepool listen on?", "answer": "Port 8740 by default; change it in [server]."},
    {"subject": "Trash", "body": "How long is trash kept?", "answer": "Trash is kept for 14 days."},
    {"messages": [{"role": "user", "content": "How long is version history kept?"},
                  {"role": "assistant", "content": "Version history is kept for 30 days."}]},
    {"question": "Can I change the port?", "answer": "Yes, set port in the server section."},
    {"question": "Where do blocks live?", "answer": "Under /var/lib/tidepool/blocks.", "split": "test"},
    {"question": "Is TOTP supported?", "answer": "TOTP works in every edition.", "split": "test"},
]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ticket_file(tmp_path):
    return write_jsonl(tmp_path / "tickets.jsonl", TICKETS * 2)


def make_run(tiny_model, tmp_path, **overrides):
    tickets, _ = read_tickets(write_jsonl(tmp_path / "t.jsonl", TICKETS * 2))
    cfg = FinetuneConfig(model=str(tiny_model), **({"batch_size": 2, "max_steps": 4, "lr": 1e-2, "seed": 1,
                                                     "val_fraction": 0.2, "device": "cpu", "dtype": "float32"}
                                                    | overrides))
    return FinetuneRun(cfg, tiny_model, tickets).load()


# ---- reading -----------------------------------------------------------------------------------------------

def test_reads_all_three_shapes_and_reports_bad_rows_by_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", TICKETS[:3], raw_lines=['{"question": "no answer"}', "not json",
                                                                     '{"messages": [{"role": "user", "content": "hi"}]}'])
    tickets, problems = read_tickets(path)
    assert [t.question for t in tickets] == ["Which port does Tidepool listen on?", "Trash\n\nHow long is trash kept?",
                                             "How long is version history kept?"]
    assert [t.reply for t in tickets][1] == "Trash is kept for 14 days."
    assert len(problems) == 3
    assert problems[0].startswith(f"{path}:4:") and '"answer"' in problems[0]
    assert problems[1].startswith(f"{path}:5:") and "not valid JSON" in problems[1]
    assert problems[2].startswith(f"{path}:6:") and "assistant reply" in problems[2]


def test_csv_tickets_and_line_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('question,answer,split\n"Port?","8740",\n"Multi\nline?","yes",test\n,"no question",\n')
    tickets, problems = read_tickets(path)
    assert [(t.question, t.reply, t.split, t.line) for t in tickets] == [("Port?", "8740", "train", 2),
                                                                          ("Multi\nline?", "yes", "test", 3)]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:5:")


def test_empty_file_and_no_good_rows_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty"):
        read_tickets(empty)
    bad = write_jsonl(tmp_path / "bad.jsonl", [], raw_lines=['{"foo": 1}', "[1, 2]"])
    with pytest.raises(RagdeskError) as err:
        read_tickets(bad)
    assert f"{bad}:1:" in str(err.value) and "1 more bad rows" in str(err.value) and "\n" not in str(err.value)


def test_config_errors_name_field_and_value():
    with pytest.raises(ConfigError, match=r"rank=0"):
        FinetuneConfig(rank=0)
    with pytest.raises(ConfigError, match=r"val_fraction=1\.5"):
        FinetuneConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"lr=-1"):
        FinetuneConfig(lr=-1)
    with pytest.raises(ConfigError, match=r"dtype='float16'"):
        FinetuneConfig(dtype="float16")
    with pytest.raises(ConfigError, match=r"checkpoint_every=-1"):
        FinetuneConfig(checkpoint_every=-1)
    with pytest.raises(ConfigError, match=r"logits_chunk=-8"):
        FinetuneConfig(logits_chunk=-8)


def test_test_split_is_never_in_train_or_validation(ticket_file):
    tickets, _ = read_tickets(ticket_file)
    train, val, test = split_tickets(tickets, 0.25, seed=3)
    assert len(test) == 4 and all(t.split == "test" for t in test)
    assert len(val) == 2 and len(train) == 6
    assert not {id(t) for t in test} & {id(t) for t in train + val}


# ---- rendering ---------------------------------------------------------------------------------------------

def test_loss_mask_covers_the_reply_only(tiny_model, ticket_file):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    tickets, _ = read_tickets(ticket_file)
    for ticket in tickets[:3]:
        ids, labels = render_ticket(tok, ticket, system="Be brief.")
        assert ids == list(tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *ticket.messages],
                                                   tokenize=True)["input_ids"])
        labelled = [i for i, lab in zip(ids, labels) if lab != -100]
        assert labelled == ids[len(ids) - len(labelled) - 1: -1]  # one contiguous span, before the final newline
        assert tok.decode(labelled) == ticket.reply + "<|im_end|>"
        prompt = tok.decode([i for i, lab in zip(ids, labels) if lab == -100])
        assert ticket.question in prompt and ticket.reply not in prompt


def test_multi_turn_tickets_label_every_assistant_turn(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from assistant._tickets import Ticket

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    t = Ticket([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."},
                {"role": "user", "content": "Port?"}, {"role": "assistant", "content": "8740."}])
    ids, labels = render_ticket(tok, t)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "Hi there.<|im_end|>8740.<|im_end|>"


# ---- training ----------------------------------------------------------------------------------------------

def test_a_step_changes_only_adapter_weights(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path, max_steps=1)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    trainable, total = run.parameter_counts
    assert 0 < trainable < total
    run.train()
    changed = {n for n, p in run.model.named_parameters() if not (p.detach() == before[n]).all()}
    lora = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert changed and changed <= lora
    assert all("lora_" in n for n in lora)
    # the base (frozen) weights are bit-identical
    assert all((p.detach() == before[n]).all() for n, p in run.model.named_parameters() if n not in lora)


def test_bf16_checkpointed_run_keeps_base_frozen_and_lora_in_float32(tiny_model, tmp_path):
    import torch

    # ungrouped: the steps' tickets then vary in length at random, not in sorted blocks, so the mean losses of
    # the first and last steps compare training progress rather than which tickets those steps hold
    run = make_run(tiny_model, tmp_path, max_steps=8, dtype="bfloat16", checkpoint_every=1, logits_chunk=7,
                   val_fraction=0.0, lr=3e-2, warmup_fraction=0.0, group_by_length=False)
    assert run.dtype == "bfloat16"
    lora = {n for n, p in run.model.named_parameters() if p.requires_grad}
    dtypes = {n: p.dtype for n, p in run.model.named_parameters()}
    assert lora and all(dtypes[n] == torch.float32 for n in lora)  # trained (and AdamW'd) in float32
    assert {dtypes[n] for n in dtypes if n not in lora} == {torch.bfloat16}  # no float32 copy of the base
    assert all(layer.gradient_checkpointing for layer in run.model.base_model.model.model.layers)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    losses = []
    run.train(lambda e: losses.append(e.loss) if e.kind == "step" else None)
    assert all(math.isfinite(x) for x in losses) and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert all((p.detach() == before[n]).all() for n, p in run.model.named_parameters() if n not in lora)
    assert all(not (p.detach() == before[n]).all() for n, p in run.model.named_parameters() if "lora_B" in n)


def test_checkpointing_and_chunked_logits_leave_loss_and_gradients_unchanged(tiny_model, tmp_path):
    import torch

    def grads(**options):
        run = make_run(tiny_model, tmp_path, dropout=0.0, **options)
        run.model.train()
        loss, count, _ = run._loss_sum([run.rows["train"][i] for i in (0, 1, 2)])
        (loss / count).backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}

    plain_loss, plain = grads(checkpoint_every=0, logits_chunk=0)
    lean_loss, lean = grads(checkpoint_every=1, logits_chunk=5)
    assert abs(plain_loss - lean_loss) < 1e-4 * abs(plain_loss)
    assert plain.keys() == lean.keys() and any(g.abs().sum() > 0 for g in plain.values())
    for n, g in plain.items():
        assert torch.allclose(g, lean[n], rtol=1e-4, atol=1e-7), n


def test_memory_estimate_counts_dtype_checkpointing_and_logit_chunks():
    from types import SimpleNamespace

    from assistant.finetune import estimate_memory

    cfg = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_hidden_layers=30,
                          vocab_size=49152)
    full = estimate_memory(cfg, 137_000_000, 2_400_000, 4, 440, reply_share=0.66)
    lean = estimate_memory(cfg, 137_000_000, 2_400_000, 4, 440, width=2, reply_share=0.66, checkpoint_every=1,
                           logits_chunk=256)
    assert full["weights_bytes"] == 4 * 137_000_000 and lean["weights_bytes"] == 2 * 137_000_000
    assert lean["gradients_bytes"] == full["gradients_bytes"] == 4 * 2_400_000  # LoRA stays float32
    per_layer = 2 * (1760 * (12 * 576 + 5 * 1536) + 2 * 4 * 9 * 440 * 440)
    logits = 256 * 49152 * (2 + 8)
    assert lean["activations_bytes"] == 30 * 1760 * 576 * 2 + per_layer + logits
    assert full["activations_bytes"] > 10 * lean["activations_bytes"]


def test_training_lowers_the_training_loss(tiny_model, tmp_path, monkeypatch):
    from assistant import finetune

    trims = []  # freed heap goes back to the system every TRIM_EVERY steps on a CPU
    monkeypatch.setattr(finetune, "_release_freed_memory", lambda: trims.append(run.step))
    run = make_run(tiny_model, tmp_path, max_steps=12, val_fraction=0.0, lr=3e-2, warmup_fraction=0.0,
                   group_by_length=False)  # see the bf16 test above
    losses = []
    run.train(lambda e: losses.append(e.loss) if e.kind == "step" else None)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert trims == list(range(finetune.TRIM_EVERY, 13, finetune.TRIM_EVERY))
    monkeypatch.undo()
    finetune._release_freed_memory()  # the real one (glibc's malloc_trim here) runs without error
    assert finetune._malloc_trim() is not None


def test_length_grouping_sees_every_ticket_once_with_less_padding(tiny_model, tmp_path):
    import random

    from assistant import finetune

    tickets = [finetune.Ticket([{"role": "user", "content": f"Question {i}?"},
                                {"role": "assistant", "content": " ".join(["word"] * random.Random(i).randint(1, 60))}],
                               line=i + 1) for i in range(64)]

    def run_with(group: bool):
        cfg = FinetuneConfig(model=str(tiny_model), batch_size=4, max_steps=0, val_fraction=0.0, device="cpu",
                             dtype="float32", seed=3, group_by_length=group)
        return FinetuneRun(cfg, tiny_model, tickets).load()

    def padding(run, epoch):
        rows = run.rows["train"]
        steps = [run._micro_batches(epoch * run.steps_per_epoch + s) for s in range(run.steps_per_epoch)]
        seen = sorted(i for step in steps for b in step for i in b)
        pad = sum(len(b) * max(len(rows[i][0]) for i in b) - sum(len(rows[i][0]) for i in b)
                  for step in steps for b in step)
        return seen, pad, steps

    grouped, plain = run_with(True), run_with(False)
    assert grouped.steps_per_epoch == plain.steps_per_epoch == 16
    for epoch in (0, 1):
        seen_g, pad_g, steps_g = padding(grouped, epoch)
        seen_p, pad_p, _ = padding(plain, epoch)
        assert seen_g == seen_p == list(range(64))  # every ticket exactly once per epoch
        assert pad_g < 0.5 * pad_p
    assert padding(grouped, 0)[2] != padding(grouped, 1)[2]  # a new order each epoch
    assert padding(run_with(True), 1)[2] == padding(grouped, 1)[2]  # the same order for the same seed (resume)
    lengths = [sum(len(grouped.rows["train"][i][0]) for b in s for i in b) for s in padding(grouped, 0)[2]]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)  # steps shuffled, not sorted


def test_one_ticket_per_pass_trains_the_same_step_as_the_whole_micro_batch(tiny_model, tmp_path):
    """rows_per_pass only changes how a step is computed: in float32, without dropout, the adapter after three
    steps is the same (to rounding) whether each micro-batch of 3 runs as one padded pass or as three passes of
    one ticket, with the layers checkpointed (the default) or not."""
    import torch

    runs = {}
    for per_pass, ckpt in ((0, 1), (1, 0)):
        run = make_run(tiny_model, tmp_path, checkpoint_every=ckpt, batch_size=3, max_steps=3, val_fraction=0.0,
                       lr=1e-2, rows_per_pass=per_pass, warmup_fraction=0.0, dropout=0.0)  # no masks to differ
        run.train()
        runs[per_pass] = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    moved = 0
    for name, whole in runs[0].items():
        assert torch.allclose(runs[1][name], whole, atol=1e-5, rtol=1e-4), name
        if "lora_B" in name:  # zero at the start: trained if not zero now
            moved += int(whole.abs().max() > 0)
    assert moved > 0
    with pytest.raises(ConfigError, match="rows_per_pass"):
        FinetuneConfig(rows_per_pass=-1)


def test_resume_continues_from_the_saved_step_exactly(tiny_model, tmp_path):
    import shutil

    # with LoRA dropout, so the restored RNG state has masks to reproduce
    straight = make_run(tiny_model, tmp_path, save_every=2, dropout=0.1)
    straight.train(out=tmp_path / "a")
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step-000004")  # as if stopped after step 2

    resumed = make_run(tiny_model, tmp_path, save_every=2, dropout=0.1)
    assert resumed.resume(tmp_path / "a") == 2
    steps = []
    resumed.train(lambda e: steps.append(e.step) if e.kind == "step" else None, out=tmp_path / "a")
    assert steps == [3, 4]
    a = dict(straight.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        if p.requires_grad:
            assert (p.detach() == a[n].detach()).all(), n


def test_saved_adapter_gives_the_same_logits_and_loads_with_adapter_flag(tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from assistant.models import TransformersModel

    run = make_run(tiny_model, tmp_path, max_steps=3)
    run.train()
    out = tmp_path / "adapter"
    run.save(out)
    for name in ("adapter_config.json", "adapter_model.safetensors", "finetune_config.json", "metrics.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "finetune_config.json").read_text())
    assert meta["config"]["rank"] == 8 and meta["versions"]["peft"]
    ids = torch.tensor([run.rows["train"][0][0]])
    run.model.eval()
    with torch.no_grad():
        want = run.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
        base_logits = base(input_ids=ids).logits
        got = PeftModel.from_pretrained(base, str(out)).eval()(input_ids=ids).logits
        served = TransformersModel(tiny_model, "tiny", device="cpu", dtype="float32", adapter=str(out))
        merged = served.model(input_ids=ids).logits
    assert not torch.allclose(want, base_logits, atol=1e-4)  # the adapter does something
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(merged, want, atol=1e-4)  # merged into the weights by --adapter


# ---- command line ------------------------------------------------------------------------------------------

def test_cli_end_to_end(tiny_model, ticket_file, ragdesk_env):
    runner = CliRunner()
    args = ["finetune", str(ticket_file), "--model", str(tiny_model), "--max-steps", "2", "--batch-size", "2"]
    result = runner.invoke(cli, args + ["--json", "--merge"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    out = ragdesk_env / "adapters" / "tickets"
    assert metrics["steps"] == 2 and metrics["adapter"] == str(out)
    assert metrics["tickets"]["test"] == 4 and metrics["test_loss"] > 0 and metrics["peak_memory_bytes"] > 0
    assert "memory estimate" in result.stderr and "trainable of" in result.stderr
    assert (out / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    assert json.loads((out / "adapter_config.json").read_text())["lora_dropout"] == 0.0  # the default
    assert (out / "checkpoints" / "step-000002" / "optimizer.pt").exists()

    again = runner.invoke(cli, args)
    assert again.exit_code != 0 and "already holds an adapter" in str(again.exception or again.output)
    resumed = runner.invoke(cli, ["finetune", str(ticket_file), "--resume", "--max-steps", "3", "--json"])
    assert resumed.exit_code == 0, resumed.output
    resumed_metrics = json.loads(resumed.stdout)
    assert resumed_metrics["steps"] == 3
    # time and tokens of the first session are carried over through the checkpoint
    assert resumed_metrics["tokens"] > resumed_metrics["this_session"]["tokens"] > 0

    listed = runner.invoke(cli, ["models", "--json"])
    assert str(out) in json.loads(listed.stdout)["adapters"]


def test_cli_dropout_reaches_the_adapter(tiny_model, ticket_file, ragdesk_env, tmp_path):
    out = tmp_path / "with-dropout"
    result = CliRunner().invoke(cli, ["finetune", str(ticket_file), "--model", str(tiny_model), "--max-steps", "1",
                                      "--dropout", "0.1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapter_config.json").read_text())["lora_dropout"] == 0.1
    assert json.loads((out / "finetune_config.json").read_text())["config"]["dropout"] == 0.1
    bad = CliRunner().invoke(cli, ["finetune", str(ticket_file), "--model", str(tiny_model), "--dropout", "1.5",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "dropout=1.5 must be in [0, 1)" in (bad.output + str(bad.exception))


def test_cli_bad_file_is_one_line_error(tmp_path):
    import subprocess
    import sys

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "assistant", "finetune", str(empty)], capture_output=True, text=True)
    if "No module named assistant.__main__" in proc.stderr:
        proc = subprocess.run([sys.executable, "-c", "from assistant.cli import main; main()", "finetune", str(empty)],
                              capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "empty" in proc.stderr and "Traceback" not in proc.stderr


def test_reply_only_loss_matches_transformers_own_loss(tiny_model, tmp_path):
    import torch

    run = make_run(tiny_model, tmp_path)
    run.model.eval()
    ids, labels = run.rows["train"][0]
    with torch.no_grad():
        total, count, tokens = run._loss_sum([(ids, labels)])
        want = run.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert tokens == len(ids) and count == sum(lab != -100 for lab in labels[1:])
    assert abs(float(total) / count - float(want)) < 1e-5
