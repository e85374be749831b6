"""The README's first run, on a machine with no InsightFace weights and no network, step by step,
asserting what the user reads at each one.

Every command runs as README.md writes it: `.venv/bin/python main.py …` from the clone's folder
(here: a folder whose `.venv` is this interpreter's environment, and whose `.env` is the
project's template, filled in as step 1 says). "No network" is a network namespace of its own
(`unshare --net`, as root): no route anywhere, as on an offline server. The login prompt runs
in a pseudo-terminal, as `make run` in a terminal does.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from conftest import FACES_DIR, ROOT

VENV = Path(sys.prefix)
UNSHARE = shutil.which("unshare")


def offline_available() -> bool:
    if UNSHARE is None or os.geteuid() != 0:
        return False
    return subprocess.run([UNSHARE, "--net", "true"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.skipif(VENV == Path(sys.base_prefix), reason="the README's commands use .venv/bin/python"),
    pytest.mark.skipif(not offline_available(), reason="needs `unshare --net` (root) for a machine without network"),
]


class Clone:
    """The user's working copy: `.venv`, `.env`, and the commands of the README run in it."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        os.chmod(path.parent, 0o755)
        os.chmod(path, 0o755)   # as root, the embedded server runs as its own user
        (path / ".venv").symlink_to(VENV)
        self.env = {k: v for k, v in os.environ.items()
                    if k in {"PATH", "HOME", "LANG", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XDG_RUNTIME_DIR"}}

    def command(self, *args: str) -> list[str]:
        # `.venv/bin/python main.py …`, the clone's main.py being this checkout's.
        return [UNSHARE, "--net", ".venv/bin/python", str(ROOT / args[0]), *args[1:]]

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=self.path, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def set(self, **values: str) -> None:
        """Fill in .env as a user does in an editor: the variable's own line."""
        lines = (self.path / ".env").read_text().splitlines()
        for name, value in values.items():
            lines = [f"{name}={value}" if line.startswith(f"{name}=") else line for line in lines]
        (self.path / ".env").write_text("\n".join(lines) + "\n")


class Terminal:
    """A command in a pseudo-terminal: what it prints, and what the user types."""

    def __init__(self, clone: Clone, *args: str):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(clone.command(*args), cwd=clone.path, env=clone.env,
                                        stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not shown within {timeout:g} s; the terminal showed:\n{self.output}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.output += os.read(self.master, 4096).decode(errors="replace")
                except OSError:   # the process exited and closed the terminal
                    if self.process.poll() is not None and text not in self.output:
                        raise AssertionError(f"exited before showing {text!r}:\n{self.output}") from None
        return self.output

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def wait(self, timeout: float) -> tuple[int, float]:
        """The exit code, and how long the exit took."""
        started = time.monotonic()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running {timeout:g} s later; the terminal showed:\n{self.output}") from None
        took = time.monotonic() - started
        while True:   # the rest of what it printed
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk.decode(errors="replace")
        os.close(self.master)
        return code, took


def database_rows(clone: Clone, query: str) -> list[tuple]:
    import database
    server = database.start_embedded(clone.path / "data" / "postgres", "face_archiver")
    with psycopg.connect(server.conninfo) as conn:
        return conn.execute(query).fetchall()


def write_export(target: Path) -> Path:
    """A one-photo Telegram Desktop export (README: "Without Telegram at all ... import")."""
    import json
    (target / "photos").mkdir(parents=True)
    shutil.copyfile(FACES_DIR / "joe_biden_01.jpg", target / "photos" / "a.jpg")
    (target / "result.json").write_text(json.dumps({
        "name": "Family", "type": "private_supergroup", "id": 1234567890, "messages": [
            {"id": 5, "type": "message", "date": "2021-03-01T10:00:00", "date_unixtime": "1614592800",
             "from": "Someone", "photo": "photos/a.jpg", "text": ""}]}))
    return target


def test_the_readmes_first_run_offline_without_weights(tmp_path):
    clone = Clone(tmp_path / "face-archiver")
    python = ".venv/bin/python"

    # Before anything: `--help` says what the roles are.
    shown = clone.run("main.py", "--help")
    assert shown.returncode == 0
    assert "worker" in shown.stdout and "face analysis of downloaded media only" in shown.stdout

    # No .env yet, `make run` (.venv/bin/python main.py run): the first thing said is what the user
    # must provide, Telegram's API id, not a 300 MB download that cannot happen here.
    first = clone.run("main.py", "run")
    assert first.returncode == 2, first.stderr
    assert "TG_API_ID / TG_API_HASH are not set" in first.stderr
    assert f"`{python} init_account.py`" in first.stderr and f"`{python} main.py import EXPORT_DIR`" in first.stderr
    assert "InsightFace" not in first.stderr and "download" not in first.stderr.lower()
    assert "Traceback" not in first.stderr

    # Step 1: cp .env.template .env. Step 2: `make check` says what is missing, all of it.
    shutil.copyfile(ROOT / ".env.template", clone.path / ".env")
    check = clone.run("main.py", "check")
    assert check.returncode == 2
    said = check.stdout + check.stderr
    pack = "data/models/models/buffalo_l"
    assert f"weights not found in {pack}" in said
    assert "det_10g.onnx" in said and "w600k_r50.onnx" in said
    assert f"`PYTHONPATH=. {python} docker/bake_models.py data/models`" in said     # where there is network
    assert "buffalo_l.zip" in said and "FACE_ENGINE=dlib" in said                    # where there is none
    assert "telegram api:   not configured" in check.stdout
    assert "\nok\n" not in check.stdout and "Traceback" not in said

    # Step 1 done properly: the API id and hash filled in. `make run` in a terminal asks for the
    # phone number first (before the model), and Ctrl-C stops it at once, nothing recorded.
    clone.set(TG_API_ID="1234567", TG_API_HASH="0123456789abcdef0123456789abcdef")
    for stop in (signal.SIGINT, signal.SIGTERM):
        terminal = Terminal(clone, "main.py", "run")
        terminal.read_until("Phone number (international format", timeout=120)
        assert "InsightFace" not in terminal.output
        terminal.process.send_signal(stop)
        code, took = terminal.wait(timeout=15)
        assert code == 0, terminal.output
        assert took < 5, f"{signal.Signals(stop).name} took {took:.1f} s to stop the prompt"
        assert "stopped before logging in" in terminal.output and "nothing was recorded" in terminal.output
        assert "Traceback" not in terminal.output

    # A phone number typed with no network: one sentence saying so, no traceback.
    terminal = Terminal(clone, "main.py", "run")
    terminal.read_until("Phone number (international format", timeout=120)
    terminal.type("+15551234567")
    code, _ = terminal.wait(timeout=90)
    assert code == 2
    assert "Telegram cannot be reached from this machine" in terminal.output
    assert f"try again with `{python} init_account.py`" in terminal.output
    assert "Traceback" not in terminal.output
    assert database_rows(clone, "SELECT count(*) FROM telegram_accounts") == [(0,)]

    # Without Telegram, importing an export with the default engine says what check said ...
    export = write_export(tmp_path / "export")
    imported = clone.run("main.py", "import", str(export))
    assert imported.returncode == 2
    assert "FACE_ENGINE=dlib" in imported.stderr and "Traceback" not in imported.stderr

    # ... and the way out it names is open: no face was stored, so dlib is accepted (the engine
    # binds with the first stored face), with no reindex.
    clone.set(FACE_ENGINE="dlib")
    check = clone.run("main.py", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "face engine:    dlib: weights present" in check.stdout and check.stdout.endswith("ok\n")
    imported = clone.run("main.py", "import", str(export))
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert database_rows(clone, "SELECT engine, dimension FROM face_engine") == [("dlib", 128)]
    assert database_rows(clone, "SELECT count(*) > 0 FROM face_embeddings") == [(True,)]
