"""`python main.py check`: what an operator runs first, on a fresh machine or an old database."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

import database

from conftest import ROOT, create_database
from test_database import run_script, seed_init_sql


def run_check(tmp_path, env: dict[str, str], env_file: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k in {"PATH", "HOME", "LANG", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XDG_RUNTIME_DIR"}}
    args = [sys.executable, str(ROOT / "main.py"), "--env-file", env_file or str(tmp_path / "missing.env"), "check"]
    return subprocess.run(args, cwd=tmp_path, env=base | env, capture_output=True, text=True, timeout=180)


def test_check_with_no_database_settings_starts_the_embedded_server(tmp_path):
    os.chmod(tmp_path, 0o755)  # as root, the embedded server runs as its own user
    done = run_check(tmp_path, {"DATA_DIR": str(tmp_path / "data"), "FACE_ENGINE": "dlib"})
    assert done.returncode == 0, done.stderr
    assert "embedded PostgreSQL" in done.stdout
    assert f"schema version: {database.latest_version()} " in done.stdout
    assert "face engine:    dlib: weights present" in done.stdout
    assert "stored faces:   none yet" in done.stdout
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()


def test_a_broken_env_file_lists_every_problem_and_exits_2(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("TG_API_ID=12345678\nPOSTGRES_HOST=db\nVIDEO_FRAME_RATE=-1\nLOG_LEVEL=loud\n")
    done = run_check(tmp_path, {}, str(env_file))
    assert done.returncode == 2
    for name in ("TG_API_ID", "POSTGRES_PASSWORD", "VIDEO_FRAME_RATE", "LOG_LEVEL"):
        assert name in done.stderr
    assert "Traceback" not in done.stderr


def test_check_upgrades_a_seed_database_without_losing_rows(tmp_path, admin_conninfo):
    seed_db = create_database(admin_conninfo)
    run_script(seed_db, seed_init_sql())
    run_script(seed_db, "INSERT INTO telegram_topics (topic_id, label) VALUES (12, 'Grandma');"
                        "INSERT INTO processing_metrics (metric_name, metric_value) VALUES ('jobs_done', 40);")
    params = psycopg.conninfo.conninfo_to_dict(seed_db)
    pack = tmp_path / "models" / "models" / "buffalo_l"     # check looks for the files, never loads them
    pack.mkdir(parents=True)
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (pack / name).write_bytes(b"stand-in")
    done = run_check(tmp_path, {
        "POSTGRES_HOST": params["host"], "POSTGRES_DB": params["dbname"], "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "unused-with-trust-auth", "FACE_ENGINE": "insightface",
        "MODELS_DIR": str(tmp_path / "models"),
    })
    assert done.returncode == 0, done.stderr
    assert "unused-with-trust-auth" not in done.stdout + done.stderr
    with psycopg.connect(seed_db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] >= 2
        assert conn.execute("SELECT topic_id, label FROM telegram_topics").fetchall() == [(12, "Grandma")]
        assert conn.execute("SELECT metric_value FROM processing_metrics").fetchall() == [(40,)]


HOLDER = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
import psycopg, database
server = database.start_embedded(Path({pgdata!r}), "face_archiver")
print("ready", flush=True)
sys.stdin.readline()                      # the test runs `check` meanwhile
with psycopg.connect(server.conninfo) as conn:
    print("still up", conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0], flush=True)
"""


def test_processes_share_one_embedded_server(tmp_path):
    """The daemon, the dashboard and the scripts use the same embedded server; one of them
    exiting does not stop it under the others."""
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    data.mkdir()
    code = HOLDER.format(root=str(ROOT), pgdata=str(data / "postgres"))
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    try:
        assert holder.stdout.readline().strip() == "ready"
        done = run_check(tmp_path, {"DATA_DIR": str(data), "FACE_ENGINE": "dlib"})
        assert done.returncode == 0, done.stderr
        out, _ = holder.communicate("go\n", timeout=60)
    finally:
        holder.kill()
    assert out.strip() == f"still up {database.latest_version()}"
