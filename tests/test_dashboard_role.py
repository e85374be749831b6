"""The dashboard's least-privilege PostgreSQL role (migrations/0007, dashboard_role.py), on the
dashboard's filled database (real faces from the real pipeline): as the role, every change the
dashboard makes works (with its audit entry), every table can be read, and what the dashboard
never does is refused. (The dashboard's own tests, test_dashboard*.py, run every page as the role
too: dashboard_environment sets DASHBOARD_DB_PASSWORD.)"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

import config
import dashboard_role
import database
import erasure
import persons
import recovery
from dashboard_pages import audit
from database import queries
from test_dashboard_support import filled_db, filled_template  # noqa: F401


def as_role(conninfo: str) -> str:
    return make_conninfo(conninfo, user=dashboard_role.ROLE)


def scram_matches(verifier: str, password: str) -> bool:
    """The SCRAM-SHA-256 verifier PostgreSQL stores is the one of `password` (RFC 5802)."""
    import base64
    import hashlib
    import hmac
    iterations_salt, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


def faces_of(conn, person_id: int) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM face_embeddings WHERE topic_id = %s ORDER BY id", (person_id,))]


@pytest.fixture
def world(filled_db):  # noqa: F811
    """Persons by size, their faces, a failed job, a merge suggestion and a face in review."""
    with psycopg.connect(filled_db, autocommit=True) as admin:
        people = [r[0] for r in admin.execute(
            "SELECT topic_id FROM face_embeddings WHERE topic_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1")]
        assert len(people) >= 3 and len(faces_of(admin, people[0])) >= 5
        faces = {p: faces_of(admin, p) for p in people}
        admin.execute("UPDATE media_jobs SET status = 'failed', last_error = 'OSError: disk' "
                      "WHERE id = (SELECT min(id) FROM media_jobs)")
        suggestion = admin.execute("INSERT INTO merge_suggestions (person_a, person_b, score) VALUES (%s, %s, 0.5) "
                                   "ON CONFLICT (person_a, person_b) DO UPDATE SET score = 0.5 RETURNING id", (min(people[1:3]), max(people[1:3]))).fetchone()[0]
        review = faces[people[1]][-1]
        admin.execute("UPDATE face_embeddings SET state = 'review', topic_id = NULL, review_candidates = %s "
                      "WHERE id = %s", (Jsonb([{"person_id": people[1]}]), review))
    return {"db": filled_db, "people": people, "faces": faces, "suggestion": suggestion, "review": review}


def test_the_role_can_make_every_dashboard_change(world):
    people, faces = world["people"], world["faces"]
    p0, p1, p2 = people[:3]
    changes = [
        (persons.rename_person, p0, "Someone"),
        (persons.hide_person, p0), (persons.unhide_person, p0),
        (persons.choose_cover, p0, faces[p0][1]),
        (persons.move_faces_to_new_person, [faces[p0][2]]),
        (persons.move_faces, [faces[p0][3]], p1),
        (persons.unassign_faces, [faces[p0][4]]),
        (persons.dismiss_faces, [faces[p0][0]]),
        (persons.resolve_review, world["review"], p1),
        (persons.reject_merge_suggestion, world["suggestion"]),
        (persons.merge_persons, p1, p2),
        (recovery.retry_failed,),
        (erasure.forget_person, p0),
    ]
    with psycopg.connect(as_role(world["db"])) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == dashboard_role.ROLE
        for fn, *args in changes:
            with conn.transaction():
                result = fn(conn, *args)
                audit.record(conn, fn.__name__, f"{fn.__name__} done", args=args, result=result)
        with conn.transaction():   # the Chats page pauses a chat
            checkpoint = conn.execute("SELECT coalesce(min(id), 0) FROM scan_checkpoints").fetchone()[0]
            conn.execute(queries.dashboard_set_chat_state, {"checkpoint_id": checkpoint, "state": "paused"})
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:   # it reads everything
            conn.execute(f'SELECT * FROM "{table}" LIMIT 1').fetchall()
    with psycopg.connect(world["db"]) as admin:
        logged = [r[0] for r in admin.execute("SELECT action FROM dashboard_audit ORDER BY id")]
        assert logged == [fn.__name__ for fn, *_ in changes]
        assert admin.execute("SELECT count(*) FROM face_embeddings WHERE topic_id = %s", (p0,)).fetchone()[0] == 0
        assert admin.execute("SELECT count(*) FROM media_jobs WHERE status = 'failed'").fetchone()[0] == 0


@pytest.mark.parametrize("statement", [
    "DELETE FROM face_embeddings",
    "INSERT INTO face_embeddings (embedding) SELECT embedding FROM face_embeddings LIMIT 1",
    "UPDATE telegram_accounts SET status = 'inactive'",
    "DELETE FROM telegram_accounts",
    "DELETE FROM uploaded_media",
    "DELETE FROM processing_errors",
    "DELETE FROM processing_metrics",
    "DELETE FROM media_items",
    "UPDATE face_engine SET engine = 'dlib'",
    "UPDATE dashboard_audit SET summary = 'nothing happened'",   # the audit log is append-only for it
    "DELETE FROM dashboard_audit",
    "UPDATE dashboard_actions SET status = 'done'",               # the daemon settles requests, not the dashboard
    "DROP TABLE merge_suggestions",
    "TRUNCATE telegram_topics CASCADE",
])
def test_the_role_cannot_do_what_the_dashboard_never_does(world, statement):
    with psycopg.connect(as_role(world["db"])) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_dashboard_logs_in_as_the_role(world, clean_env):
    params = conninfo_to_dict(world["db"])
    location = dict(postgres_host=params["host"], postgres_port=int(params.get("port") or 5432),
                    postgres_db=params["dbname"], postgres_user=params.get("user") or "postgres")
    # The app (the owner's password and the role's) migrates and sets the role's password ...
    app = config.load_settings(None, **location, postgres_password="unused", dashboard_db_password="s3cret 'quoted'")
    server = database.prepare(app).server
    assert not server.embedded
    # ... the dashboard's container has the role's password only, and logs in with it.
    settings = config.load_settings(None, **location, dashboard_db_password="s3cret 'quoted'")
    assert settings.postgres_password is None
    info = dashboard_role.conninfo(settings, database.locate_server(settings))
    assert conninfo_to_dict(info)["user"] == dashboard_role.ROLE
    assert conninfo_to_dict(info)["password"] == "s3cret 'quoted'"
    with psycopg.connect(world["db"]) as admin:   # the password is set on the role
        stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                               (dashboard_role.ROLE,)).fetchone()[0]
        assert stored.startswith("SCRAM-SHA-256$") and "s3cret" not in stored   # only a verifier was sent
        assert scram_matches(stored, "s3cret 'quoted'")
    with psycopg.connect(info) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == dashboard_role.ROLE
    without = config.load_settings(None, postgres_host=params["host"], postgres_password="unused")
    with pytest.raises(database.DatabaseError, match="DASHBOARD_DB_PASSWORD"):
        dashboard_role.conninfo(without, server)
    embedded = database.Server(world["db"], embedded=True)   # the trusted socket: no password needed
    assert conninfo_to_dict(dashboard_role.conninfo(without, embedded))["user"] == dashboard_role.ROLE
