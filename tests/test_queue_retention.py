"""Retention: the daemon's schedule deletes old metrics, resolved errors and pending faces that
met nobody, and keeps what the operator still needs (errors of failed work, recent rows)."""

from __future__ import annotations

import asyncio

import psycopg

from retention import Retention, RetentionSettings
from test_queue import add_job


def count(conninfo: str, query: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(query).fetchone()[0]


async def test_old_metrics_resolved_errors_and_stale_pending_faces_go_on_schedule(pool, dlib_db):
    done = add_job(dlib_db, 1, status="queued")
    failed = add_job(dlib_db, 2, status="queued")
    vector = "[" + ",".join(["0.1"] * 128) + "]"
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE media_jobs SET status = 'done' WHERE id = %s", (done,))
        conn.execute("UPDATE media_jobs SET status = 'failed' WHERE id = %s", (failed,))
        conn.execute("""INSERT INTO processing_metrics (metric_name, metric_value, recorded_at)
                        VALUES ('jobs_done', 1, now() - interval '31 days'), ('jobs_done', 2, now() - interval '29 days')""")
        for job_id, age in ((done, 100), (failed, 100), (done, 10), (None, 100)):
            conn.execute("""INSERT INTO processing_errors (error_type, error_message, job_id, error_timestamp)
                            VALUES ('OSError', 'x', %s, now() - make_interval(days => %s))""", (job_id, age))
        person = conn.execute("INSERT INTO telegram_topics (label) VALUES ('P') RETURNING id").fetchone()[0]
        for age, state in ((200, "pending"), (100, "pending"), (400, "assigned"), (400, "review")):
            conn.execute("""INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id,
                                                         state, detection_timestamp)
                            VALUES (%s, %s, 1, 1, %s, now() - make_interval(days => %s))""",
                         (person if state == "assigned" else None, vector, state, age))
    retention = Retention(pool, RetentionSettings(metrics_days=30, errors_days=90, pending_face_days=180,
                                                  interval=0.2))
    task = asyncio.create_task(retention.run())
    try:
        async with asyncio.timeout(10):
            while count(dlib_db, "SELECT count(*) FROM processing_metrics") > 1:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)               # a second round removes nothing more
    finally:
        retention.stop()
        await task
    assert count(dlib_db, "SELECT sum(metric_value) FROM processing_metrics") == 2
    with psycopg.connect(dlib_db) as conn:
        kept_errors = conn.execute("SELECT job_id, error_timestamp > now() - interval '50 days' "
                                   "FROM processing_errors ORDER BY id").fetchall()
        faces = conn.execute("SELECT state, detection_timestamp > now() - interval '150 days' "
                             "FROM face_embeddings ORDER BY id").fetchall()
    assert kept_errors == [(failed, False), (done, True)]      # failed work's error stays, however old
    assert faces == [("pending", True), ("assigned", False), ("review", False)]
