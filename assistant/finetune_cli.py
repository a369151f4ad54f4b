"""`ragdesk finetune`: LoRA adapters from support tickets, with the cost up front and progress on stderr.

Only the command: reading, training and saving live in finetune.py, which imports torch and peft when run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

__all__ = ["finetune_command"]


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


@click.command("finetune", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("tickets", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Adapter folder (default HOME/adapters/<tickets file name>).")
@click.option("--epochs", type=int, default=None, help="Passes over the training tickets (default 1).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps; overrides --epochs.")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default 2e-4).")
@click.option("--rank", type=int, default=None, help="LoRA rank (default 8; alpha is twice the rank).")
@click.option("--dropout", type=float, default=None,
              help="LoRA dropout on the adapted layers' inputs (default 0: a run of one epoch or less sees each "
                   "ticket once; 0.05-0.1 for several epochs, at ~1.6x the step time on a CPU).")
@click.option("--val-fraction", type=float, default=None,
              help='Share of non-test tickets held out for validation (default 0.1); "split": "test" rows are '
                   "never trained on.")
@click.option("--batch-size", type=int, default=None, help="Tickets per micro-batch (default 4).")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step (default 1).")
@click.option("--max-length", type=int, default=None, help="Longest rendered ticket in tokens (default 512).")
@click.option("--model", "-m", default=None, help="Base model (default: the settings model).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the output folder.")
@click.option("--merge", is_flag=True, help="Also write OUT/merged, a standalone model with the adapter folded in.")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter folder instead of refusing.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="Base weights and autocast (default auto: bfloat16 on a CPU with avx512_bf16/amx or a bf16 GPU, "
                   "else float32); the LoRA matrices are float32 either way.")
@click.option("--rows-per-pass", type=int, default=None,
              help="Tickets per forward/backward pass inside a micro-batch (default 0 = the whole micro-batch; 1 = no "
                   "padding, with --checkpoint-every 0 the fastest, ~1.5x the memory). The step is the same either way.")
@click.option("--checkpoint-every", type=int, default=None,
              help="Gradient-checkpoint every Nth decoder layer (default 1 = all; 0 = off: faster, far more memory).")
@click.option("--logits-chunk", type=int, default=None,
              help="Reply positions per chunk of the vocabulary projection, recomputed in the backward "
                   "(default 256; 0 = all at once).")
@click.option("--group-by-length/--no-group-by-length", default=None,
              help="Put tickets of similar length in the same micro-batch, so less of it is padding when several "
                   "rows share a pass (default on; each epoch still sees every ticket once, in shuffled steps).")
@click.option("--json", "json_out", is_flag=True, help="Print the metrics as JSON.")
@click.pass_context
def finetune_command(ctx, tickets, out, epochs, max_steps, lr, rank, dropout, val_fraction, batch_size, grad_accum,
                     max_length, model, resume, merge, overwrite, device, dtype, rows_per_pass, checkpoint_every,
                     logits_chunk, group_by_length, json_out):
    """Train LoRA adapters on support TICKETS (JSONL or CSV) and save them as an adapter folder.

    Tickets are {"question", "answer"}, {"subject", "body", "answer"} or {"messages": [...]} rows; rows with
    "split": "test" are held out. Prints trainable parameters and the memory estimate first, then a progress
    bar, validation loss as it goes, and the measured peak memory. Use the result with --adapter.

    \b
    Examples:
      ragdesk finetune corpus/tickets.jsonl --max-steps 60
      ragdesk finetune tickets.csv --epochs 2 --rank 16 --out adapters/support
      ragdesk finetune corpus/tickets.jsonl --resume --merge
      ragdesk ask "How do I reset my password?" --adapter ~/.local/share/ragdesk/adapters/tickets
    """
    from retrieval.errors import InputError

    from assistant.cli import emit_json, settings_from, stderr

    from .finetune import FinetuneConfig, FinetuneRun, read_tickets
    from .models import resolve_model_folder

    s = settings_from(ctx, device=device)
    rows, problems = read_tickets(tickets)
    for p in problems:
        stderr(f"warning: skipped {p}")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", tickets.stem) or "adapter"
    out = Path(out) if out else s.home_path / "adapters" / name
    given = {k: v for k, v in dict(epochs=epochs, max_steps=max_steps, lr=lr, rank=rank, dropout=dropout,
                                  val_fraction=val_fraction,
                                  batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                                  model=model, dtype=dtype, rows_per_pass=rows_per_pass,
                                  checkpoint_every=checkpoint_every,
                                  logits_chunk=logits_chunk, group_by_length=group_by_length).items()
             if v is not None}
    if rank is not None:
        given["alpha"] = 2 * rank
    base: dict = {"model": s.model, "device": s.device}
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    if resume:
        if not checkpoints:
            raise InputError(f"nothing to resume in {out}", "run once without --resume (checkpoints are saved "
                             "under OUT/checkpoints)")
        base = json.loads((checkpoints[-1] / "state.json").read_text())["config"]
        base.setdefault("group_by_length", False)  # checkpoints from before the option trained ungrouped
    elif (checkpoints or (out / "adapter_config.json").exists()) and not overwrite:
        raise InputError(f"{out} already holds an adapter", "pass --resume to continue it, --overwrite to replace "
                         "it, or --out for a new folder")
    elif overwrite:
        import shutil

        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    config = FinetuneConfig.from_dict(base | given)
    stderr(f"loading {config.model}...")
    folder = resolve_model_folder(config.model, s, lambda msg: stderr(msg + "..."))
    run = FinetuneRun(config, folder, rows).load(threads=s.threads)
    if resume:
        stderr(f"resuming from step {run.resume(out)}")
    trainable, total = run.parameter_counts
    est = run.memory_estimate()
    sizes = run.rows
    stderr(f"tickets: {len(sizes['train'])} train, {len(sizes['val'])} validation, {len(sizes['test'])} test "
           f"(held out); {run.total_steps} steps of {config.batch_size}x{config.grad_accum} on {run.device}")
    stderr(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%), LoRA rank "
           f"{config.rank} on {config.target_modules}")
    stderr(f"memory estimate ({run.dtype}, {config.pass_rows} ticket(s) per pass, {min(config.max_length, max(len(r[0]) for r in sizes['train']))}"
           f" tokens): weights {_mb(est['weights_bytes'])} + gradients {_mb(est['gradients_bytes'])} + optimizer "
           f"{_mb(est['optimizer_bytes'])} + activations {_mb(est['activations_bytes'])} = {_mb(est['total_bytes'])}")

    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True)
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("left"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("train", total=run.total_steps, completed=run.step, rate="", loss="-")

        def on_event(e):
            if e.kind == "step":
                rate = e.tokens / e.elapsed_s if e.elapsed_s else 0.0
                bar.update(task, completed=e.step, rate=f"{rate:,.0f} tok/s", loss=f"{e.loss:.3f}")
            elif e.kind == "eval":
                console.print(f"step {e.step}/{e.total_steps}: validation loss {e.loss:.4f}")

        try:
            timing = run.train(on_event, out=out)
        except KeyboardInterrupt:
            console.print(f"interrupted at step {run.step}: continue with --resume (checkpoints in {out})")
            raise
    test_loss = run.evaluate("test") if sizes["test"] else None
    peak = run.peak_memory_bytes()
    metrics = run.save(out, timing | {"test_loss": test_loss, "peak_memory_bytes": peak,
                                      "peak_memory_source": "torch.cuda.max_memory_allocated" if run.device == "cuda"
                                      else "getrusage maxrss (whole process)",
                                      "memory_estimate": est, "tickets_file": str(tickets)})
    merged = run.merge(out) if merge else None
    if json_out:
        emit_json({k: v for k, v in metrics.items() if k != "history"} | {"adapter": str(out),
                                                                          "merged": str(merged) if merged else None})
        return
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    click.echo(f"adapter: {out}")
    click.echo(f"steps {metrics['steps']}, {timing['tokens']:,} tokens in {timing['train_seconds']:.1f} s "
               f"({timing['tokens_per_s']:,.0f} tokens/s, all sessions)")
    click.echo(f"train loss {fmt(metrics['first_train_loss'])} -> {fmt(metrics['final_train_loss'])}; validation "
               f"loss {fmt(metrics['initial_val_loss'])} -> {fmt(metrics['final_val_loss'])}; test loss "
               f"{fmt(test_loss)}")
    click.echo(f"peak memory {_mb(peak)} measured ({metrics['peak_memory_source']}); estimated "
               f"{_mb(est['total_bytes'])}")
    if merged:
        click.echo(f"merged model: {merged}")
