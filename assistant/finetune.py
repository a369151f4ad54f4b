"""LoRA fine-tuning on support tickets: the config, the cost estimate, a small training loop, and the
adapter folder it leaves behind (adapter, resolved config, library versions, metrics, checkpoints).

The loop is our own (torch AdamW, optional gradient accumulation, linear warmup then linear decay) rather than
the HF Trainer, so every step is visible: loss on the reply tokens only, a validation split scored as training
goes, tickets marked `"split": "test"` never trained on, and checkpoints (adapter + optimizer + step + RNG)
that `resume` continues from exactly. The base model is frozen; only the LoRA matrices get gradients, and they
stay float32. Where the hardware runs bfloat16 well (`dtype="auto"`: a CPU with avx512_bf16/amx, a CUDA GPU
with bf16) the base is loaded in bfloat16 and the forward runs under bf16 autocast; decoder layers are
gradient-checkpointed, micro-batches hold tickets of similar length (little padding), and the vocabulary
projection is computed in chunks of reply positions and recomputed in the backward, so neither the layer
activations nor a (reply tokens x vocabulary) float32 logits matrix is kept for the whole micro-batch.
`rows_per_pass=1` with `checkpoint_every=0` trades memory for speed: one ticket per forward/backward pass (the
gradients add up to the same step) and no recomputation. Measured over the same 40 steps on the bundled
tickets (benchmarks/finetune_speed.py, 2 CPUs): the defaults 121 tokens/s at 2.46 GiB peak RSS, the fast
pair 128 tokens/s at 3.75 GiB, the code before either 118 tokens/s at 7.40 GiB.
`TransformersModel` applies the saved adapter at answer time (`--adapter DIR`).

Not here: reading/rendering tickets (_tickets.py), the progress bar and printing (finetune_cli.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from retrieval.errors import ConfigError, InputError

from ._tickets import SUPPORT_PROMPT, Ticket, read_tickets, render_ticket, support_messages

# optimizer steps between giving freed heap memory back (CPU): measured on the 40-step 135M run, peak RSS 2.64 GiB
# without, 2.45 GiB every 5 steps at the same speed, 2.23 GiB after every step at 0.84x (the pages fault back in)
TRIM_EVERY = 4

__all__ = ["FinetuneConfig", "FinetuneEvent", "FinetuneRun", "SUPPORT_PROMPT", "Ticket", "estimate_memory",
           "read_tickets", "render_ticket", "split_tickets", "support_messages"]


@dataclass
class FinetuneConfig:
    """Everything that decides a fine-tuning run; saved next to the adapter as finetune_config.json."""

    model: str = "smollm2-135m"  # preset, model folder, .gguf or cached HF id
    epochs: int = 1
    max_steps: int = 0  # optimizer steps; 0 = as many as `epochs` take
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    # LoRA dropout on the adapted layers' inputs. Off by default: a CPU draws the masks one number at a time (30%
    # of a 135M training step, 420 masks a step with checkpointing), and a run of a few dozen steps sees each
    # ticket at most once, so there is nothing to regularize against; worth setting for several epochs
    dropout: float = 0.0
    target_modules: str = "all-linear"  # or comma-separated module names, e.g. q_proj,v_proj
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    val_fraction: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    eval_every: int = 0  # steps between validation passes; 0 = four over the run
    save_every: int = 0  # steps between checkpoints; 0 = at every validation pass
    seed: int = 0
    system_prompt: str = SUPPORT_PROMPT
    device: str = "auto"
    dtype: str = "auto"  # base weights and autocast: auto (bfloat16 where the hardware has it), float32, bfloat16
    rows_per_pass: int = 0  # tickets per forward/backward pass inside a micro-batch; 0 = the whole micro-batch
    checkpoint_every: int = 1  # gradient-checkpoint every Nth decoder layer; 1 = all, 0 = off (faster, more memory)
    logits_chunk: int = 256  # reply positions per vocabulary-projection chunk; 0 = all at once, kept for backward
    group_by_length: bool = True  # micro-batches of tickets of similar length (less padding); see _epoch_steps

    def __post_init__(self) -> None:
        for name in ("epochs", "rank", "alpha", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finetune {name}={getattr(self, name)!r} must be at least 1")
        for name in ("max_steps", "eval_every", "save_every", "seed", "weight_decay", "checkpoint_every",
                     "logits_chunk", "rows_per_pass"):
            if getattr(self, name) < 0:
                raise ConfigError(f"finetune {name}={getattr(self, name)!r} must not be negative")
        if not 0 < self.lr < 1:
            raise ConfigError(f"finetune lr={self.lr!r} must be between 0 and 1", "try 2e-4")
        for name in ("val_fraction", "warmup_fraction", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"finetune {name}={getattr(self, name)!r} must be in [0, 1)")
        if self.max_length < 16:
            raise ConfigError(f"finetune max_length={self.max_length} is too short", "use at least 16 tokens")
        if not self.target_modules.strip():
            raise ConfigError("finetune target_modules='' names no modules", "use all-linear or q_proj,v_proj")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"finetune device={self.device!r} is not valid", "use auto, cpu, cuda or mps")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"finetune dtype={self.dtype!r} is not valid", "use auto, float32 or bfloat16")

    @property
    def pass_rows(self) -> int:
        """Tickets in one forward/backward pass: rows_per_pass, or the whole micro-batch when it is 0 (or larger)."""
        return min(self.rows_per_pass or self.batch_size, self.batch_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class FinetuneEvent:
    """What the loop reports: kind is "step", "eval" (loss on `split`) or "saved" (a checkpoint at `path`)."""

    kind: str
    step: int
    total_steps: int
    loss: float = float("nan")
    split: str = ""
    lr: float = 0.0
    tokens: int = 0  # tokens processed since this run (or resume) started
    elapsed_s: float = 0.0
    path: str = ""


GROUP_STEPS = 16  # optimizer steps per length-sorted block when group_by_length is on


def split_tickets(tickets: list[Ticket], val_fraction: float, seed: int) -> tuple[list, list, list]:
    """(train, val, test): "split": "test" tickets are the fixed held-out set; val is a seeded sample of the
    rest (at least one ticket when val_fraction > 0 and two or more remain)."""
    test = [t for t in tickets if t.split == "test"]
    rest = [t for t in tickets if t.split != "test"]
    order = list(range(len(rest)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(rest))
    if val_fraction > 0 and len(rest) >= 2:
        n_val = max(1, min(n_val, len(rest) - 1))
    val_idx = set(order[:n_val])
    val = [t for i, t in enumerate(rest) if i in val_idx]
    train = [t for i, t in enumerate(rest) if i not in val_idx]
    if not train:
        raise InputError("no tickets left to train on", 'mark fewer tickets "split": "test" or lower --val-fraction')
    return train, val, test


def estimate_memory(model_config, total_params: int, trainable_params: int, batch: int, length: int,
                    width: int = 4, reply_share: float = 1.0, checkpoint_every: int = 0,
                    logits_chunk: int = 0) -> dict[str, int]:
    """Bytes for weights, gradients, AdamW states (two moments) and activations of one micro-batch.

    `width` is the bytes per value of the frozen weights and the activations (4 float32, 2 bfloat16); the
    LoRA matrices, their gradients and AdamW's moments are float32 either way. Activations per layer follow
    the usual transformer count (inputs of every projection, norms, the MLP's gated intermediate, attention
    probabilities); a checkpointed layer keeps only its input, plus one layer's full set while it is
    recomputed. The logits and their float32 softmax gradient dominate for small models with big vocabularies:
    they are only computed on reply tokens (`reply_share` of the positions), and with `logits_chunk` only one
    chunk of them exists at a time. A planning figure for the tensors, compared with the measured peak after
    training (which also holds the Python runtime and libraries, a few hundred MB)."""
    h = model_config.hidden_size
    inter = getattr(model_config, "intermediate_size", 4 * h)
    heads = model_config.num_attention_heads
    layers = model_config.num_hidden_layers
    vocab = model_config.vocab_size
    tokens = batch * length
    per_layer = (tokens * (12 * h + 5 * inter) + 2 * batch * heads * length * length) * width
    checkpointed = math.ceil(layers / checkpoint_every) if checkpoint_every else 0
    layer_bytes = (layers - checkpointed) * per_layer + checkpointed * tokens * h * width
    if checkpointed:
        layer_bytes += per_layer  # the layer being recomputed in the backward
    reply_tokens = tokens * reply_share
    logit_rows = min(reply_tokens, logits_chunk) if logits_chunk else reply_tokens
    activations = int(layer_bytes + logit_rows * vocab * (width + 2 * 4))  # logits, float32 copy and gradient
    out = {"weights_bytes": total_params * width, "gradients_bytes": trainable_params * 4,
           "optimizer_bytes": 2 * trainable_params * 4, "activations_bytes": activations}
    out["total_bytes"] = sum(out.values())
    return out


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ragdesk", "torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, seq)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return ids, labels, mask


def training_dtype(device: str, dtype: str) -> tuple[str, str]:
    """(device, dtype) to train in: "auto" is bfloat16 where ragdesk would also serve in it (a CPU with
    avx512_bf16/amx, a CUDA GPU with bf16) and float32 elsewhere (float16 would need loss scaling; not done)."""
    from .models import pick_device

    device, resolved = pick_device(device, dtype, weight_only=False)
    return device, resolved if resolved == "bfloat16" else "float32"


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where there is none."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere). Steps of
    different lengths leave freed activation buffers scattered over the heap, and the process's peak grows
    with them over a run."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _head_loss(head, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")  # (chunk, vocab) logits, then a sum


class FinetuneRun:
    """One LoRA run over a model folder: `load()`, then `train(on_event)`, `save(out)`, `merge(out)`."""

    def __init__(self, config: FinetuneConfig, model_folder: Path, tickets: list[Ticket]):
        self.config = config
        self.model_folder = Path(model_folder)
        self.train_set, self.val_set, self.test_set = split_tickets(tickets, config.val_fraction, config.seed)
        self.step = 0
        self.history: list[dict] = []
        self.done = {"train_seconds": 0.0, "tokens": 0}  # carried across resumes in the checkpoints
        self.model = self.tokenizer = self.optimizer = None
        self._steps_cache: tuple[int, list[list[int]]] | None = None
        self.device, self.dtype = "", ""  # resolved by load()

    # ---- setup ------------------------------------------------------------------------------------------
    def load(self, threads: int = 0) -> "FinetuneRun":
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device, self.dtype = training_dtype(self.config.device, self.config.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_folder))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch.manual_seed(self.config.seed)
        # loaded straight in the training dtype: no float32 copy of a bf16 checkpoint is ever made
        base = AutoModelForCausalLM.from_pretrained(str(self.model_folder), dtype=getattr(torch, self.dtype))
        if self.config.checkpoint_every:
            # non-reentrant: works with frozen inputs (no enable_input_require_grads) and replays dropout masks
            base.activation_checkpointing_enable({"use_reentrant": False},
                                                 every_n_layers=self.config.checkpoint_every)
        targets = self.config.target_modules.strip()
        lora = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                          target_modules=targets if targets == "all-linear" else [m.strip() for m in targets.split(",")],
                          task_type="CAUSAL_LM")
        try:
            self.model = get_peft_model(base, lora).to(self.device)
        except ValueError as exc:
            raise ConfigError(f"finetune target_modules={targets!r}: {exc}", "use all-linear") from None
        self.model.base_model.model.config.use_cache = False
        for p in self.model.parameters():
            if p.requires_grad:  # LoRA matrices and their AdamW moments in float32 even over a bf16 base
                p.data = p.data.float()
        self.rows = {name: self._render(ts) for name, ts in
                     (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))}
        if not self.rows["train"]:
            raise InputError("no training ticket has a reply inside --max-length tokens", "raise --max-length")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        return self

    def _render(self, tickets: list[Ticket]) -> list[tuple[list[int], list[int]]]:
        rows = []
        for t in tickets:
            ids, labels = render_ticket(self.tokenizer, t, self.config.system_prompt, self.config.max_length)
            if any(lab != -100 for lab in labels):
                rows.append((ids, labels))
        return rows

    @property
    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters, the LoRA matrices included in total."""
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.model.parameters())

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.rows["train"]) / (self.config.batch_size * self.config.grad_accum))

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    def memory_estimate(self) -> dict[str, int]:
        trainable, total = self.parameter_counts
        rows = self.rows["train"]
        longest = max(len(ids) for ids, _ in rows)
        share = sum(sum(lab != -100 for lab in labels) for _, labels in rows) / sum(len(ids) for ids, _ in rows)
        return estimate_memory(self.model.base_model.model.config, total, trainable, self.config.pass_rows,
                               min(longest, self.config.max_length), width=2 if self.dtype == "bfloat16" else 4,
                               reply_share=share, checkpoint_every=self.config.checkpoint_every,
                               logits_chunk=self.config.logits_chunk)

    # ---- training ---------------------------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        warm = max(1, round(self.config.warmup_fraction * self.total_steps))
        if step < warm:
            return self.config.lr * (step + 1) / warm
        return self.config.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - warm))

    def _epoch_steps(self, epoch: int) -> list[list[int]]:
        """Row indices of every optimizer step of `epoch`: a permutation seeded by seed + epoch, so a resumed
        run sees exactly the batches the uninterrupted one would have. With `group_by_length` the permutation
        is cut into blocks of GROUP_STEPS steps, each block sorted by length before it is cut into steps, and
        the steps are shuffled again: tickets of similar length share a micro-batch, so little of it is
        padding, while each epoch still sees every ticket once in a random order of steps."""
        import torch

        if self._steps_cache and self._steps_cache[0] == epoch:
            return self._steps_cache[1]
        rows = self.rows["train"]
        gen = torch.Generator().manual_seed(self.config.seed + epoch)
        perm = torch.randperm(len(rows), generator=gen).tolist()
        per_step = self.config.batch_size * self.config.grad_accum
        if self.config.group_by_length:
            block = per_step * GROUP_STEPS
            perm = [i for b in range(0, len(perm), block)
                    for i in sorted(perm[b: b + block], key=lambda j: -len(rows[j][0]))]
        steps = [perm[i: i + per_step] for i in range(0, len(perm), per_step)]
        if self.config.group_by_length:
            steps = [steps[i] for i in torch.randperm(len(steps), generator=gen).tolist()]
        self._steps_cache = (epoch, steps)
        return steps

    def _micro_batches(self, step: int) -> list[list[int]]:
        """Row indices of each micro-batch of optimizer step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        chunk = self._epoch_steps(epoch)[within]
        return [chunk[i: i + self.config.batch_size] for i in range(0, len(chunk), self.config.batch_size)]

    def _loss_sum(self, rows) -> tuple:
        """(sum of token losses, labelled tokens, tokens) over a micro-batch."""
        import torch

        ids, labels, mask = (t.to(self.device) for t in _collate(rows, self.tokenizer.pad_token_id))
        causal_lm = self.model.base_model.model
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (batch, seq, hidden)
            targets = labels[:, 1:]  # (batch, seq - 1)
            keep = targets != -100
            loss = self._reply_loss(causal_lm.get_output_embeddings(), hidden[:, :-1][keep], targets[keep])
        return loss, int(keep.sum()), int(mask.sum())

    def _reply_loss(self, head, hidden, targets):
        """Summed cross-entropy of the reply positions (`hidden`: (reply tokens, hidden)). The vocabulary
        projection only where a reply token is predicted: for a 49k vocabulary it is a large share of the
        compute and most of the activation memory, and prompt positions need none of it. In chunks under
        checkpoint, so the backward recomputes one chunk's logits at a time instead of keeping them all."""
        import torch
        from torch.utils.checkpoint import checkpoint

        chunk = self.config.logits_chunk or max(1, len(targets))
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, len(targets), chunk):
            h, t = hidden[i: i + chunk], targets[i: i + chunk]
            if self.config.logits_chunk and torch.is_grad_enabled():
                total = total + checkpoint(_head_loss, head, h, t, use_reentrant=False)
            else:
                total = total + _head_loss(head, h, t)
        return total

    def evaluate(self, split: str = "val") -> float:
        """Mean loss per reply token over a split (dropout off, no gradients); nan for an empty split."""
        import torch

        rows = self.rows[split]
        if not rows:
            return float("nan")
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(rows), self.config.batch_size):
                loss, n, _ = self._loss_sum(rows[i: i + self.config.batch_size])
                total, count = total + float(loss), count + n
        self.model.train()
        return total / max(count, 1)

    def train(self, on_event: Callable[[FinetuneEvent], None] = lambda e: None, out: Path | None = None) -> dict:
        """Run from `self.step` to `total_steps`; checkpoints go under out/checkpoints when `out` is given."""
        import torch

        total = self.total_steps
        every = self.config.eval_every or max(1, total // 4)
        save_every = self.config.save_every or every
        params = [p for p in self.model.parameters() if p.requires_grad]
        started, tokens, base_done = time.perf_counter(), 0, dict(self.done)
        if self.step == 0 and self.rows["val"]:
            loss = self.evaluate("val")
            self.history.append({"step": 0, "val_loss": loss})
            on_event(FinetuneEvent("eval", 0, total, loss, "val"))
        self.model.train()
        while self.step < total:
            lr = self._lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batches = self._micro_batches(self.step)
            labelled = sum(sum(lab != -100 for lab in self.rows["train"][i][1][1:]) for b in batches for i in b)
            step_loss = 0.0
            per_pass = self.config.pass_rows
            for b in batches:
                for k in range(0, len(b), per_pass):  # the same gradient in smaller passes (see rows_per_pass)
                    loss, _, n_tokens = self._loss_sum([self.rows["train"][i] for i in b[k: k + per_pass]])
                    (loss / max(labelled, 1)).backward()  # mean over every reply token of the whole step
                    step_loss += float(loss.detach())
                    tokens += n_tokens
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.device == "cpu" and self.step % TRIM_EVERY == 0:
                _release_freed_memory()
            self.done = {"train_seconds": base_done["train_seconds"] + time.perf_counter() - started,
                         "tokens": base_done["tokens"] + tokens}
            mean = step_loss / max(labelled, 1)
            self.history.append({"step": self.step, "train_loss": mean, "lr": lr})
            on_event(FinetuneEvent("step", self.step, total, mean, "train", lr, tokens,
                                   time.perf_counter() - started))
            if self.rows["val"] and (self.step % every == 0 or self.step == total):
                val = self.evaluate("val")
                self.history.append({"step": self.step, "val_loss": val})
                on_event(FinetuneEvent("eval", self.step, total, val, "val", lr, tokens,
                                       time.perf_counter() - started))
            if out is not None and (self.step % save_every == 0 or self.step == total):
                path = self.save_checkpoint(out)
                on_event(FinetuneEvent("saved", self.step, total, path=str(path)))
        elapsed = time.perf_counter() - started
        total_s, total_tokens = self.done["train_seconds"], self.done["tokens"]
        return {"steps": self.step, "tokens": total_tokens, "train_seconds": round(total_s, 2),
                "tokens_per_s": round(total_tokens / total_s, 1) if total_s > 0 else 0.0,
                "this_session": {"tokens": tokens, "seconds": round(elapsed, 2)}}

    def peak_memory_bytes(self) -> int:
        import torch

        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    # ---- saving, resuming, merging ----------------------------------------------------------------------
    def save_checkpoint(self, out: Path, keep: int = 2) -> Path:
        """out/checkpoints/step-NNNNNN: adapter, optimizer state, step and RNG states; written to a temporary
        folder and renamed, so a crash never leaves a half checkpoint that resume would pick."""
        import torch

        root = Path(out) / "checkpoints"
        final = root / f"step-{self.step:06d}"
        tmp = root / f".step-{self.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "history": self.history, "done": self.done,
                                                    "config": self.config.to_dict()}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self, out: Path) -> int:
        """Load the latest checkpoint under out/checkpoints; returns its step (InputError if there is none)."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        found = sorted((Path(out) / "checkpoints").glob("step-*"))
        if not found:
            raise InputError(f"no checkpoint to resume in {out}/checkpoints", "run without --resume first")
        ckpt = found[-1]
        state = json.loads((ckpt / "state.json").read_text())
        set_peft_model_state_dict(self.model, load_file(str(ckpt / "adapter_model.safetensors"),
                                                        device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=self.device))
        rng = torch.load(ckpt / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.done = dict(state.get("done") or self.done)
        return self.step

    def save(self, out: Path, extra: dict | None = None) -> dict:
        """The adapter folder: adapter weights + config (peft), finetune_config.json (resolved config, base
        model, library versions) and metrics.json (losses, timings, memory). Returns the metrics."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        trainable, total = self.parameter_counts
        meta = {"config": self.config.to_dict(), "base_model_folder": str(self.model_folder),
                "versions": library_versions(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (out / "finetune_config.json").write_text(json.dumps(meta, indent=2))
        vals = [h for h in self.history if "val_loss" in h]
        trains = [h["train_loss"] for h in self.history if "train_loss" in h]
        metrics = {"steps": self.step, "trainable_params": trainable, "total_params": total,
                   "tickets": {k: len(v) for k, v in self.rows.items()},
                   "first_train_loss": trains[0] if trains else None,
                   "final_train_loss": sum(trains[-5:]) / len(trains[-5:]) if trains else None,
                   "initial_val_loss": vals[0]["val_loss"] if vals else None,
                   "final_val_loss": vals[-1]["val_loss"] if vals else None,
                   "device": self.device, "history": self.history} | (extra or {})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def merge(self, out: Path) -> Path:
        """A standalone model folder (base + adapter folded in) at out/merged, with the tokenizer. Leaves this
        run's model merged, so call it last."""
        folder = Path(out) / "merged"
        tmp = folder.with_name("merged.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        merged = self.model.merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder
