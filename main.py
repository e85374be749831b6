"""Face Archiver: the command line and the daemon's composition root.

    .venv/bin/python main.py [run] [--role all|worker]     the daemon (default)
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
- `all` (default): everything in one process: the Telegram accounts' clients (history sweeps,
  new messages, downloads, topics, posts, the dashboard's requests), face analysis, matching.
  Exactly one process runs it.
- `worker`: face analysis of downloaded media only; no Telegram account needed. Run any number
  of these (they need the staging area, STAGING_DIR, that the `all` process downloads into).
The Telegram side is not split further: a session file can be open in one process only, and a
post re-sends the photo by reference with the very account that saw it (access hashes and file
references are per account; the staged file is gone once it is analysed), so reading and posting
need the same clients.

First run: `check` says what is missing (settings, the face engine's weights, Telegram's API
id); `run` in a terminal then asks for the phone number, the login code and the two-step
password (Ctrl-C stops it; nothing is recorded until the login succeeds).

Exit codes: 0 all well (also: stopped by SIGTERM/SIGINT, or for an update); 1 the daemon stopped on
an error; 2 configuration, database or input problems (the message says what to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
import database
import maintenance_commands
import operator_commands
from commands import python_command
from maintenance_commands import engine_dimension
from supervisor import Component, Shutdown, Tuning, run_components

logger = logging.getLogger("face_archiver")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

ROLES = ("all", "worker")


# --------------------------------------------------------------------------------------------
# Shared construction


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
                            dimension=engine_dimension(settings.face_engine))


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


async def build_components(settings: config.Settings, role: str, pool, conninfo: str, hooks: Hooks,
                           cleanup: list[Callable[[], Awaitable[None] | None]],
                           shutdown: Shutdown, watch=None) -> list[Component]:
    """The components of `role`. Raises `StartupError` for what the operator must fix."""
    from processing_queue import JobQueue, RetryPolicy, WorkerPool

    tuning = hooks.tuning
    components: list[Component] = []
    analyser = matcher = None
    if role == "all":
        await ensure_an_account(settings, pool, conninfo, hooks, shutdown)
    if role in ("all", "worker"):
        from face_engines import ModelUnavailableError
        try:
            analyser, matcher = await start_analysis(settings)
        except ModelUnavailableError as exc:
            raise StartupError(f"face engine: {exc}") from exc
        cleanup.append(analyser.close)
    telegram = None
    if role == "all":
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
    from notifications import Notifier, NotifySettings, hub_sender
    notify = NotifySettings.from_settings(settings)
    if notify.enabled and role == "all":   # one process tells: the one that posts
        topics = telegram.topics if telegram is not None else None
        notifier = Notifier(pool, notify, send_to_hub=hub_sender(topics) if topics is not None else None)
        components.append(Component("notifications", notifier.run, notifier.stop))
    if role == "all" and settings.person_suggestions_minutes > 0:
        from identity_matcher import MatchParams
        from suggestions import Suggestions
        suggested = Suggestions(pool, MatchParams.from_settings(settings),
                                interval=60.0 * settings.person_suggestions_minutes)
        components.append(Component("suggestions", suggested.run, suggested.stop))
    return components


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
    from sessions import AccountError, telethon_client

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


class EarlySignal:
    """SIGTERM or SIGINT received before the event loop's handlers are set (the embedded server
    starting, a database still down): remembered, and the daemon stops as soon as it can, with
    exit 0 like any requested stop, instead of dying by the signal half-way through start-up."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.name = ""

    def __enter__(self) -> EarlySignal:
        self._previous = {sig: signal.signal(sig, self._note) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, _frame: object) -> None:
        self.name = self.name or signal.Signals(signum).name


def cmd_run(settings: config.Settings, role: str, hooks: Hooks) -> int:
    """The daemon; see the module docstring for roles and exit codes."""
    with EarlySignal() as early:
        try:
            prepared = wait_for_database(settings, hooks.tuning.startup_db_wait, stopping=lambda: bool(early.name))
        except database.DatabaseError as exc:
            print(f"database: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if prepared is None or early.name:
            logger.info("stopped before starting (received %s)", early.name)
            return EXIT_OK
        return asyncio.run(_run(settings, role, prepared, hooks, early))


def wait_for_database(settings: config.Settings, patience: float,
                      stopping: Callable[[], bool] = lambda: False) -> database.Prepared | None:
    """`prepare_database`, waiting up to `patience` seconds for a server that cannot be reached
    yet (restarting, still starting up after a power cut): the daemon starts by itself once it
    is back. Anything else (a wrong engine, a failed migration) raises at once. None if
    `stopping()` turned true while waiting."""
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
            until = time.monotonic() + delay
            while time.monotonic() < until:
                if stopping():
                    return None
                time.sleep(0.2)
            delay = min(delay * 2, 15.0)


async def _run(settings: config.Settings, role: str, prepared: database.Prepared, hooks: Hooks,
               early: EarlySignal) -> int:
    shutdown = Shutdown()
    loop = asyncio.get_running_loop()
    for sig in EarlySignal.SIGNALS:
        loop.add_signal_handler(sig, shutdown.request, f"received {signal.Signals(sig).name}")
    if early.name:   # between the database being ready and the handlers above
        logger.info("stopped before starting (received %s)", early.name)
        return EXIT_OK
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
                     help="which part of the daemon this process runs: all (default: everything, "
                          "in one process only), worker (face analysis only, no Telegram; any "
                          "number of them); see main.py --help")
    sub.add_parser("check", help="validate settings, reach and migrate the database, look for the face "
                                 "engine's weights; every problem at once")
    imp = sub.add_parser("import", help="analyse the photos and videos of a Telegram Desktop export")
    imp.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="the folder holding result.json")
    reindex = sub.add_parser("reindex", help="delete all faces and re-analyse every media item")
    reindex.add_argument("--engine", required=True, choices=["insightface", "dlib"])
    health = sub.add_parser("health", help="exit 0 if the daemon's heartbeat is fresh (for Docker)")
    health.add_argument("--max-age", type=float, default=90.0, help="seconds (default 90)")
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
        return maintenance_commands.cmd_check(settings, args.env_file)
    if args.command == "reindex":
        return maintenance_commands.cmd_reindex(settings, args.engine)
    if args.command == "health":
        return maintenance_commands.cmd_health(settings, args.max_age)
    if args.command in operator_commands.COMMANDS:
        return operator_commands.run(args.command, settings, args)
    if args.command == "import":
        return cmd_import(settings, args.export_dir, hooks)
    return cmd_run(settings, getattr(args, "role", "all"), hooks)


if __name__ == "__main__":
    sys.exit(main())
