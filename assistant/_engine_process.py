"""The engine in a child process, for the chat app: `EngineProcess` has the part of `Engine`'s surface the app
uses (`load`, `stream`, `model_name`, `device`) and runs the real `Engine` in a "spawn" child that loads the
model once per app session and stays warm between questions.

Why a process: a forward pass of a small local model is hundreds of short torch calls, each retaking the
interpreter lock. In a thread of the app it waits behind the Textual event loop at every one of them, and when
any other program competes for the CPU the two threads of one interpreter starve each other (measured: 0.05x of
`ragdesk ask`'s tokens/s). A child has its own interpreter lock.

The protocol is pickled tuples over one duplex pipe. Parent -> child: ("load", settings), ("ask", question,
turns), ("cancel",), ("stop",). Child -> parent: ("progress", text), ("loaded", model_name, device),
("event", Retrieved | TokenArrived | Answer), ("error", class_name, message, hint). A reader thread in the child
takes "cancel" while the main thread decodes, so a cancel stops the answer within one decoding step. If the
child dies (killed, out of memory) the answer in progress fails with a one-line ModelError and the next call
starts a new child. Not here: history (the app writes it), rendering, retrieval or decoding themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import sys
import threading
from typing import Callable, Iterator, Sequence

from retrieval import errors

from .answer import Answer, AnswerEvent, Turn

__all__ = ["EngineProcess"]

POLL_S = 0.05  # how often a waiting parent looks at its cancel Event and at whether the child is alive
STOP_WAIT_S = 3.0  # how long `close` lets the child finish before killing it


def _error(name: str, message: str, hint: str | None) -> Exception:
    """The child's exception, rebuilt in the parent (RagdeskError subclasses keep their class)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.RagdeskError):
        return cls(message, hint)
    return errors.ModelError(f"{name}: {message}" if name else message)


def app_decode_threads(settings):
    """The settings the app's engine loads with: unless decode_threads is set, decoding uses at most one thread
    fewer than the CPUs. The screen's process needs a share of a core while an answer streams (~0.17 cores
    measured), and a decoding step is many small torch calls whose threads wait for each other: one of them
    pushed off its core by the screen stalls every call (measured on 2 CPUs: the app's engine at 0.72-0.75x
    of `ask` with 2 threads, 0.88x with 1; benchmarks/chat_vs_ask.py). The prefill keeps every thread."""
    if settings.decode_threads:
        return settings
    import torch

    n = settings.threads or torch.get_num_threads()
    return dataclasses.replace(settings, decode_threads=max(1, min(n, (os.cpu_count() or 1) - 1)))


def _child_main(conn, log_path: str, setup: Callable[[], None] | None) -> None:
    """The child: load an Engine on "load", answer on "ask"; a reader thread routes "cancel" immediately."""
    # the child shares the app's terminal: anything a library prints would tear the screen, so its output
    # (warnings, a traceback if it dies) goes to a log file instead
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY)
    os.dup2(log, 1)
    os.dup2(log, 2)
    from retrieval.errors import RagdeskError

    from .engine import Engine

    if setup is not None:
        setup()

    commands: queue.Queue = queue.Queue()
    current = [threading.Event()]  # the cancel Event of the answer in progress

    def reader() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the parent is gone: nothing left to answer
                os._exit(0)
            if msg[0] in ("cancel", "stop"):
                current[0].set()
            if msg[0] != "cancel":
                commands.put(msg)

    threading.Thread(target=reader, name="ragdesk-engine-reader", daemon=True).start()

    def send_error(exc: BaseException) -> None:
        if isinstance(exc, RagdeskError):
            conn.send(("error", type(exc).__name__, exc.message, exc.hint))
        else:
            conn.send(("error", type(exc).__name__, str(exc), None))

    engine = None
    while True:
        msg = commands.get()
        if msg[0] == "stop":
            return
        if msg[0] == "load":
            settings = app_decode_threads(msg[1])
            keep = engine.model if engine is not None and engine.settings.model == settings.model else None
            try:
                engine = Engine(settings, model=keep).load(progress=lambda text: conn.send(("progress", text)))
            except Exception as exc:
                engine = None
                send_error(exc)
            else:
                conn.send(("loaded", engine.model_name, engine.device))
        elif msg[0] == "ask":
            cancel = current[0] = threading.Event()
            try:
                if engine is None:
                    raise errors.ModelError("the model is not loaded", "restart the app")
                for event in engine.stream(msg[1], msg[2], cancel):
                    conn.send(("event", event))
            except Exception as exc:
                send_error(exc)


