"""Reading chats through the fake Telegram (tests/fake_telegram.py) into the real job queue:
history sweeps that resume exactly, live updates, missed updates, chats added while running,
flood waits, oversized media."""

from __future__ import annotations

import asyncio

import pytest
from psycopg.rows import dict_row

from media_fixtures import faces_dir
from fake_telegram import eventually, run_components
from scanners import classify

FACES = faces_dir()
A, B = "+15550001", "+15550002"


async def rows(pool, query: str, *params) -> list[dict]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def checkpoint(pool, chat_id: int) -> dict:
    [row] = await rows(pool, "SELECT * FROM scan_checkpoints WHERE chat_id = %s", chat_id)
    return row


async def job_ids(pool, chat_id: int) -> list[int]:
    found = await rows(pool, "SELECT source_message_id FROM media_jobs WHERE source_chat_id = %s "
                             "ORDER BY source_message_id", chat_id)
    return [r["source_message_id"] for r in found]


def history(world, chat: int, n: int) -> list[int]:
    """`n` old messages, every other one a photo; returns the ids of those with media."""
    photo = world.photo(FACES / "joe_biden_01.jpg")
    ids = world.post_many(chat, [(photo if i % 2 else None, f"message {i}") for i in range(n)])
    return [i for k, i in enumerate(ids) if k % 2]


async def test_backfill_resumes_exactly_after_an_interruption(h, pool):
    a = await h.add_account(A)
    chat = h.world.add_chat("Family photos", members=[A])
    media = history(h.world, chat, 250)
    await h.watch(a, chat)
    service = await h.service()

    # The connection drops after 130 messages: everything read so far is kept.
    h.world.fail("iter_messages", "ConnectionError", after=130)
    result = await service.scanner.sweep_chat(a, chat)
    assert result.stopped_because == "offline"
    cp = await checkpoint(pool, chat)
    assert (cp["last_processed_message_id"], cp["processed_messages"], cp["scan_mode"]) == (130, 130, "backfill")
    assert await job_ids(pool, chat) == [i for i in media if i <= 130]

    # Killed in the middle of a batch (no chance to write anything): the batch is not counted.
    h.world.fail("iter_messages", "hang", after=40)
    task = asyncio.create_task(service.scanner.sweep_chat(a, chat))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cp = await checkpoint(pool, chat)
    assert (cp["last_processed_message_id"], cp["processed_messages"]) == (130, 130)

    # The next sweep starts right after message 130 and finishes the backfill.
    result = await service.scanner.sweep_chat(a, chat)
    assert result.reached_newest and result.messages == 120
    reads = [c for c in h.world.calls("iter_messages")]
    assert len(reads) == 3
    cp = await checkpoint(pool, chat)
    assert (cp["last_processed_message_id"], cp["processed_messages"], cp["total_messages"]) == (250, 250, 250)
    assert cp["scan_mode"] == "realtime"
    assert await job_ids(pool, chat) == media          # every photo once, nothing twice
    jobs = await rows(pool, "SELECT DISTINCT status, media_type, account_id FROM media_jobs")
    assert jobs == [{"status": "queued", "media_type": "photo", "account_id": a}]


async def test_a_message_arriving_during_backfill_is_queued_once(h, pool):
    a = await h.add_account(A)
    chat = h.world.add_chat("Family photos", members=[A])
    media = history(h.world, chat, 300)
    await h.watch(a, chat)
    service = await h.service()
    live = asyncio.create_task(service.realtime.run())
    await eventually(lambda: service.realtime.watches(a, chat), what="the live handler to watch the chat")

    h.world.fail("iter_messages", "delay", seconds=1.0, after=150)   # the backfill is half-way
    sweep = asyncio.create_task(service.scanner.sweep_chat(a, chat))
    await asyncio.sleep(0.3)
    new = h.world.post(chat, h.world.photo(FACES / "kamala_harris_01.jpg"), "just now")
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
    chat = h.world.add_chat("Family photos", members=[A])
    history(h.world, chat, 10)
    await h.watch(a, chat)
    service = await h.service(sweep_interval=0.5)
    _, stop = await run_components(service)
    try:
        await eventually(lambda: checkpoint(pool, chat), what="the checkpoint")
        await eventually(lambda: _mode(pool, chat, "realtime"), what="the backfill")
        lost = h.world.post(chat, h.world.photo(FACES / "eileen_collins_01.jpg"), deliver=False)
        await eventually(lambda: _has_job(pool, chat, lost), timeout=5, what="the next sweep")
        assert service.realtime.received == 0            # it really came through the sweep
    finally:
        await stop()


async def test_after_a_reconnect_the_chats_are_swept_for_what_was_missed(h, pool):
    a = await h.add_account(A)
    chat = h.world.add_chat("Family photos", members=[A])
    history(h.world, chat, 10)
    await h.watch(a, chat)
    service = await h.service(sweep_interval=3600)       # only a reconnect can trigger a sweep
    _, stop = await run_components(service)
    try:
        await eventually(lambda: _mode(pool, chat, "realtime"), what="the backfill")
        h.world.set_online(A, False)
        await eventually(lambda: not service.registry.is_connected(a), what="the disconnect")
        missed = h.world.post(chat, h.world.photo(FACES / "eileen_collins_01.jpg"))   # lost: offline
        h.world.set_online(A, True)
        await eventually(lambda: _has_job(pool, chat, missed), timeout=5, what="the sweep after reconnecting")
        assert service.registry.generation(a) == 2 and service.realtime.received == 0
    finally:
        await stop()


