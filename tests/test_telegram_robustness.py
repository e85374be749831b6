"""Every Telegram error a component can meet is recorded and the component carries on: the
history sweeps, the connections, the uploader, the topic manager, the downloads and the
requests from the dashboard.

Everything runs on the fake Telegram server beneath the real Telethon client
(tests/telegram_server.py): errors are Telegram's codes and messages, Telethon's `_call` retries
500s and sleeps short flood waits itself. Errors "after N messages" strike on a later page of
history (`Network.fail_after`; Telethon reads 100 messages a page), errors while connecting on
the `help.getConfig` every (re)connection starts with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from media_fixtures import faces_dir
from server_harness import ServerHarness, eventually, run_components
from test_telegram_scan import _has_job, _mode, checkpoint, history, job_ids
from test_uploader import rows
from test_uploader import analysed, due, make_person, outbox, world_with_chat

FACES = faces_dir()
A, B = "+15550001", "+15550002"


# --- history sweeps ---------------------------------------------------------------------------

# (the error a page of history meets, what Telethon raises, after how many pages; None: at once).
# 500s and -503s are tried again by Telethon's _call: they fail as many times as it tries.
SWEEP_ERRORS = [
    ("CHANNEL_PRIVATE", "ChannelPrivateError", None),     # the account was removed from the chat
    ("CHAT_FORBIDDEN", "ChatForbiddenError", 1),
    ("500:INTERNAL", "ServerError", 1),                   # Telegram's 500
    ("-503:Timeout", "TimedOutError", None),              # Telegram's -503 "Timeout"
    ("400:SOMETHING_NEW", "RPCError", 1),                 # an error Telethon has no class for
    ("MESSAGE_ID_INVALID", "MessageIdInvalidError", None),
    ("TypeError", "TypeError", 1),                        # Telethon itself failing on something
    ("ConnectionError", "ConnectionError", 1),
    ("TimeoutError", "TimeoutError", None),
]
RETRIED = ("500:INTERNAL", "-503:Timeout")
PAGE = 100                                                # messages per page of history


async def test_the_sweeps_record_every_telegram_error_and_go_on(h, pool):
    a = await h.add_account(A)
    chats = {}
    for answer, error, after in SWEEP_ERRORS:
        chat = h.server.add_chat(f"chat {error}", members=[A])
        chats[error] = (chat, history(h.server, chat, PAGE + 20))
        await h.watch(a, chat)
        h.network.fail_after("GetHistoryRequest", answer, chat=chat, after=after or 0,
                             times=3 if answer in RETRIED else 1)
    calm = h.server.add_chat("calm", members=[A])
    calm_media = history(h.server, calm, 20)
    await h.watch(a, calm)
    service = await h.service(sweep_interval=3600)
    task, stop = await run_components(service)
    try:
        await eventually(lambda: _mode(pool, calm, "realtime"), timeout=60, what="the calm chat's backfill")
        for error in ("ConnectionError", "TimeoutError"):        # an outage: read again at once
            await eventually(lambda c=chats[error][0]: _mode(pool, c, "realtime"), what=f"the chat after {error}")
        for _, error, after in SWEEP_ERRORS:
            chat, _ = chats[error]
            if error in ("ConnectionError", "TimeoutError"):
                continue
            cp = await eventually(lambda c=chat: _errored(pool, c), what=f"{error} recorded")
            assert cp["deferred_until"] is not None and cp["scan_mode"] == "backfill"
            assert cp["last_processed_message_id"] == PAGE * (after or 0)   # what was read before is kept
            if error not in ("RPCError", "TypeError", "ServerError", "TimedOutError"):
                assert error in cp["last_error"] or "cannot read" in cp["last_error"], cp["last_error"]
        assert not task.done()                                         # the daemon runs on
        live = h.server.post(calm, h.server.photo(FACES / "kamala_harris_01.jpg"))
        await eventually(lambda: _has_job(pool, calm, live), what="a live message after all that")

        # The deferral ends (the operator fixed it, or time passed): every chat completes.
        await rows(pool, "UPDATE scan_checkpoints SET deferred_until = now() WHERE deferred_until IS NOT NULL")
        service.scanner.request_sweep()
        for error, (chat, media) in chats.items():
            await eventually(lambda c=chat: _mode(pool, c, "realtime"), what=f"the chat after {error}")
            assert await job_ids(pool, chat) == media, error
        assert await job_ids(pool, calm) == calm_media + [live]
        assert not task.done()
    finally:
        await stop()


async def _errored(pool, chat_id):
    cp = await checkpoint(pool, chat_id)
    return cp if cp["last_error"] else None


async def test_a_flood_wait_on_one_chat_defers_it_without_losing_the_others(h, pool):
    """A premium flood wait (FLOOD_PREMIUM_WAIT_X, not a FloodWaitError subclass) is a flood wait:
    the account pauses, the chat resumes where it stopped, nothing of the other chat is lost."""
    h.with_settings(flood_sleep_threshold=1)
    a = await h.add_account(A)
    slow = h.server.add_chat("slow", members=[A])
    other = h.server.add_chat("other", members=[A])
    history(h.server, slow, 10)
    media = history(h.server, other, 10)
    await h.watch(a, slow)
    await h.watch(a, other)
    h.network.fail_after("GetHistoryRequest", "FLOOD_PREMIUM_WAIT_30", after=0, chat=slow)
    service = await h.service()
    await service.scanner.sweep_due(a)
    assert "flood wait of 30 s" in (await checkpoint(pool, slow))["last_error"]
    [account] = await rows(pool, "SELECT flood_wait_until > now() AS paused FROM telegram_accounts")
    assert account["paused"]
    await rows(pool, "UPDATE telegram_accounts SET flood_wait_until = NULL")   # the wait is over
    service.registry.client(a)._flood_waited_requests.clear()                 # for Telethon too
    await service.scanner.sweep_due(a)
    assert await job_ids(pool, other) == media


# --- connections --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", ["500:INTERNAL", "FLOOD_WAIT_2", "-503:Timeout"])
async def test_an_error_while_connecting_is_an_outage_not_a_logout(h, pool, error):
    """get_me failing at start (a flood wait, a server hiccup) keeps the account, and the
    connection loop logs it in again; it is never marked logged out."""
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    media = history(h.server, chat, 10)
    await h.watch(a, chat)
    h.server.fail("GetUsersRequest", error, times=3 if error in RETRIED else 1)    # get_me, past _call's tries
    service = await h.service()                          # does not raise
    [account] = await rows(pool, "SELECT status, telegram_user_id FROM telegram_accounts WHERE id = %s", a)
    assert account["status"] == "active" and account["telegram_user_id"] is None
    task, stop = await run_components(service)
    try:
        await eventually(lambda: _mode(pool, chat, "realtime"), what="the sweep once connected")
        [account] = await rows(pool, "SELECT status, telegram_user_id FROM telegram_accounts WHERE id = %s", a)
        assert account["status"] == "active" and account["telegram_user_id"] is not None
        assert await job_ids(pool, chat) == media and not task.done()
        if error.startswith("FLOOD_WAIT"):   # waited out, not asked again during the wait
            first, again, *_ = h.server.call_times("GetUsersRequest")
            assert again - first >= 2
    finally:
        await stop()


async def test_an_error_while_reconnecting_is_retried(h, pool):
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    history(h.server, chat, 4)
    await h.watch(a, chat)
    service = await h.service(sweep_interval=3600)
    task, stop = await run_components(service)
    try:
        await eventually(lambda: _mode(pool, chat, "realtime"), what="the backfill")
        h.network.set_online(A, False)
        await eventually(lambda: not service.registry.is_connected(a), what="the disconnect")
        h.network.fail_after("GetConfigRequest", "500:INTERNAL", after=0, phone=A, times=2)
        h.network.fail_after("GetConfigRequest", "ConnectionError", after=0, phone=A, times=2)
        missed = h.server.post(chat, h.server.photo(FACES / "eileen_collins_01.jpg"))
        h.network.set_online(A, True)
        await eventually(lambda: _has_job(pool, chat, missed), timeout=10, what="the sweep after reconnecting")
        assert not task.done()
    finally:
        await stop()


@pytest.fixture
async def tg(tmp_path, pool):
    harness = ServerHarness(tmp_path, pool)
    yield harness
    await harness.close()


# --- the uploader and the topics -------------------------------------------------------------

# Telegram's answers (code from Telethon's table, or "code:message" for one it has no class for).
POST_ERRORS = ["CHAT_WRITE_FORBIDDEN", "CHAT_ADMIN_REQUIRED", "500:INTERNAL", "-503:Timeout",
               "400:SOMETHING_NEW", "ConnectionError", "FLOOD_PREMIUM_WAIT_1"]


async def drain(service, pool, *, rounds: int = 40) -> None:
    """Post until the outbox is settled, letting time pass (run_after) between rounds."""
    for _ in range(rounds):
        await service.uploader.post_due(limit=50)
        left = await rows(pool, "SELECT id FROM uploaded_media WHERE status IN ('pending', 'sending')")
        if not left:
            return
        await rows(pool, "UPDATE uploaded_media SET run_after = now() WHERE status = 'pending'")
    raise AssertionError("the outbox never settled")


@pytest.mark.parametrize("method", ["SendMediaRequest", "CreateForumTopicRequest", "GetMessagesRequest",
                                    "SaveFilePartRequest"])
async def test_the_uploader_records_every_telegram_error_and_posts_once_afterwards(tg, pool, method):
    h = tg
    photos = ("barack_obama_01.jpg", "barack_obama_02.jpg", "barack_obama_03.jpg")
    service, chat, messages = await world_with_chat(h, photos=photos)
    person = await make_person(pool, "Barack Obama")
    for message in messages:
        await due(pool, person, await analysed(pool, chat, message))
    for error in POST_ERRORS:
        h.server.fail(method, error)
    seen = set()
    for _ in range(len(POST_ERRORS) + 5):       # each round meets the next error and must survive it
        await service.uploader.post_due(limit=50)
        seen |= {r["last_error"] for r in await outbox(pool) if r["last_error"]}
        await rows(pool, "UPDATE uploaded_media SET run_after = now() WHERE status = 'pending'")
        await rows(pool, "UPDATE telegram_accounts SET flood_wait_until = NULL")
    await drain(service, pool)
    rows_ = await outbox(pool)
    assert {r["status"] for r in rows_} == {"posted"}, [(r["status"], r["last_error"]) for r in rows_]
    [topic] = h.server.live_topics(h.hub)
    posts = h.server.posts(h.hub, topic)
    assert len(posts) == 1 + len(messages)                                 # cover + each photo once
    assert len(h.server.topics(h.hub)) == 1                                # never a second topic
    assert sorted(p.id for p in posts[1:]) == sorted(r["uploaded_message_id"] for r in rows_)
    assert any("SOMETHING_NEW" in e for e in seen), seen                   # recorded on the rows


async def test_the_uploader_keeps_running_through_errors(tg, pool):
    h = tg
    service, chat, messages = await world_with_chat(h, photos=("barack_obama_01.jpg", "barack_obama_02.jpg"))
    person = await make_person(pool, "Barack Obama")
    for message in messages:
        await due(pool, person, await analysed(pool, chat, message))
    for error in ("500:INTERNAL", "CHAT_WRITE_FORBIDDEN", "ConnectionError", "400:SOMETHING_NEW"):
        h.server.fail("SendMediaRequest", error)
    task = asyncio.create_task(service.uploader.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.05)
            assert not task.done(), task.exception() if task.done() else None
            await rows(pool, "UPDATE uploaded_media SET run_after = now() WHERE status = 'pending'")
            if {r["status"] for r in await outbox(pool)} == {"posted"}:
                break
        assert {r["status"] for r in await outbox(pool)} == {"posted"}
        assert len(h.server.posts(h.hub)) == 3
    finally:
        service.uploader.stop()
        await task


async def test_message_id_invalid_from_the_source_does_not_make_a_new_topic(tg, pool):
    h = tg
    """MESSAGE_ID_INVALID while fetching the source message says nothing about the topic."""
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    topic = await service.topics.ensure_topic(person)
    h.server.fail("GetMessagesRequest", "MESSAGE_ID_INVALID")
    await drain(service, pool)
    assert list(h.server.topics(h.hub)) == [topic]
    assert [r["status"] for r in await outbox(pool)] == ["posted"]
    assert len(h.server.posts(h.hub, topic)) == 2


async def test_a_topic_deleted_before_its_cover_was_posted_is_recreated(tg, pool):
    h = tg
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    h.server.fail("SendMediaRequest", "FLOOD_WAIT_30")                # the cover's send: a long wait
    await service.uploader.post_due()
    [old] = h.server.live_topics(h.hub)
    assert h.server.posts(h.hub, old) == []                            # a topic without its cover
    h.server.delete_topic(h.hub, old)                                  # someone deletes it meanwhile
    await rows(pool, "UPDATE telegram_accounts SET flood_wait_until = NULL")
    service.registry.client(service.registry.hub_account_id)._flood_waited_requests.clear()  # 30 s passed
    await drain(service, pool)
    [new] = h.server.live_topics(h.hub)
    assert new != old
    cover, post = h.server.posts(h.hub, new)
    assert cover.text == "Barack Obama" and post.via == "reference"
    assert [r["status"] for r in await outbox(pool)] == ["posted"]


async def topic_created_but_answer_lost(h, pool, label: str):
    """A person with a photo due; Telegram creates its topic, but the answer never arrives."""
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, label)
    await due(pool, person, await analysed(pool, chat, message))
    h.server.fail("CreateForumTopicRequest", "ConnectionError", accept=True)
    await service.uploader.post_due()
    [topic] = h.server.topics(h.hub)
    return service, person, topic


async def test_a_topic_created_before_a_lost_answer_is_found_not_made_twice(tg, pool):
    h = tg
    service, _, topic = await topic_created_but_answer_lost(h, pool, "Barack Obama")
    await drain(service, pool)                     # the retry is refused as a duplicate, then finds it
    assert list(h.server.topics(h.hub)) == [topic]
    cover, post = h.server.posts(h.hub, topic)
    assert cover.text == "Barack Obama" and [r["status"] for r in await outbox(pool)] == ["posted"]


async def test_a_person_renamed_while_its_topic_was_unrecorded_gets_that_topic_renamed(tg, pool, dlib_db):
    import psycopg

    h = tg

    import persons

    service, person, topic = await topic_created_but_answer_lost(h, pool, "Person 1")
    # Meanwhile the operator names the person; with no topic recorded, Telegram has nothing to do.
    with psycopg.connect(dlib_db, autocommit=True) as conn:
        persons.rename_person(conn, person, "Barack Obama")
    await apply_actions(service, pool)
    await drain(service, pool)
    assert list(h.server.topics(h.hub)) == [topic]  # found under the title it was created with
    await apply_actions(service, pool)
    assert h.server.topics(h.hub)[topic]["title"] == "Barack Obama"
    assert len(h.server.posts(h.hub, topic)) == 2 and [r["status"] for r in await outbox(pool)] == ["posted"]


async def apply_actions(service, pool) -> None:
    """Apply the dashboard's recorded requests, as the daemon's action loop does."""
    await service.actions.apply_pending()
    assert {r["status"] for r in await rows(pool, "SELECT status FROM dashboard_actions")} == {"done"}


@pytest.mark.parametrize("error", ["500:INTERNAL", "CHAT_ADMIN_REQUIRED", "ConnectionError", "400:SOMETHING_NEW"])
async def test_a_dashboard_request_that_meets_an_error_is_retried_and_applied(tg, pool, error):
    from psycopg.types.json import Jsonb

    h = tg
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    topic = await service.topics.ensure_topic(person)
    await rows(pool, "INSERT INTO dashboard_actions (action, payload) VALUES ('rename_topic', %s)",
               Jsonb({"person_id": person, "title": "Barack H. Obama"}))
    h.server.fail("EditForumTopicRequest", error, times=3 if error.startswith("500") else 1)   # past _call's tries
    task = asyncio.create_task(service.actions.run())
    try:
        await eventually(lambda: _action_tried(pool), what="the first try")
        assert not task.done()
        service.actions._waiting_until.clear()            # time passes
        service.actions.wake()
        await eventually(lambda: _action_done(pool), what="the request applied")
    finally:
        service.actions.stop()
        await task
    assert h.server.topics(h.hub)[topic]["title"] == "Barack H. Obama"


async def _action_tried(pool):
    [row] = await rows(pool, "SELECT status, error FROM dashboard_actions")
    return row["error"] is not None


async def _action_done(pool):
    [row] = await rows(pool, "SELECT status FROM dashboard_actions")
    return row["status"] == "done"


# --- downloads ----------------------------------------------------------------------------------


class Job:
    def __init__(self, row: dict):
        self.id, self.account_id = row["id"], row["account_id"]
        self.source_chat_id, self.source_message_id = row["source_chat_id"], row["source_message_id"]
        self.media_key = row["media_key"]


async def _job(pool, chat, message) -> Job:
    [row] = await rows(pool, "SELECT * FROM media_jobs WHERE source_chat_id = %s AND source_message_id = %s",
                       chat, message)
    return Job(row)


@pytest.mark.parametrize("error, expected", [
    ("ConnectionError", ConnectionError), ("CHANNEL_PRIVATE", "RPCError"), ("FLOOD_WAIT_30", "FloodWaitError"),
    ("FLOOD_PREMIUM_WAIT_30", "FloodWaitError"),           # given to the queue as a flood wait
])
async def test_a_failed_download_leaves_no_temporary_file_and_the_next_try_works(tg, pool, error, expected):
    from telethon import errors

    h = tg
    service, chat, [message] = await world_with_chat(h, photos=("joe_biden_01.jpg",))
    job = await _job(pool, chat, message)
    h.server.fail("GetFileRequest", error)
    kind = getattr(errors, expected) if isinstance(expected, str) else expected
    with pytest.raises(kind):
        await service.downloader.download(job)
    staging = Path(h.settings.staging_path)
    assert not list(staging.glob("*"))                        # no temporary file left behind
    service.registry.client(job.account_id)._flood_waited_requests.clear()   # the wait is over
    path = await service.downloader.download(job)             # what the queue's retry does
    assert path.read_bytes() == (FACES / "joe_biden_01.jpg").read_bytes()
    assert [p.name for p in staging.glob("*")] == [path.name]


async def test_an_expired_file_reference_is_refetched_for_a_download(tg, pool):
    h = tg
    service, chat, [message] = await world_with_chat(h, photos=("joe_biden_01.jpg",))
    job = await _job(pool, chat, message)
    fetched = len(h.server.requests("GetMessagesRequest"))
    h.server.fail("GetFileRequest", "expire_reference", times=2)   # expires twice in a row
    path = await service.downloader.download(job)
    assert path.read_bytes() == (FACES / "joe_biden_01.jpg").read_bytes()
    assert len(h.server.requests("GetMessagesRequest")) - fetched == 3   # fetched, then twice again
    assert h.server.downloads_total() == 1
    assert [p.name for p in Path(h.settings.staging_path).glob("*")] == [path.name]
