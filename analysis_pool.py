"""Face analysis off the event loop, in a fixed number of worker processes, whatever the engine.

Processes, not threads, for every engine: a file that hangs the decoder or the engine can only be
stopped by ending the process it runs in (a thread past its timeout computes on for ever and keeps
its slot), and a native crash on a hostile file (libav, onnxruntime, dlib: SIGSEGV, abort) must
cost that one file, never the daemon. (dlib also holds the GIL, so threads would not even run it
in parallel.) Each worker slot is its own one-process executor, so a job that runs too long, or
whose caller is cancelled (shutdown), is stopped by ending that one process without disturbing
the others; a slot whose process died or was ended gets a fresh one. Children:
- load the model once per process (InsightFace's onnxruntime sessions too), when the pool starts
  (`start()` raises if it cannot be loaded) or, for a replaced process, before its first file;
- ignore SIGINT (Ctrl-C reaches the whole process group; the daemon decides how to stop);
- exit by themselves when the daemon dies (kill -9 leaves no orphans computing on).

A file whose analysis crashes or hangs its process raises `AnalysisCrashed` / `AnalysisTimeout`;
the queue's retry policy tries it again once, then fails it as poison (retry_policy.py).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from media_processor import DetectedFace, FaceProcessor

logger = logging.getLogger(__name__)


class AnalysisCrashed(RuntimeError):
    """The worker process died while analysing (crash, out of memory). Worth another attempt;
    the queue gives up on a file that keeps doing it."""


class AnalysisTimeout(RuntimeError):
    """The analysis took longer than the pool's timeout; the worker process was ended."""


# --- in the child process --------------------------------------------------------------------

_processor: FaceProcessor | None = None


def _child_init(processor: FaceProcessor, parent_pid: int) -> None:
    global _processor
    _processor = processor
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch",
                     daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # A multiprocessing child is not told when its parent dies (kill -9): poll for it.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def _child_ready() -> int:
    _processor.load()
    return os.getpid()


def _child_analyse(path: str, kind: str, frame_rate: float, max_seconds: float) -> list[DetectedFace]:
    return _processor.analyse_file(path, kind=kind, frame_rate=frame_rate, max_seconds=max_seconds)


# --- in the daemon ---------------------------------------------------------------------------


class _Slot:
    """One worker process (a one-process executor) and the pid to end it with."""

    def __init__(self, processor: FaceProcessor):
        self.executor = ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init, initargs=(processor, os.getpid()))
        self.pid: int | None = None

    async def ensure_started(self) -> None:
        if self.pid is None:
            loop = asyncio.get_running_loop()
            self.pid = await loop.run_in_executor(self.executor, _child_ready)

    def end(self) -> None:
        """Stop the process now, whatever it is doing."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class AnalysisPool:
    """`workers` concurrent `FaceProcessor.analyse_file` calls off the event loop."""

    def __init__(self, processor: FaceProcessor, *, workers: int, frame_rate: float = 1.0,
                 max_seconds: float = 600.0, timeout: float | None = None):
        """`timeout`: seconds one file may take before its worker is ended (None: no limit)."""
        self.processor = processor
        self.workers = workers
        self.frame_rate = frame_rate
        self.max_seconds = max_seconds
        self.timeout = timeout
        self._free: asyncio.Queue[_Slot] | None = None
        self._slots: list[_Slot] = []

    async def start(self) -> None:
        """Start the workers and load the model in each; raises what loading raises
        (e.g. `ModelUnavailableError`), so the daemon fails at start-up, not at the first job."""
        self._free = asyncio.Queue()
        self._slots = [_Slot(self.processor) for _ in range(self.workers)]
        try:
            await asyncio.gather(*(slot.ensure_started() for slot in self._slots))
        except BrokenProcessPool as exc:
            self.close()
            raise AnalysisCrashed(f"a face analysis process died while loading the model: {exc}") from exc
        except BaseException:
            self.close()
            raise
        for slot in self._slots:
            self._free.put_nowait(slot)
        logger.info("%d face analysis processes ready (pids %s)", self.workers,
                    ", ".join(str(s.pid) for s in self._slots))

    async def analyse(self, path: str | Path, kind: Literal["photo", "video"]) -> list[DetectedFace]:
        """The faces in one file. Raises what the processor raises (`MediaError`, `OSError`),
        `AnalysisCrashed` or `AnalysisTimeout`."""
        loop = asyncio.get_running_loop()
        slot = await self._free.get()
        try:
            await slot.ensure_started()
            call = loop.run_in_executor(slot.executor, _child_analyse, str(path), kind,
                                        self.frame_rate, self.max_seconds)
            return await asyncio.wait_for(call, self.timeout)
        except TimeoutError:
            slot = self._replace(slot)
            raise AnalysisTimeout(f"analysing {path} took more than {self.timeout:.0f} s; "
                                  f"its worker process was stopped") from None
        except asyncio.CancelledError:
            slot = self._replace(slot)  # the child would go on computing for nobody
            raise
        except BrokenProcessPool as exc:
            slot = self._replace(slot)
            raise AnalysisCrashed(f"the worker process died while analysing {path}") from exc
        finally:
            self._free.put_nowait(slot)

    def _replace(self, slot: _Slot) -> _Slot:
        slot.end()
        fresh = _Slot(self.processor)  # its process starts with its next job
        self._slots[self._slots.index(slot)] = fresh
        return fresh

    def close(self) -> None:
        """End every worker (running analyses are abandoned: their jobs were handed back)."""
        for slot in self._slots:
            slot.end()
        self._slots = []

    def pids(self) -> list[int]:
        """The worker processes started so far (a replaced one starts with its next file)."""
        return [slot.pid for slot in self._slots if slot.pid is not None]