async def test_a_chat_added_while_running_is_read_and_followed(h, pool, dlib_db):
    import psycopg

    import add_chat

    a = await h.add_account(A)
    family = h.world.add_chat("Family photos", username="family_photos", kind="supergroup")
    media = history(h.world, family, 20)
    service = await h.service(sweep_interval=3600)
    _, stop = await run_components(service)
    try:
        with psycopg.connect(dlib_db) as conn:                # what add_chat.py and the dashboard do
            add_chat.request_chat(conn, "https://t.me/family_photos", account_id=a)
        cp = await eventually(lambda: _checkpoint_or_none(pool, family), what="the chat to be added")
        assert (cp["chat_title"], cp["chat_username"], cp["chat_type"]) == ("Family photos", "family_photos", "supergroup")
        assert A in h.world.chat(family)["members"]           # joined, to get its live updates
        await eventually(lambda: _mode(pool, family, "realtime"), what="its backfill")
        assert await job_ids(pool, family) == media
        live = h.world.post(family, h.world.photo(FACES / "kamala_harris_01.jpg"))
        await eventually(lambda: _has_job(pool, family, live), timeout=3, what="the live message")
        assert service.realtime.received == 1
        [action] = await rows(pool, "SELECT action, status, error FROM dashboard_actions")
        assert action == {"action": "add_chat", "status": "done", "error": None}
    finally:
        await stop()


async def test_the_hub_is_never_watched_and_unknown_chats_are_ignored(h, pool):
    a = await h.add_account(A)
    other = h.world.add_chat("Not watched", members=[A])
    service = await h.service()
    await service.realtime.refresh()
    service.realtime.attach()
    live = asyncio.create_task(service.realtime.run())
    h.world.post(h.hub, h.world.photo(FACES / "kamala_harris_01.jpg"))
    h.world.post(other, h.world.photo(FACES / "kamala_harris_01.jpg"))
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
    chat_a = h.world.add_chat("A's chat", members=[A])
    chat_b = h.world.add_chat("B's chat", members=[B])
    media_a = history(h.world, chat_a, 150)
    media_b = history(h.world, chat_b, 150)
    await h.watch(a, chat_a)
    await h.watch(b, chat_b)
    h.world.fail("iter_messages", "FloodWaitError", seconds=3, after=60, phone=A)    # above the threshold
    h.world.fail("iter_messages", "FloodWaitError", seconds=1, after=30, phone=B)    # slept through
    service = await h.service()
    _, stop = await run_components(service)
    try:
        paused = await eventually(lambda: _account(pool, a, "flood_wait_until IS NOT NULL"), what="A's pause")
        cp = await checkpoint(pool, chat_a)
        assert cp["deferred_until"] is not None and cp["last_processed_message_id"] == 60
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
    chat = h.world.add_chat("Videos", members=[A])
    clip = FACES / "barack_obama_01.jpg"          # the bytes do not matter: the size is what Telegram reports
    big = h.world.video(clip, size=300 * 2**20)
    small = h.world.video(clip, size=3 * 2**20)
    first = h.world.post(chat, big, deliver=False)
    second = h.world.post(chat, small, deliver=False)
    await h.watch(a, chat)
    service = await h.service()
    live = asyncio.create_task(service.realtime.run())
    await service.scanner.sweep_chat(a, chat)
    await eventually(lambda: service.realtime.watches(a, chat), what="the live handler")
    third = h.world.post(chat, big)                               # a live one, also too big
    await eventually(lambda: _has_job(pool, chat, third), what="the live job")
    await service.scanner.sweep_chat(a, chat)                     # sees it again: not counted twice
    service.realtime.stop()
    await live

    jobs = {r["source_message_id"]: r for r in await rows(pool, "SELECT * FROM media_jobs")}
    assert {i: jobs[i]["status"] for i in jobs} == {first: "skipped", second: "queued", third: "skipped"}
    assert "MAX_MEDIA_SIZE_MB" in jobs[first]["last_error"] and jobs[first]["finished_at"] is not None
    assert (await checkpoint(pool, chat))["skipped_media"] == 2
    assert h.world.downloads() == 0


def test_media_classification_uses_telethons_types(tmp_path):
    from telethon import types

    from fake_telegram import FakeTelegramClient, FakeWorld

    world = FakeWorld.create(tmp_path / "w.json")
    world.add_account(A)
    chat = world.add_chat("c", members=[A])
    client = FakeTelegramClient(world, A)
    photo = FACES / "barack_obama_01.jpg"
    made = {
        "photo": world.photo(photo), "image": world.image_document(FACES / "noface_cat.png"),
        "video": world.video(photo), "round": world.video(photo, round=True), "gif": world.gif(photo),
        None: world.document(photo, mime="application/pdf"),
    }
    state = world.read()
    for kind, key in made.items():
        message = types.Message(id=1, peer_id=types.PeerChannel(1), date=None, message="",
                                media=client._media_object(state, key))
        info = classify(message)
        assert (info.media_type if info else None) == kind
        if info:
            assert info.media_key == key and info.file_size > 0
    text = types.Message(id=1, peer_id=types.PeerChannel(1), date=None, message="hello")
    assert classify(text) is None
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
