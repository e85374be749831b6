"""Health that means something: what the daemon sees (health.HealthWatch, on a real PostgreSQL)
judged by health.problems(): a lost account at once; Telegram unreachable, the queue stuck, posts
failing only once they have lasted longer than their setting; and all well says nothing."""

from __future__ import annotations

import time
from types import SimpleNamespace

import psycopg

from health import HealthWatch, mask_phone, problems
from test_queue import add_account, add_job

SETTINGS = SimpleNamespace(health_outage_seconds=600, health_queue_seconds=3600, health_posts_seconds=3600)


class Registry:
    def __init__(self, connected: dict[int, bool]):
        self.connected = connected

    def account_ids(self):
        return sorted(self.connected)

    def is_connected(self, account_id):
        return self.connected[account_id]


async def test_each_fault_is_reported_once_it_lasts_longer_than_its_setting(pool, dlib_db):
    account = add_account(dlib_db, "+447700900012")
    registry = Registry({account: True})
    watch = HealthWatch(pool, registry=registry, started=time.time())
    assert problems(await watch.facts(), SETTINGS) == []

    # Telegram unreachable: reported only after HEALTH_OUTAGE_SECONDS
    registry.connected[account] = False
    facts = await watch.facts()
    now = time.time()
    assert problems(facts, SETTINGS, now) == []
    [said] = problems(facts, SETTINGS, now + 601)
    assert "Telegram has been unreachable for account +44…12 for 10 min" in said and "7700900" not in said
    registry.connected[account] = True
    assert problems(await watch.facts(), SETTINGS, time.time() + 601) == []

    # an account that is logged out / banned: at once, saying what to do
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE telegram_accounts SET status = 'error', last_error = 'the session was revoked' "
                     "WHERE id = %s", (account,))
    [said] = problems(await watch.facts(), SETTINGS)
    assert "account +44…12 is error (the session was revoked)" in said and "init_account.py" in said
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE telegram_accounts SET status = 'active' WHERE id = %s", (account,))

    # the queue holds due work and nothing finished for an hour
    add_job(dlib_db, 1)
    facts = await watch.facts()
    assert problems(facts, SETTINGS, time.time() + 60) == []
    [said] = problems(facts, SETTINGS, time.time() + 3700)
    assert "the queue holds 1 due job(s) but has finished none for 62 min" in said
    with psycopg.connect(dlib_db) as conn:   # a job finished (the workers' metrics say so): it moves
        conn.execute("INSERT INTO processing_metrics (metric_name, metric_value, recorded_at) "
                     "VALUES ('jobs_done', 1, now() + interval '3650 seconds')")
    assert problems(await watch.facts(), SETTINGS, time.time() + 3700) == []

    # posts failing, none succeeding since
    with psycopg.connect(dlib_db) as conn:
        person = conn.execute("INSERT INTO telegram_topics (label) VALUES ('P') RETURNING id").fetchone()[0]
        item = conn.execute("INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id) "
                            "VALUES ('k', 'photo', 1, 1) RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO uploaded_media (topic_id, source_chat_id, source_message_id, media_item_id) "
                     "VALUES (%s, 1, 1, %s)", (person, item))
        conn.execute("INSERT INTO processing_errors (error_type, error_message, error_context) "
                     "VALUES ('ChatWriteForbiddenError', 'x', '{\"stage\": \"upload\"}')")
    facts = await watch.facts()
    assert problems(facts, SETTINGS, time.time() + 60) == []
    [said] = problems(facts, SETTINGS, time.time() + 3700)
    assert said.startswith("posts into the hub have been failing for 6")


async def test_the_database_going_away_is_reported_while_it_lasts(pool, dlib_db):
    watch = HealthWatch(pool, started=time.time())
    assert problems(await watch.facts(), SETTINGS) == []
    from psycopg_pool import AsyncConnectionPool
    gone = AsyncConnectionPool("host=/nonexistent dbname=x connect_timeout=1", min_size=1, max_size=1, open=False)
    await gone.open(wait=False)             # a server that is not there (stopped, restarting)
    try:
        broken = HealthWatch(gone, started=time.time())
        facts = await broken.facts()
        assert problems(facts, SETTINGS, time.time()) == []
        [said] = problems(facts, SETTINGS, time.time() + 601)
        assert said == "the database has been unreachable for 10 min"
    finally:
        await gone.close()


def test_phone_numbers_are_masked():
    assert mask_phone("+447700900012") == "+44…12" and mask_phone(None) == "?"
