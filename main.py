"""Face Archiver: the command line and the daemon's composition root.

    .venv/bin/python main.py [run] [--role all|scanner|worker|uploader]   the daemon (default)
    .venv/bin/python main.py check                        validate settings, database, face weights
    .venv/bin/python main.py import EXPORT_DIR            analyse a Telegram Desktop export
    .venv/bin/python main.py reindex --engine ENGINE      re-analyse everything with another engine
    .venv/bin/python main.py health [--max-age SECONDS]   is the daemon alive? (Docker HEALTHCHECK)
    .venv/bin/python main.py retry [--chat ID] [--error-type TYPE] [--only jobs|posts] [--list]
                                                          queue failed jobs and posts again
    .venv/bin/python main.py remove-chat CHAT_ID [--account ID] [--drop-data --yes]
                                                          stop watching a chat (and forget it)
    .venv/bin/python main.py forget PERSON_ID --yes       erase a person (faces, crops, posts)

(In the Docker image the interpreter is plain `python`.)

Roles: what one process of the daemon does. Roles share one database, so they can run as
separate processes, on separate machines:
- `all` (default): everything in one process. This is what a single machine runs.
- `worker`: face analysis of downloaded media only; no Telegram account needed. Run any number
  of these (they need the staging area, STAGING_DIR, that the scanner downloads into).
- `scanner`: the Telegram accounts' clients: history sweeps, new messages, downloads, and the
  dashboard's requests that need a client (new chats).
- `uploader`: the hub account's client: topics, posts, renames and merges on Telegram.
A session file can be open in one process only: run `scanner` and `uploader` separately only if
the hub account scans nothing.

First run: `check` says what is missing (settings, the face engine's weights, Telegram's API
id); `run` in a terminal then asks for the phone number, the login code and the two-step
password (Ctrl-C stops it; nothing is recorded until the login succeeds).

Exit codes: 0 all well (also: stopped by SIGTERM/SIGINT, or for an update); 1 the daemon stopped on
an error; 2 configuration, database or input problems (the message says what to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import config
import database
from commands import python_command

logger = logging.getLogger("face_archiver")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

ROLES = ("all", "scanner", "worker", "uploader")
HEARTBEAT_FILE = "heartbeat"


def _engine_dimension(engine: str) -> int:
    from media_processor import ENGINES
    return ENGINES[engine].dimension


# --------------------------------------------------------------------------------------------
# check, reindex, health


def cmd_check(settings: config.Settings, env_file: str) -> int:
    """What `run` needs, in the order it needs it, every problem said at once (exit 2 if any):
    the settings (already valid here: `main` refused them otherwise), the database (reached or
    started, migrated), the face engine's weights and whether the stored faces are that engine's,
    then Telegram. Changes nothing but the schema: a daemon running meanwhile is not disturbed."""
    problems: list[str] = []
    source = env_file if Path(env_file).is_file() else f"the environment and defaults (no {env_file})"
    print(f"settings:       valid (read from {source})")
    try:
        prepared = database.prepare(settings)
    except database.DatabaseError as exc:
        print(f"database:       {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"database:       {prepared.server.location}")
    print(f"schema version: {prepared.schema_version} (latest {database.latest_version()})")
    engine = settings.face_engine
    weights = engine_weights_problem(settings)
    print(f"face engine:    {engine}: " + ("weights missing" if weights else "weights present")
          + (f" (MODELS_DIR {settings.models_path})" if engine == "insightface" else ""))
    if weights:
        problems.append(f"FACE_ENGINE={engine}: {weights}")
    with psycopg.connect(prepared.server.conninfo) as conn:
        mismatch = database.engine_problem(conn, engine, _engine_dimension(engine))
        faces = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0]
    if prepared.engine and faces:
        print(f"stored faces:   {faces:,}, made by {prepared.engine.engine} ({prepared.engine.dimension}-d)")
    else:
        print("stored faces:   none yet (any engine can be chosen until the first face is stored)")
    if mismatch:
        problems.append(mismatch)
    python = python_command()
    if settings.telegram_configured:
        print("telegram api:   configured")
    else:
        print("telegram api:   not configured: `run` needs TG_API_ID and TG_API_HASH from "
              "https://my.telegram.org/apps (not needed for `import`)")
    hub = settings.hub_group_id if settings.hub_group_id is not None else "not set (posts wait in the outbox)"
    print(f"hub group:      {hub}")
    if problems:
        print(f"\n{len(problems)} problem(s) to fix before `{python} main.py run` or `import`:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print("ok")
    return EXIT_OK


def engine_weights_problem(settings: config.Settings) -> str | None:
    """Why the configured face engine cannot load here (its weights are missing), or None.
    Looks for the files only: loading the models takes seconds and a lot of memory."""
    from face_engines import ModelUnavailableError, find_insightface_models

    if settings.face_engine != "insightface":
        return None
    try:
        find_insightface_models(settings.models_path)
    except ModelUnavailableError as exc:
        return str(exc)
    return None


def cmd_reindex(settings: config.Settings, engine: str) -> int:
    """Forget all stored faces and queue every media item again for `engine`."""
    try:
        prepared = database.prepare(settings)
        jobs = database.reindex(prepared.server.conninfo, engine, _engine_dimension(engine))
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"re-indexed for {engine}: {jobs} jobs queued again. Set FACE_ENGINE={engine} and start the daemon.")
    return EXIT_OK


def heartbeat_path(settings: config.Settings) -> Path:
    return settings.data_dir / HEARTBEAT_FILE


def cmd_health(settings: config.Settings, max_age: float) -> int:
    """Exit 0 if a daemon touched DATA_DIR/heartbeat in the last `max_age` seconds and what it saw
    is well (health.py: Telegram and the database reachable, the queue moving, posts going out)."""
    import health

    path = heartbeat_path(settings)
    found = health.read_problems(path, settings, max_age=max_age)
    for problem in found:
        print(f"unhealthy: {problem}")
    if found:
        return EXIT_FAILURE
    print(f"healthy: heartbeat {time.time() - path.stat().st_mtime:.0f} s ago")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Shared construction


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


@dataclass
class Hooks:
    """What an embedding program (the test launcher) may replace: never set by the CLI."""

    telegram_client_factory: Callable[..., Any] | None = None   # accounts.ClientFactory
    tuning: Tuning = field(default_factory=Tuning)
    telegram_tuning: Any = None                                 # telegram_client.TelegramTuning


def open_pool(conninfo: str, *, max_size: int):
    from database import async_pool
    return async_pool(conninfo, min_size=1, max_size=max_size)


async def start_analysis(settings: config.Settings):
    """The face analysis processes and the matcher; raises if the model cannot be loaded."""
    from analysis_pool import AnalysisPool
    from identity_matcher import IdentityMatcher
    from media_processor import FaceProcessor

    if settings.face_engine == "insightface":
        from face_engines import download_insightface_models
        # Fetched once into MODELS_DIR on the first start outside Docker (the image has them baked
        # in); offline, this raises ModelUnavailableError saying what to do.
        await asyncio.to_thread(download_insightface_models, settings.models_path)
    processor = FaceProcessor(settings.face_engine, models_dir=settings.models_path,
                              min_quality=settings.min_quality_threshold)
    analyser = AnalysisPool(processor, workers=settings.num_workers,
                            frame_rate=settings.video_frame_rate, max_seconds=settings.video_max_seconds,
                            timeout=300 + settings.video_max_seconds * settings.video_frame_rate * 3)
    await analyser.start()
    return analyser, IdentityMatcher.from_settings(settings)


def worker_config(settings: config.Settings, tuning: Tuning, **changes: Any):
    from processing_queue import WorkerConfig
    # Twice as many jobs in flight as analysis processes: while one job's faces are matched and
    # stored (database work in this process), the next job's analysis keeps the process busy.
    values = dict(analysis_slots=2 * settings.num_workers, download_slots=2,
                  max_staged=max(16, 4 * settings.num_workers), poll_interval=tuning.poll_interval,
                  grace=tuning.grace, metrics_interval=tuning.metrics_interval,
                  max_media_bytes=settings.max_media_bytes, download_timeout=tuning.download_timeout)
    return WorkerConfig(**values | changes)


def prepare_database(settings: config.Settings) -> database.Prepared:
    return database.prepare(settings, engine=settings.face_engine,
                            dimension=_engine_dimension(settings.face_engine))


# --------------------------------------------------------------------------------------------
# import


def cmd_import(settings: config.Settings, export_dir: Path, hooks: Hooks) -> int:
    """Analyse the photos and videos of a Telegram Desktop export (see exports.py)."""
    import exports

    try:
        contents = exports.read_export(export_dir)
    except exports.ExportError as exc:
        print(f"import: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        prepared = prepare_database(settings)
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_import(settings, prepared, contents, hooks.tuning))


async def _import(settings: config.Settings, prepared: database.Prepared, contents, tuning: Tuning) -> int:
    import exports
    from face_engines import ModelUnavailableError
    from processing_queue import JobQueue, RetryPolicy, WorkerPool

    try:
        analyser, matcher = await start_analysis(settings)
    except ModelUnavailableError as exc:
        print(f"face engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    pool = open_pool(prepared.server.conninfo, max_size=settings.num_workers + 4)
    interrupted = []
    try:
        await pool.open(wait=True)
        workers = WorkerPool(JobQueue(pool, lease_seconds=tuning.lease_seconds),
                             config=worker_config(settings, tuning, poll_interval=0.2),
                             policy=RetryPolicy.standard(backoff_base=tuning.retry_backoff), analyser=analyser, matcher=matcher)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda s=sig: (interrupted.append(s), workers.stop()))
        report = await exports.run_import(pool, contents, workers, progress=sys.stderr.isatty())
    finally:
        analyser.close()
        await pool.close()
    for line in report.lines(contents):
        print(line)
    if interrupted:
        print("interrupted: run the same import again to finish it (nothing is done twice)")
        return EXIT_FAILURE
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The daemon


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


async def build_components(settings: config.Settings, role: str, pool, conninfo: str, hooks: Hooks,
                           cleanup: list[Callable[[], Awaitable[None] | None]],
                           shutdown: Shutdown, watch=None) -> list[Component]:
    """The components of `role`. Raises `StartupError` for what the operator must fix."""
    from processing_queue import JobQueue, RetryPolicy, WorkerPool

    tuning = hooks.tuning
    components: list[Component] = []
    analyser = matcher = None
    if role in ("all", "scanner", "uploader"):
        await ensure_an_account(settings, pool, conninfo, hooks, shutdown)
    if role in ("all", "worker"):
        from face_engines import ModelUnavailableError
        try:
            analyser, matcher = await start_analysis(settings)
        except ModelUnavailableError as exc:
            raise StartupError(f"face engine: {exc}") from exc
        cleanup.append(analyser.close)
    telegram = None
    if role in ("all", "scanner", "uploader"):
        telegram = await start_telegram(settings, role, pool, hooks)
        cleanup.append(telegram.close)
        components.extend(Component(name, run, stop) for name, run, stop in telegram.components())
        if watch is not None:
            watch.registry = telegram.registry
    downloader = telegram.downloader if telegram is not None else None
    if analyser is not None or downloader is not None:
        workers = WorkerPool(
            JobQueue(pool, lease_seconds=tuning.lease_seconds),
            config=worker_config(settings, tuning, staging_dir=settings.staging_path if downloader else None),
            policy=RetryPolicy.standard(backoff_base=tuning.retry_backoff), analyser=analyser, matcher=matcher,
            downloader=downloader, account_ids=telegram.account_ids if downloader else None,
            account_online=telegram.registry.is_connected if downloader else None)
        components.append(Component("workers", workers.run, workers.stop, restartable=False))
    from retention import Retention, RetentionSettings
    retention = Retention(pool, RetentionSettings.from_settings(settings))
    components.append(Component("retention", retention.run, retention.stop))
    return components


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


async def start_telegram(settings: config.Settings, role: str, pool, hooks: Hooks):
    """The Telegram side of `role`, its accounts connected; `StartupError` if it cannot start."""
    from telegram_client import AccountError, TelegramService

    service = TelegramService(settings, pool, role=role, client_factory=hooks.telegram_client_factory,
                              tuning=hooks.telegram_tuning)
    try:
        await service.start()
    except AccountError as exc:
        await service.close()
        raise StartupError(f"telegram: {exc}") from exc
    return service


async def ensure_an_account(settings: config.Settings, pool, conninfo: str, hooks: Hooks,
                            shutdown: Shutdown) -> None:
    """The first run, with no account yet: log one in interactively, or say how to.

    Checked before anything slow (the face model), so that the first thing a new user reads
    is what they must provide. A signal ends the prompt at once, with nothing recorded."""
    async with pool.connection() as conn:
        accounts = await (await conn.execute(database.queries.tg_active_accounts)).fetchall()
    if accounts:
        return
    python = python_command()
    if not settings.telegram_configured:
        raise StartupError(
            "no Telegram account yet, and TG_API_ID / TG_API_HASH are not set. Get them at "
            "https://my.telegram.org/apps (API development tools), put them in .env, then start "
            f"this again in a terminal to log in (or run `{python} init_account.py`). "
            f"To analyse Telegram Desktop exports without Telegram: `{python} main.py import EXPORT_DIR`.")
    if not sys.stdin.isatty():
        raise StartupError(
            f"no Telegram account yet: log one in with `{python} init_account.py` (it asks for the phone "
            "number, the login code and the two-step password; with Docker: "
            "`docker compose run --rm app python init_account.py`), then start the daemon again.")
    import init_account
    from accounts import AccountError, telethon_client

    print("No Telegram account is logged in yet; let's log one in (Ctrl-C to stop).")

    async def log_in() -> dict[str, Any]:
        phone = await init_account.terminal_line("Phone number (international format, e.g. +15551234567): ")
        return await init_account.login(settings, conninfo, phone,
                                        factory=hooks.telegram_client_factory or telethon_client,
                                        ask=init_account.terminal_line, ask_secret=init_account.terminal_secret)

    login = asyncio.create_task(log_in(), name="login")
    stop = asyncio.create_task(shutdown.requested.wait(), name="login-stop")
    await asyncio.wait([login, stop], return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not login.done():
        login.cancel()
        await asyncio.wait([login], timeout=5)   # the client disconnects, the terminal echoes again
        print()
        raise Interrupted(f"stopped before logging in ({shutdown.reason}): nothing was recorded")
    try:
        account = login.result()
    except (ValueError, AccountError, init_account.LoginFailed, EOFError) as exc:
        raise StartupError(f"login: {exc}; try again with `{python} init_account.py`") from exc
    print(f"Logged in: account {account['id']}. Add chats to watch with "
          f"`{python} add_chat.py {account['id']} @chat` (the daemon picks them up while running).")


class Interrupted(Exception):
    """A signal stopped the daemon before it started (exit 0, like any requested stop)."""


class StartupError(Exception):
    """The daemon cannot start; the message says what to do."""


def cmd_run(settings: config.Settings, role: str, hooks: Hooks) -> int:
    """The daemon; see the module docstring for roles and exit codes."""
    try:
        prepared = wait_for_database(settings, hooks.tuning.startup_db_wait)
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_run(settings, role, prepared, hooks))


def wait_for_database(settings: config.Settings, patience: float) -> database.Prepared:
    """`prepare_database`, waiting up to `patience` seconds for a server that cannot be reached
    yet (restarting, still starting up after a power cut): the daemon starts by itself once it
    is back. Anything else (a wrong engine, a failed migration) raises at once."""
    import psycopg

    started = time.monotonic()
    delay = 1.0
    while True:
        try:
            return prepare_database(settings)
        except database.DatabaseError as exc:
            if not isinstance(exc.__cause__, psycopg.OperationalError) or time.monotonic() - started > patience:
                raise
            logger.warning("the database cannot be reached yet (%s); trying again in %.0f s",
                           str(exc).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


async def _run(settings: config.Settings, role: str, prepared: database.Prepared, hooks: Hooks) -> int:
    shutdown = Shutdown()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.request, f"received {signal.Signals(sig).name}")
    logger.info("Face Archiver starting: role %s, %s, face engine %s, %d worker(s)", role,
                prepared.server.location, settings.face_engine, settings.num_workers)
    pool = open_pool(prepared.server.conninfo, max_size=2 * settings.num_workers + 8)
    await pool.open(wait=True)
    cleanup: list[Callable[[], Awaitable[None] | None]] = []
    from health import HealthWatch
    watch = HealthWatch(pool)
    try:
        components = await build_components(settings, role, pool, prepared.server.conninfo, hooks, cleanup,
                                            shutdown, watch=watch)
        if not components:
            raise StartupError(f"role {role} has nothing to do here")
        code = await run_components(components, shutdown, settings, role, hooks.tuning, watch)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        code = EXIT_CONFIG
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        code = EXIT_OK
    finally:
        for close in reversed(cleanup):
            result = close()
            if asyncio.iscoroutine(result):
                await asyncio.shield(result)
        await pool.close()
    if code == EXIT_OK:
        logger.info("stopped (%s)", shutdown.reason or "nothing left to do")
    return code


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-file", default=".env", help="settings file read after the environment (default .env)")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daemon (the default command)")
    run.add_argument("--role", choices=ROLES, default="all",
                     help="which part of the daemon this process runs: all (default: everything), "
                          "worker (face analysis only, no Telegram), scanner (reading chats and "
                          "downloading), uploader (posting into the hub); see main.py --help")
    sub.add_parser("check", help="validate settings, reach and migrate the database, look for the face "
                                 "engine's weights; every problem at once")
    imp = sub.add_parser("import", help="analyse the photos and videos of a Telegram Desktop export")
    imp.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="the folder holding result.json")
    reindex = sub.add_parser("reindex", help="delete all faces and re-analyse every media item")
    reindex.add_argument("--engine", required=True, choices=["insightface", "dlib"])
    health = sub.add_parser("health", help="exit 0 if the daemon's heartbeat is fresh (for Docker)")
    health.add_argument("--max-age", type=float, default=90.0, help="seconds (default 90)")
    import operator_commands
    operator_commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None, hooks: Hooks | None = None) -> int:
    args = build_parser().parse_args(argv)
    hooks = hooks or Hooks()
    try:
        settings = config.load_settings(args.env_file)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.command == "check":
        return cmd_check(settings, args.env_file)
    if args.command == "reindex":
        return cmd_reindex(settings, args.engine)
    if args.command == "health":
        return cmd_health(settings, args.max_age)
    import operator_commands
    if args.command in operator_commands.COMMANDS:
        return operator_commands.run(args.command, settings, args)
    if args.command == "import":
        return cmd_import(settings, args.export_dir, hooks)
    return cmd_run(settings, getattr(args, "role", "all"), hooks)


if __name__ == "__main__":
    sys.exit(main())
