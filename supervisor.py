"""How the daemon runs its parts: each long-lived component as a supervised task, one control
loop (heartbeat file, update flag) and an orderly stop.

A component that loses the database is restarted after a pause (the server restarted under us);
any other failure, or a component returning while nothing asked it to, stops the whole daemon
(exit 1) so that the process manager (Docker, systemd) starts it again from a clean state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import config

logger = logging.getLogger("face_archiver")

EXIT_OK = 0
EXIT_FAILURE = 1

HEARTBEAT_FILE = "heartbeat"


@dataclass
class Tuning:
    """Timings of the daemon. The defaults are for production; tests (through
    tests/daemon_launcher.py) shorten them so that kills and restarts resolve in seconds."""

    lease_seconds: float = 60.0        # a dead process's jobs come back after this
    grace: float = 20.0                # running jobs get this long to finish on SIGTERM
    stop_deadline: float = 27.0        # everything is stopped by then (Docker waits 30 s)
    poll_interval: float = 2.0
    metrics_interval: float = 60.0
    heartbeat_interval: float = 15.0   # DATA_DIR/heartbeat is touched this often
    update_check_interval: float = 5.0
    restart_delay: float = 2.0         # first wait before restarting a component after a database outage
    retry_backoff: float = 30.0        # the retry policy's first backoff (and an outage's wait)
    download_timeout: float = 1800.0   # a download that hangs longer is a failed attempt
    startup_db_wait: float = 300.0     # at start, wait this long for a database that is not up yet


def heartbeat_path(settings: config.Settings) -> Path:
    return settings.data_dir / HEARTBEAT_FILE


class Shutdown:
    """Why and when the daemon stops: a signal, the update flag, or a component's failure."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()   # a second signal: don't wait for running jobs
        self.reason = ""
        self.update = False

    def request(self, reason: str, *, update: bool = False) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.update = update
            logger.info("stopping: %s (running jobs get a few seconds to finish; signal again to "
                        "hand them back at once)", reason)
            self.requested.set()
        elif not update and not self.hurry.is_set():
            logger.info("stopping now: %s again", reason)
            self.hurry.set()


@dataclass
class Component:
    """A long-lived part of the daemon, run as one named, supervised task.

    `run()` works until `stop()` is called, then returns. If it raises a database-unavailable
    error and `restartable`, it is started again after a pause (the database restarted under
    us); any other error, or returning while the daemon is not stopping, stops the daemon.
    """

    name: str
    run: Callable[[], Awaitable[None]]
    stop: Callable[[], None]
    restartable: bool = True


class ComponentFailed(Exception):
    """A component stopped by itself; the daemon stops with it."""


def _database_went_away(exc: BaseException, unavailable: tuple[type[BaseException], ...]) -> bool:
    """`exc` is the database going away, also when a component's task group wrapped it."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_database_went_away(e, unavailable) for e in exc.exceptions)
    return isinstance(exc, unavailable)


async def supervise(component: Component, shutdown: Shutdown, tuning: Tuning) -> None:
    from processing_queue import DB_UNAVAILABLE

    delay = tuning.restart_delay
    while True:
        try:
            await component.run()
        except Exception as exc:
            if not _database_went_away(exc, DB_UNAVAILABLE):
                raise ComponentFailed(f"{component.name} failed: {type(exc).__name__}: {exc}") from exc
            if not component.restartable or shutdown.requested.is_set():
                raise
            while isinstance(exc, BaseExceptionGroup):   # a component's own task group: its first leaf
                exc = exc.exceptions[0]
            logger.warning("%s: the database is unavailable (%s); restarting it in %.0f s",
                           component.name, str(exc).strip().splitlines()[0] if str(exc).strip() else exc, delay)
            try:
                await asyncio.wait_for(shutdown.requested.wait(), delay)
                return
            except TimeoutError:
                delay = min(delay * 2, 60.0)
                continue
        if shutdown.requested.is_set():
            return
        raise ComponentFailed(f"{component.name} stopped by itself")


async def control(components: list[Component], shutdown: Shutdown, settings: config.Settings,
                  role: str, tuning: Tuning, tasks: dict[str, asyncio.Task], watch=None) -> None:
    """The daemon's own loop: heartbeat file (with what `watch`, a health.HealthWatch, sees), update
    flag; on shutdown, stop the components and make sure they are gone by the deadline."""
    from update_handler import UpdateFlag

    flag = UpdateFlag(settings.update_flag_path)
    beat = heartbeat_path(settings)
    next_beat = next_flag = 0.0
    while not shutdown.requested.is_set():
        now = time.monotonic()
        if now >= next_beat:
            touch_heartbeat(beat, role, await _health_facts(watch))
            next_beat = now + tuning.heartbeat_interval
        if now >= next_flag:
            if flag.is_set():  # a safe point: nothing is half-done between these checks
                shutdown.request(flag.describe(), update=True)
                break
            next_flag = now + tuning.update_check_interval
        try:
            await asyncio.wait_for(shutdown.requested.wait(), min(tuning.heartbeat_interval,
                                                                  tuning.update_check_interval))
        except TimeoutError:
            pass
    started = time.monotonic()
    for component in components:
        component.stop()
    others = [t for name, t in tasks.items() if name != "control"]
    hurry = asyncio.create_task(shutdown.hurry.wait(), name="hurry")
    deadline = started + tuning.stop_deadline
    while not hurry.done() and (running := [t for t in others if not t.done()]):
        if time.monotonic() >= deadline:
            break
        await asyncio.wait([*running, hurry], timeout=deadline - time.monotonic(),
                           return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    pending = [t for t in others if not t.done()]
    for task in pending:
        logger.warning("%s did not stop in time; cancelling it", task.get_name())
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=2)
    logger.info("all components stopped in %.1f s", time.monotonic() - started)
    if shutdown.update:
        flag.clear()


async def _health_facts(watch) -> dict[str, Any] | None:
    if watch is None:
        return None
    try:
        return await asyncio.wait_for(watch.facts(), 5.0)
    except TimeoutError:
        return {"started": watch.started, "database_unreachable_since": time.time()}


def touch_heartbeat(path: Path, role: str, facts: dict[str, Any] | None = None) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "role": role, "at": time.time(), "facts": facts},
                                  default=str))
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot write the heartbeat file %s (%s): the health check will fail", path, exc)


async def run_components(components: list[Component], shutdown: Shutdown, settings: config.Settings,
                         role: str, tuning: Tuning, watch=None) -> int:
    """Run every component as a named task until shutdown; one failing stops them all (exit 1)."""
    tasks: dict[str, asyncio.Task] = {}
    code = EXIT_OK
    try:
        async with asyncio.TaskGroup() as tg:
            for component in components:
                tasks[component.name] = tg.create_task(supervise(component, shutdown, tuning),
                                                       name=component.name)
            tasks["control"] = tg.create_task(
                control(components, shutdown, settings, role, tuning, tasks, watch), name="control")
            logger.info("running: %s", ", ".join(tasks))
    except* ComponentFailed as group:
        for exc in group.exceptions:
            logger.error("the daemon stops because %s", exc, exc_info=exc.__cause__)
        code = EXIT_FAILURE
    except* Exception as group:
        for exc in group.exceptions:
            logger.error("the daemon stops because of an unexpected error", exc_info=exc)
        code = EXIT_FAILURE
    return code
