"""Recovery the operator can do: `main.py retry …` queues failed jobs and failed posts again (all,
by chat, by error type) and the daemon's workers then finish them; `main.py remove-chat` stops
watching a chat, skips its waiting work, and with --drop-data forgets what came only from it."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg
import pytest

import main
from test_dashboard import db as dashboard_db, signed_in  # noqa: F401
from test_dashboard_support import filled_db, filled_template  # noqa: F401
from test_queue import (PHOTO, Analyser, Downloader, add_account, add_job, job_row, make_pool,  # noqa: F401
                        matcher, run_until)


@pytest.fixture
def cli(dlib_db, clean_env, tmp_path, capsys):
    """`main.py ARGS` against `dlib_db`: (exit code, what it printed)."""
    params = psycopg.conninfo.conninfo_to_dict(dlib_db)
    for name, value in {"POSTGRES_HOST": params["host"], "POSTGRES_DB": params["dbname"],
                        "POSTGRES_USER": params["user"], "POSTGRES_PASSWORD": "unused-with-trust-auth",
                        "FACE_ENGINE": "dlib", "DATA_DIR": str(tmp_path / "data")}.items():
        clean_env.setenv(name, value)

    def run(*args: str) -> tuple[int, str]:
        code = main.main(["--env-file", str(tmp_path / "none.env"), *args])
        out = capsys.readouterr()
        return code, out.out + out.err
    return run


def fail(conninfo: str, job_id: int, error: str, *, media_failed: bool = False) -> None:
    with psycopg.connect(conninfo) as conn:
        job = conn.execute("UPDATE media_jobs SET status = 'failed', last_error = %s, attempts = 2, claims = 3, "
                           "staged_path = NULL, finished_at = now() WHERE id = %s RETURNING media_key, "
                           "source_chat_id, source_message_id", (error, job_id)).fetchone()
        if media_failed:
            conn.execute("INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id, status) "
                         "VALUES (%s, 'photo', %s, %s, 'failed')", job)


def add_post(conninfo: str, chat_id: int, message_id: int, *, status: str, error: str | None = None,
             person: int | None = None) -> tuple[int, int]:
    """A post of a new media item into a person's topic: (post id, media item id)."""
    with psycopg.connect(conninfo) as conn:
        if person is None:
            person = conn.execute("INSERT INTO telegram_topics (label) VALUES ('P') RETURNING id").fetchone()[0]
        item = conn.execute("INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id, "
                            "status) VALUES (%s, 'photo', %s, %s, 'analysed') RETURNING id",
                            (f"photo:{chat_id}:{message_id}", chat_id, message_id)).fetchone()[0]
        post = conn.execute(
            "INSERT INTO uploaded_media (topic_id, source_chat_id, source_message_id, media_item_id, status, "
            "attempts, last_error, random_id, uploaded_message_id, uploaded_at) "
            "VALUES (%s, %s, %s, %s, %s, 5, %s, 777, %s, %s) RETURNING id",
            (person, chat_id, message_id, item, status, error, 1 if status == "posted" else None,
             datetime.now(timezone.utc) if status == "posted" else None)).fetchone()[0]
    return post, item


