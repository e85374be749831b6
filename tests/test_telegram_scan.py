"""Reading chats through the fake Telegram server beneath the real Telethon client
(tests/telegram_server.py) into the real job queue: history sweeps that resume exactly, live
updates, missed updates, chats added while running, flood waits, oversized media.

Telethon pages history 100 messages a request (`messages.GetHistory`), so "the connection
breaks half-way" is a fault on the second page (`h.network.fail_after`)."""

from __future__ import annotations

import asyncio

import pytest
from psycopg.rows import dict_row

from media_fixtures import faces_dir
from media_kinds import classify
from server_harness import eventually, run_components

FACES = faces_dir()
A, B = "+15550001", "+15550002"


async def rows(pool, query: str, *params) -> list[dict]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def checkpoint(pool, chat_id: int) -> dict:
    [row] = await rows(pool, "SELECT * FROM scan_checkpoints WHERE chat_id = %s", chat_id)
    return row


async def _deferred(pool, chat_id: int) -> dict | None:
    cp = await checkpoint(pool, chat_id)
    return cp if cp["deferred_until"] is not None else None


async def job_ids(pool, chat_id: int) -> list[int]:
    found = await rows(pool, "SELECT source_message_id FROM media_jobs WHERE source_chat_id = %s "
                             "ORDER BY source_message_id", chat_id)
    return [r["source_message_id"] for r in found]


def history(server, chat: int, n: int) -> list[int]:
    """`n` old messages, every other one a photo; returns the ids of those with media."""
    photo = server.photo(FACES / "joe_biden_01.jpg")
    ids = server.history(chat, [(photo if i % 2 else None, f"message {i}") for i in range(n)])
    return [i for k, i in enumerate(ids) if k % 2]


class Claimed(bytes):
    """A file's bytes that claim to be `size` long: the size Telegram reports is what a test of
    the size limit needs, not 300 MB in memory."""

    def __new__(cls, data: bytes, size: int):
        made = super().__new__(cls, data)
        made.size = size
        return made

    def __len__(self) -> int:
        return self.size


async def test_backfill_resumes_exactly_after_an_interruption(h, pool):
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    media = history(h.server, chat, 250)
    await h.watch(a, chat)
    service = await h.service()

    # The connection drops on the second page (after 100 messages): what was read is kept.
    h.network.fail_after("GetHistoryRequest", "ConnectionError", after=1)
    result = await service.scanner.sweep_chat(a, chat)
    assert result.stopped_because == "offline"
    cp = await checkpoint(pool, chat)
    assert (cp["last_processed_message_id"], cp["processed_messages"], cp["scan_mode"]) == (100, 100, "backfill")
    assert await job_ids(pool, chat) == [i for i in media if i <= 100]

    # Killed while waiting for a page (no chance to write anything): nothing more is counted.
    h.server.fail("GetHistoryRequest", "hang")
    task = asyncio.create_task(service.scanner.sweep_chat(a, chat))
    await eventually(lambda: h.server.faults == [], what="the sweep to wait for its page")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cp = await checkpoint(pool, chat)
    assert (cp["last_processed_message_id"], cp["processed_messages"]) == (100, 100)

    # The next sweep starts right after message 100 and finishes the backfill.
    before = len(h.network.requests("GetHistoryRequest"))
    result = await service.scanner.sweep_chat(a, chat)
    assert result.reached_newest and result.messages == 150
    first_page = h.network.requests("GetHistoryRequest")[before]
    assert first_page.offset_id == 101 or first_page.min_id == 100, first_page   # from 100 on, not from 0
    cp = await checkpoint(pool, chat)
    assert (cp["last_processed_message_id"], cp["processed_messages"], cp["total_messages"]) == (250, 250, 250)
    assert cp["scan_mode"] == "realtime"
    assert await job_ids(pool, chat) == media          # every photo once, nothing twice
    jobs = await rows(pool, "SELECT DISTINCT status, media_type, account_id FROM media_jobs")
    assert jobs == [{"status": "queued", "media_type": "photo", "account_id": a}]


async def test_a_message_arriving_during_backfill_is_queued_once(h, pool):
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    media = history(h.server, chat, 300)
    await h.watch(a, chat)
    service = await h.service()
    live = asyncio.create_task(service.realtime.run())
    await eventually(lambda: service.realtime.watches(a, chat), what="the live handler to watch the chat")

    h.network.delay("GetHistoryRequest", 1.5, times=None)            # every page of the backfill is slow
    sweep = asyncio.create_task(service.scanner.sweep_chat(a, chat))
    await asyncio.sleep(0.3)
    new = h.server.post(chat, h.server.photo(FACES / "kamala_harris_01.jpg"), "just now")
    # Queued at once (`received` counts a message before its job is written: wait for the job),
    # while the sweep is still held up half-way.
    await eventually(lambda: _has_job(pool, chat, new), what="the live message's job")
    assert service.realtime.received == 1
    assert not sweep.done()

    result = await sweep
    service.realtime.stop()
    await live
    assert result.reached_newest and result.cursor == new
    assert await job_ids(pool, chat) == media + [new]   # once: the sweep's insert was a no-op
    assert result.new_jobs == len(media)
    cp = await checkpoint(pool, chat)
    assert cp["processed_messages"] == 301 and cp["scan_mode"] == "realtime"