@contextlib.contextmanager
def _real_stderr():
    """The process's own stderr while a child is spawned: Textual replaces sys.stderr with an object whose
    fileno() is -1, which multiprocessing hands to the child as a file descriptor to keep (and fails)."""
    saved = sys.stderr
    try:
        ok = saved is not None and saved.fileno() >= 0
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok and sys.__stderr__ is not None:
        sys.stderr = sys.__stderr__
    try:
        yield
    finally:
        sys.stderr = saved


class EngineProcess:
    """Answers with an Engine that lives in a child process (see the module docstring)."""

    def __init__(self, settings, setup: Callable[[], None] | None = None):
        """`setup`, a picklable (module-level) function, runs in each new child before anything loads: tests
        use it to register a model there."""
        self.settings = settings
        self.setup = setup
        self.model_name = settings.model
        self.device = "-"
        self._ctx = multiprocessing.get_context("spawn")  # fork would copy the app's threads and locks
        self._proc = None
        self._conn = None
        self._send_lock = threading.Lock()  # close() may send while a worker thread streams
        self._busy = threading.Lock()  # one request (load or ask) at a time on the pipe

    # ---- process ----------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        with _real_stderr():
            self._start_child()

    def _start_child(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        log_path = os.path.join(str(self.settings.home), "engine-process.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        proc = self._ctx.Process(target=_child_main, args=(child, log_path, self.setup), name="ragdesk-engine", daemon=True)
        proc.start()
        child.close()  # the parent keeps one end, so the child's exit shows here as EOF
        self._proc, self._conn = proc, parent

    def _send(self, msg: tuple, conn=None) -> None:
        conn = conn or self._conn
        if conn is None:
            raise errors.ModelError("the model process was stopped", "ask again to restart it")
        with self._send_lock:
            conn.send(msg)

    def _receive(self, cancel: threading.Event | None = None) -> tuple:
        """The next message from the child; forwards a cancel once; a dead child is a ModelError."""
        proc, conn = self._proc, self._conn
        if proc is None:
            raise errors.ModelError("the model process was stopped", "ask again to restart it")
        cancel_sent = False
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                try:
                    self._send(("cancel",), conn)
                except (OSError, errors.ModelError):
                    pass  # the child is gone; the next poll says so
                cancel_sent = True
            try:
                if conn.poll(POLL_S):
                    return conn.recv()
                if proc.is_alive() or conn.poll(0):  # or it said something before it ended
                    continue
            except (EOFError, OSError):
                pass
            proc.join(1)
            code = proc.exitcode
            if self._proc is proc:
                self._proc = self._conn = None
            raise errors.ModelError(f"the model process stopped unexpectedly (exit code {code})",
                                    "ask again to restart it")

    # ---- Engine's surface -------------------------------------------------------------------------------
    def load(self, progress: Callable[[str], None] | None = None, settings=None) -> "EngineProcess":
        """Start the child if needed and (re)load the engine there; `settings` switches collection or model
        (the loaded model is kept when only the collection changes)."""
        progress = progress or (lambda text: None)
        if settings is not None:
            self.settings = settings
        with self._busy:
            if not self.alive:
                self._start()
            self._send(("load", self.settings))
            while True:
                msg = self._receive()
                if msg[0] == "progress":
                    progress(msg[1])
                elif msg[0] == "loaded":
                    self.model_name, self.device = msg[1], msg[2]
                    return self
                elif msg[0] == "error":
                    raise _error(*msg[1:])

    def stream(self, question: str, history: Sequence[Turn] = (),
               cancel: threading.Event | None = None) -> Iterator[AnswerEvent]:
        """What `Engine.stream` yields, computed in the child: Retrieved, TokenArrived pieces, the Answer."""
        if not self.alive:  # the last one crashed (or was never started): a new one, loaded again
            self.load()
        with self._busy:
            self._send(("ask", question, list(history)))
            finished = False
            try:
                while True:
                    msg = self._receive(cancel)
                    if msg[0] == "event":
                        finished = isinstance(msg[1], Answer)
                        yield msg[1]
                        if finished:
                            return
                    elif msg[0] == "error":
                        finished = True
                        raise _error(*msg[1:])
            finally:
                if not finished and self.alive:  # the caller stopped early: end the answer, drop the rest
                    self._drain()

    def _drain(self) -> None:
        stop = threading.Event()
        stop.set()
        try:
            while True:
                msg = self._receive(stop)
                if msg[0] == "error" or (msg[0] == "event" and isinstance(msg[1], Answer)):
                    return
        except errors.ModelError:
            pass

    def close(self) -> None:
        """Stop the child: ask, then wait a little, then kill (it holds no state worth saving)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            with self._send_lock:
                conn.send(("stop",))
        except OSError:
            pass
        proc.join(STOP_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(1)
        conn.close()
