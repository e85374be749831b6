"""A face processor for the analysis processes' tests whose files can really crash or hang the
process analysing them, the way a hostile file can crash a native decoder (libav, onnxruntime):
a file starting with b"ABORT" calls `os.abort()` in the worker process (SIGABRT, no Python
exception, no clean-up), one starting with b"HANG" sleeps for ever; any other file is analysed by
the real dlib engine. It pickles by reference, so the spawned worker processes import this module.
Every model load appends the loading process's pid to `load_log`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from media_processor import FaceProcessor


class HostileProcessor:
    def __init__(self, load_log: str | Path):
        self.load_log = str(load_log)
        self._real: FaceProcessor | None = None

    def __getstate__(self) -> dict:
        return {"load_log": self.load_log}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["load_log"])

    def load(self) -> None:
        self._real = FaceProcessor("dlib")
        self._real.load()
        with open(self.load_log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def analyse_file(self, path, *, kind, frame_rate, max_seconds):
        with open(path, "rb") as f:
            head = f.read(5)
        if head.startswith(b"ABORT"):
            os.abort()
        if head.startswith(b"HANG"):
            while True:
                time.sleep(60)
        return self._real.analyse_file(path, kind=kind, frame_rate=frame_rate, max_seconds=max_seconds)


def loads(load_log: str | Path) -> list[int]:
    """The pids that loaded the model, one line per load."""
    try:
        return [int(line) for line in Path(load_log).read_text().split()]
    except FileNotFoundError:
        return []