async def test_a_live_update_that_never_arrives_is_caught_by_the_next_sweep(h, pool):
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    history(h.server, chat, 10)
    await h.watch(a, chat)
    service = await h.service(sweep_interval=0.5)
    _, stop = await run_components(service)
    try:
        await eventually(lambda: checkpoint(pool, chat), what="the checkpoint")
        await eventually(lambda: _mode(pool, chat, "realtime"), what="the backfill")
        lost = h.server.post(chat, h.server.photo(FACES / "eileen_collins_01.jpg"), deliver=False)
        await eventually(lambda: _has_job(pool, chat, lost), timeout=5, what="the next sweep")
        assert service.realtime.received == 0            # it really came through the sweep
    finally:
        await stop()


async def test_after_a_reconnect_the_chats_are_swept_for_what_was_missed(h, pool):
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    history(h.server, chat, 10)
    await h.watch(a, chat)
    service = await h.service(sweep_interval=3600)       # only a reconnect can trigger a sweep
    _, stop = await run_components(service)
    try:
        await eventually(lambda: _mode(pool, chat, "realtime"), what="the backfill")
        h.network.set_online(A, False)
        await eventually(lambda: not service.registry.is_connected(a), what="the disconnect")
        missed = h.server.post(chat, h.server.photo(FACES / "eileen_collins_01.jpg"))   # lost: offline
        h.network.set_online(A, True)
        await eventually(lambda: _has_job(pool, chat, missed), timeout=5, what="the sweep after reconnecting")
        assert service.registry.generation(a) == 2 and service.realtime.received == 0
    finally:
        await stop()


async def test_a_chat_added_while_running_is_read_and_followed(h, pool, dlib_db):
    import psycopg

    import add_chat

    a = await h.add_account(A)
    family = h.server.add_chat("Family photos", username="family_photos", kind="supergroup")
    media = history(h.server, family, 20)
    service = await h.service(sweep_interval=3600)
    _, stop = await run_components(service)
    try:
        with psycopg.connect(dlib_db) as conn:                # what add_chat.py and the dashboard do
            add_chat.request_chat(conn, "https://t.me/family_photos", account_id=a)
        cp = await eventually(lambda: _checkpoint_or_none(pool, family), what="the chat to be added")
        assert (cp["chat_title"], cp["chat_username"], cp["chat_type"]) == ("Family photos", "family_photos", "supergroup")
        assert A in h.server.chats[family].members           # joined, to get its live updates
        await eventually(lambda: _mode(pool, family, "realtime"), what="its backfill")
        assert await job_ids(pool, family) == media
        live = h.server.post(family, h.server.photo(FACES / "kamala_harris_01.jpg"))
        await eventually(lambda: _has_job(pool, family, live), timeout=3, what="the live message")
        assert service.realtime.received == 1
        [action] = await rows(pool, "SELECT action, status, error FROM dashboard_actions")
        assert action == {"action": "add_chat", "status": "done", "error": None}
    finally:
        await stop()


async def test_the_hub_is_never_watched_and_unknown_chats_are_ignored(h, pool):
    a = await h.add_account(A)
    other = h.server.add_chat("Not watched", members=[A])
    service = await h.service()
    await service.realtime.refresh()
    service.realtime.attach()
    live = asyncio.create_task(service.realtime.run())
    h.server.post(h.hub, h.server.photo(FACES / "kamala_harris_01.jpg"))
    h.server.post(other, h.server.photo(FACES / "kamala_harris_01.jpg"))
    await asyncio.sleep(0.4)
    service.realtime.stop()
    await live
    assert await rows(pool, "SELECT id FROM media_jobs") == []
    # Even recorded by mistake, the hub is not swept.
    await h.watch(a, h.hub)
    assert await service.scanner.due_chats(a) == []


async def test_a_long_flood_wait_pauses_only_that_account_and_the_work_completes(h, pool):
    h.with_settings(flood_sleep_threshold=1)
    a = await h.add_account(A)
    b = await h.add_account(B)
    chat_a = h.server.add_chat("A's chat", members=[A])
    chat_b = h.server.add_chat("B's chat", members=[B])
    media_a = history(h.server, chat_a, 150)
    media_b = history(h.server, chat_b, 150)
    await h.watch(a, chat_a)
    await h.watch(b, chat_b)
    h.network.fail_after("GetHistoryRequest", "FLOOD_WAIT_3", after=1, phone=A)    # above the threshold
    h.network.fail_after("GetHistoryRequest", "FLOOD_WAIT_1", after=1, phone=B)    # slept through
    service = await h.service()
    _, stop = await run_components(service)
    try:
        paused = await eventually(lambda: _account(pool, a, "flood_wait_until IS NOT NULL"), what="A's pause")
        # The chat's deferral is written just after the account's pause, in its own transaction.
        cp = await eventually(lambda: _deferred(pool, chat_a), what="A's chat deferred")
        assert cp["deferred_until"] is not None and cp["last_processed_message_id"] == 100
        assert "flood wait of 3 s" in cp["last_error"]
        await eventually(lambda: _mode(pool, chat_b, "realtime"), what="B's backfill")
        assert (await checkpoint(pool, chat_a))["scan_mode"] == "backfill"      # A still waits
        [b_row] = await rows(pool, "SELECT flood_wait_until FROM telegram_accounts WHERE id = %s", b)
        assert b_row["flood_wait_until"] is None                               # B never paused
        assert "flood wait" in paused["last_error"]
        await eventually(lambda: _mode(pool, chat_a, "realtime"), timeout=10, what="A's backfill after the wait")
        assert await job_ids(pool, chat_a) == media_a and await job_ids(pool, chat_b) == media_b
    finally:
        await stop()