def post_row(conninfo: str, post_id: int) -> dict:
    with psycopg.connect(conninfo, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM uploaded_media WHERE id = %s", (post_id,)).fetchone()


async def test_retry_by_chat_and_error_type_then_the_workers_finish_them(cli, pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    crashed = add_job(dlib_db, 1, chat_id=-1001, status="queued", account_id=account)
    offline = add_job(dlib_db, 2, chat_id=-1001, status="queued", account_id=account)
    elsewhere = add_job(dlib_db, 3, chat_id=-1002, status="queued", account_id=account)
    fail(dlib_db, crashed, "AnalysisCrashed: the worker process died while analysing /s/1.jpg", media_failed=True)
    fail(dlib_db, offline, "PermanentJobError: claimed 26 times without finishing")
    fail(dlib_db, elsewhere, "AnalysisCrashed: the worker process died while analysing /s/3.jpg")
    post, _ = add_post(dlib_db, -1001, 9, status="failed", error="RPCError: CHAT_WRITE_FORBIDDEN")

    code, listed = cli("retry", "--list")
    assert code == 0
    assert "1 failed job(s)  chat -1001  AnalysisCrashed" in listed and "chat -1002  AnalysisCrashed" in listed
    assert "1 failed post(s)  chat -1001  RPCError" in listed and "4 failed in all" in listed

    code, said = cli("retry", "--chat", "-1001", "--error-type", "AnalysisCrashed", "--only", "jobs")
    assert code == 0 and "1 failed job(s) and 0 failed post(s) queued again" in said
    row = job_row(dlib_db, crashed)
    assert (row["status"], row["attempts"], row["claims"]) == ("queued", 0, 0)
    assert [job_row(dlib_db, j)["status"] for j in (offline, elsewhere)] == ["failed", "failed"]
    assert post_row(dlib_db, post)["status"] == "failed"

    workers = make_pool(pool, downloader=Downloader(tmp_path, faces_dir / PHOTO), account_ids=lambda: [account],
                        analyser=Analyser(), matcher=matcher)
    await run_until(workers, dlib_db, [crashed])
    assert job_row(dlib_db, crashed)["status"] == "done"      # its media was analysed again, not refused

    code, said = cli("retry")
    assert code == 0 and "2 failed job(s) and 1 failed post(s) queued again" in said
    again = post_row(dlib_db, post)
    assert (again["status"], again["attempts"], again["random_id"]) == ("pending", 0, 777)
    assert cli("retry", "--list")[1].strip().endswith("nothing failed")


def test_remove_chat_keeps_or_drops_its_data(cli, dlib_db):
    account = add_account(dlib_db, "+1")
    with psycopg.connect(dlib_db) as conn:
        for chat in (-1003, -1004):
            conn.execute("INSERT INTO scan_checkpoints (account_id, chat_id, chat_title) VALUES (%s, %s, 'C')",
                         (account, chat))
    waiting = add_job(dlib_db, 1, chat_id=-1003, status="queued", account_id=account)
    other = add_job(dlib_db, 1, chat_id=-1004, status="queued", account_id=account)

    code, said = cli("remove-chat", "-1003")
    assert code == 0 and "1 watch record(s) removed, 1 waiting job(s) skipped" in said
    assert job_row(dlib_db, waiting)["status"] == "skipped" and job_row(dlib_db, other)["status"] == "queued"
    with psycopg.connect(dlib_db) as conn:
        states = dict(conn.execute("SELECT chat_id, state FROM scan_checkpoints").fetchall())
    assert states == {-1003: "removed", -1004: "active"}

    # dropping the data: the media seen only in -1004 and never posted go, with their faces
    unsent, unsent_item = add_post(dlib_db, -1004, 5, status="pending")
    posted, posted_item = add_post(dlib_db, -1004, 6, status="posted")
    with psycopg.connect(dlib_db) as conn:
        person = conn.execute("SELECT topic_id FROM uploaded_media WHERE id = %s", (unsent,)).fetchone()[0]
        for message_id, item in ((5, unsent_item), (6, posted_item)):
            conn.execute("INSERT INTO media_jobs (source_chat_id, source_message_id, media_key, media_type, status) "
                         "SELECT -1004, %s, media_key, 'photo', 'done' FROM media_items WHERE id = %s", (message_id, item))
        conn.execute("INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id, "
                     "media_item_id, state) VALUES (%s, %s, -1004, 5, %s, 'assigned')",
                     (person, "[" + ",".join(["0.1"] * 128) + "]", unsent_item))
        conn.execute("UPDATE telegram_topics SET embedding_count = 1 WHERE id = %s", (person,))
    assert cli("remove-chat", "-1004", "--drop-data")[0] == 2              # asks for --yes
    code, said = cli("remove-chat", "-1004", "--drop-data", "--yes")
    assert code == 0 and "1 media item(s) with their faces" in said and "1 media item(s) kept" in said
    with psycopg.connect(dlib_db) as conn:
        items = {r[0] for r in conn.execute("SELECT id FROM media_items").fetchall()}
        faces = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0]
        jobs = conn.execute("SELECT count(*) FROM media_jobs WHERE source_chat_id = -1004").fetchone()[0]
        count = conn.execute("SELECT embedding_count FROM telegram_topics WHERE id = %s", (person,)).fetchone()[0]
        watched = conn.execute("SELECT count(*) FROM scan_checkpoints WHERE chat_id = -1004").fetchone()[0]
    assert unsent_item not in items and posted_item in items
    assert (faces, jobs, count, watched) == (0, 0, 0, 0)
    assert post_row(dlib_db, posted)["status"] == "posted"
    assert cli("remove-chat", "-1999")[0] == 2                            # not watched: says so


def test_the_errors_page_queues_failed_work_again(dashboard_db):
    """The filled database's corrupt photo failed for good (MediaError): the Errors page offers to
    retry it, and after the click the job is queued again, its media no longer marked unreadable."""
    db = dashboard_db
    at = signed_in("errors")
    labels = [b.label for b in at.button]
    assert "Retry 1 job that failed with MediaError" in labels and "Retry all 1 failed item" in labels
    [(job, chat)] = db.execute("SELECT id, source_chat_id FROM media_jobs WHERE status = 'failed'").fetchall()
    assert f"Retry 1 failed item from chat {chat}" in labels                   # by chat too
    job = (job,)
    next(b for b in at.button if b.label.startswith("Retry 1 job")).click().run()
    assert not at.exception
    assert "1 failed job(s) and 0 failed post(s) queued again." in [s.value for s in at.success]
    assert db.execute("SELECT status, attempts FROM media_jobs WHERE id = %s", job).fetchone() == ("staged", 0)
    assert db.execute("SELECT count(*) FROM media_items WHERE status = 'failed'").fetchone() == (0,)
    assert not [b for b in at.button if b.label.startswith("Retry")]      # nothing failed any more