async def test_oversized_media_are_skipped_and_recorded_not_downloaded(h, pool):
    h.with_settings(max_media_size_mb=50)
    a = await h.add_account(A)
    chat = h.server.add_chat("Videos", members=[A])
    clip = FACES / "barack_obama_01.jpg"          # the bytes do not matter: the size is what Telegram reports
    big = h.server.video(clip)
    small = h.server.video(clip)
    h.server.media[big].data = Claimed(h.server.media[big].data, 300 * 2**20)
    h.server.media[small].data = Claimed(h.server.media[small].data, 3 * 2**20)
    first = h.server.post(chat, big, deliver=False)
    second = h.server.post(chat, small, deliver=False)
    await h.watch(a, chat)
    service = await h.service()
    live = asyncio.create_task(service.realtime.run())
    await service.scanner.sweep_chat(a, chat)
    await eventually(lambda: service.realtime.watches(a, chat), what="the live handler")
    third = h.server.post(chat, big)                               # a live one, also too big
    await eventually(lambda: _has_job(pool, chat, third), what="the live job")
    await service.scanner.sweep_chat(a, chat)                     # sees it again: not counted twice
    service.realtime.stop()
    await live

    jobs = {r["source_message_id"]: r for r in await rows(pool, "SELECT * FROM media_jobs")}
    assert {i: jobs[i]["status"] for i in jobs} == {first: "skipped", second: "queued", third: "skipped"}
    assert "MAX_MEDIA_SIZE_MB" in jobs[first]["last_error"] and jobs[first]["finished_at"] is not None
    assert (await checkpoint(pool, chat))["skipped_media"] == 2
    assert h.server.downloads_total() == 0 and h.server.requests("GetFileRequest") == []


async def test_media_classification_of_messages_read_through_telethon(tmp_path):
    from telethon import types

    from telegram_server import TelegramServer

    server = TelegramServer()
    server.add_account(A)
    chat = server.add_chat("c", members=[A])
    photo = FACES / "barack_obama_01.jpg"
    gif = server._media("document", photo.read_bytes(), mime="video/mp4", attributes=[
        types.DocumentAttributeAnimated(), types.DocumentAttributeVideo(duration=1, w=320, h=240)])
    made = {
        "photo": server.photo(photo), "image": server.image_document(FACES / "noface_cat.png"),
        "video": server.video(photo), "round": server.video(photo, round=True), "gif": gif,
        None: server._media("document", photo.read_bytes(), mime="application/pdf"),
    }
    ids = server.history(chat, [(key, "") for key in made.values()] + [(None, "hello")])
    client = server.client(A, tmp_path / "a.session")
    await client.connect()
    try:
        await client.get_dialogs()                               # the chat's access hash, as an account learns it
        read = {m.id: m async for m in client.iter_messages(chat, min_id=0, reverse=True)}   # as the sweeps read
    finally:
        await client.disconnect()
    for (kind, key), message_id in zip(made.items(), ids):
        info = classify(read[message_id])
        assert (info.media_type if info else None) == kind
        if info:
            assert info.media_key == key and info.file_size > 0
    assert classify(read[ids[-1]]) is None                       # a text
    assert chat < -1000000000000


# --- helpers ----------------------------------------------------------------------------------


async def _checkpoint_or_none(pool, chat_id):
    found = await rows(pool, "SELECT * FROM scan_checkpoints WHERE chat_id = %s", chat_id)
    return found[0] if found else None


async def _mode(pool, chat_id, mode) -> bool:
    found = await rows(pool, "SELECT scan_mode FROM scan_checkpoints WHERE chat_id = %s", chat_id)
    return bool(found) and found[0]["scan_mode"] == mode


async def _has_job(pool, chat_id, message_id) -> bool:
    return bool(await rows(pool, "SELECT 1 FROM media_jobs WHERE source_chat_id = %s AND source_message_id = %s",
                           chat_id, message_id))


async def _account(pool, account_id, condition_sql: str):
    found = await rows(pool, f"SELECT * FROM telegram_accounts WHERE id = %s AND {condition_sql}", account_id)
    return found[0] if found else None
