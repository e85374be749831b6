"""The upload outbox into the hub of the fake Telegram server, through real Telethon clients
(tests/telegram_server.py): how posts are made, their captions, pacing, exactly-once across
crashes, flood waits, protected chats, hidden persons, deleted topics."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psycopg.rows import dict_row

from media_fixtures import faces_dir
from server_harness import ServerHarness, eventually
from media_uploader import MediaUploader, Pacer
from post_sender import NO_LINK, message_link
from topics import TopicManager

FACES = faces_dir()
A, B = "+15550001", "+15550002"


class FakeClock:
    """Monotonic time that only moves when someone sleeps: a burst of minutes runs in milliseconds."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


async def rows(pool, query: str, *params) -> list[dict]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall() if cur.description else []


def crop_jpeg(name: str = "barack_obama_01.jpg") -> bytes:
    with Image.open(FACES / name) as image:
        out = io.BytesIO()
        image.convert("RGB").resize((96, 96)).save(out, "JPEG")
    return out.getvalue()


async def make_person(pool, label: str, *, chat_id: int = -1001, message_id: int = 1) -> int:
    """A person with one face (its cover), as the matcher leaves it."""
    [person] = await rows(pool, "INSERT INTO telegram_topics (label) VALUES (%s) RETURNING id", label)
    embedding = np.random.default_rng(len(label)).random(128).astype(np.float32)
    [face] = await rows(pool, """INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id,
                                   quality_score, crop_jpeg, state, assigned_by)
                                 VALUES (%s, %s, %s, %s, 0.9, %s, 'assigned', 'seed') RETURNING id""",
                        person["id"], embedding, chat_id, message_id, crop_jpeg())
    await rows(pool, "UPDATE telegram_topics SET cover_face_id = %s WHERE id = %s", face["id"], person["id"])
    return person["id"]


async def analysed(pool, chat_id: int, message_id: int) -> int:
    """The media item of a scanned message, analysed (what the worker leaves behind)."""
    [job] = await rows(pool, "SELECT * FROM media_jobs WHERE source_chat_id = %s AND source_message_id = %s",
                       chat_id, message_id)
    [item] = await rows(pool, """INSERT INTO media_items (media_key, media_type, mime_type, file_size, source_chat_id,
                                   source_message_id, message_date, status, face_count, analysed_at)
                                 VALUES (%s, %s, %s, %s, %s, %s, %s, 'analysed', 1, now())
                                 ON CONFLICT (media_key) DO UPDATE SET status = 'analysed'
                                 RETURNING id""",
                        job["media_key"], job["media_type"], job["mime_type"], job["file_size"], chat_id,
                        message_id, job["message_date"])
    await rows(pool, "UPDATE media_jobs SET status = 'done', media_item_id = %s, finished_at = now() "
                     "WHERE media_key = %s", item["id"], job["media_key"])
    return item["id"]


async def due(pool, person: int, item: int) -> int:
    """A due post (what IdentityMatcher.assign inserts)."""
    [row] = await rows(pool, """INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, source_message_id,
                                  status, random_id)
                                SELECT %s, m.id, m.source_chat_id, m.source_message_id, 'pending',
                                       (random() * 9.0e18)::bigint
                                FROM media_items m WHERE m.id = %s RETURNING id""", person, item)
    return row["id"]


async def outbox(pool) -> list[dict]:
    return await rows(pool, "SELECT * FROM uploaded_media ORDER BY id")


@pytest.fixture
async def h(tmp_path, pool):
    """The fake Telegram server and the daemon's Telegram side on `pool` (this module's tests)."""
    harness = ServerHarness(tmp_path, pool)
    yield harness
    await harness.close()


async def world_with_chat(h, *, kind="supergroup", username=None, noforwards=False, hub_reads=True,
                          photos=("barack_obama_01.jpg",)):
    """Account A (the hub account) and, unless `hub_reads` is False, its chat; else account B's.
    `h`: a ServerHarness."""
    a = await h.add_account(A)
    reader, phone = a, A
    if not hub_reads:
        reader, phone = await h.add_account(B, hub_member=False), B
    world = h.server
    chat = world.add_chat("Family photos", kind=kind, username=username, noforwards=noforwards, members=[phone])
    ids = [world.post(chat, world.photo(FACES / name), deliver=False) for name in photos]
    ids = [i[phone] if isinstance(i, dict) else i for i in ids]   # basic groups: the reader's ids
    await h.watch(reader, chat)
    service = await h.service()
    await service.scanner.sweep_chat(reader, chat)
    return service, chat, ids


async def test_posts_go_into_a_new_topic_after_the_cover_by_reference(h, pool):
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))

    assert await service.uploader.post_due() == 1
    [row] = await outbox(pool)
    topics = h.server.live_topics(h.hub)
    [(topic_id, topic)] = topics.items()
    assert topic["title"] == "Barack Obama"
    cover, post = h.server.posts(h.hub, topic_id)
    assert cover.via == "upload" and cover.text == "Barack Obama"                # the face crop first
    assert post.via == "reference"                                               # no re-upload
    assert post.media == h.server.chats[chat].messages[message].media            # the very photo
    assert row["status"] == "posted" and row["uploaded_message_id"] == post.id
    [p] = await rows(pool, "SELECT topic_id, topic_title, cover_message_id, hub_chat_id, message_count "
                           "FROM telegram_topics WHERE id = %s", person)
    assert p == {"topic_id": topic_id, "topic_title": "Barack Obama", "cover_message_id": cover.id,
                 "hub_chat_id": h.hub, "message_count": 1}
    assert h.server.downloads_total() == 0


@pytest.mark.parametrize("kind, username, expected", [
    ("channel", "news_pics", "https://t.me/news_pics/{id}"),
    ("supergroup", None, "https://t.me/c/{raw}/{id}"),
    ("group", None, "message {id} " + NO_LINK),
])
async def test_captions_link_to_the_source_message(h, pool, kind, username, expected):
    service, chat, [message] = await world_with_chat(h, kind=kind, username=username)
    person = await make_person(pool, "Someone")
    await due(pool, person, await analysed(pool, chat, message))
    await service.uploader.post_due()
    [_, post] = h.server.posts(h.hub)
    raw = h.server.chats[chat].raw_id
    title, link, date = post.text.split("\n")
    assert title == "Family photos"
    assert link == expected.format(id=message, raw=raw)
    assert date.endswith(" UTC") and date[:4].isdigit()


def test_message_links():
    assert message_link(-1001234567890, 5, username="pics") == "https://t.me/pics/5"
    assert message_link(-1001234567890, 5) == "https://t.me/c/1234567890/5"
    assert message_link(-123456, 5) is None                     # basic group
    assert message_link(777000, 5, username="someone") is None  # private chat


async def test_media_the_hub_account_cannot_see_is_uploaded_from_the_reading_account(h, pool):
    service, chat, [message] = await world_with_chat(h, hub_reads=False)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    await service.uploader.post_due()
    [_, post] = h.server.posts(h.hub)
    assert post.via == "upload" and post.posted_by == A
    original = h.server.media[h.server.chats[chat].messages[message].media]
    assert h.server.media[post.media].sha256 == original.sha256
    assert h.server.downloads_total() == 1 and set(h.server.callers("GetFileRequest")) == {B}
    assert not list(Path(h.settings.staging_path).glob("*"))             # the temporary file is gone


async def test_protected_chats_are_posted_only_when_allowed(h, pool):
    service, chat, [first, second] = await world_with_chat(
        h, noforwards=True, photos=("barack_obama_01.jpg", "barack_obama_02.jpg"))
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, first))
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "cancelled" and "REPOST_PROTECTED_CHATS" in row["last_error"]
    assert h.server.topics(h.hub) == {}                                   # not even a topic

    h.with_settings(repost_protected_chats=True)
    service.uploader.settings = service.topics.settings = h.settings
    await due(pool, person, await analysed(pool, chat, second))
    await service.uploader.post_due()
    posts = h.server.posts(h.hub)
    assert [p.via for p in posts] == ["upload", "upload"]                 # cover, then the photo: uploaded
    assert h.server.media[posts[1].media].sha256 == h.server.media[h.server.chats[chat].messages[second].media].sha256


async def test_hidden_persons_get_no_posts(h, pool):
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Hidden")
    await due(pool, person, await analysed(pool, chat, message))
    await rows(pool, "UPDATE telegram_topics SET hidden = TRUE WHERE id = %s", person)
    assert await service.uploader.post_due() == 0
    [row] = await outbox(pool)
    assert (row["status"], row["last_error"]) == ("cancelled", "person hidden")
    assert h.server.topics(h.hub) == {}


async def test_pacing_holds_under_a_burst(tmp_path, pool):
    clock = FakeClock()
    h = ServerHarness(tmp_path, pool, clock=clock.now, hub_posts_per_minute=20)
    try:
        a = await h.add_account(A)
        chat = h.server.add_chat("Burst", members=[A])
        photo = h.server.photo(FACES / "kamala_harris_01.jpg")
        messages = [h.server.post(chat, h.server.photo(FACES / "kamala_harris_01.jpg") if i else photo, deliver=False)
                    for i in range(30)]
        await h.watch(a, chat)
        service = await h.service()
        service.topics.pacer = Pacer(20, clock=clock.now, sleep=clock.sleep)
        await service.scanner.sweep_chat(a, chat)
        person = await make_person(pool, "Kamala Harris")
        for message in messages:
            await due(pool, person, await analysed(pool, chat, message))
        started = asyncio.get_running_loop().time()
        while await service.uploader.post_due(limit=50):
            pass
        took = asyncio.get_running_loop().time() - started
        posts = h.server.posts(h.hub)
        writes = sorted(h.server.call_times("SendMediaRequest", "CreateForumTopicRequest"))
        assert len(posts) == 31 and len(writes) == 32             # 30 photos + cover (+ the topic)
        for i, t in enumerate(writes):                             # never more than 20 in any 60 s
            assert sum(1 for u in writes[i:] if u < t + 60) <= 20
        assert writes[-1] - writes[0] >= 31 * 3 - 0.01             # evenly spaced: 3 s apart
        assert took < 10
    finally:
        await h.close()


async def test_a_post_is_made_once_even_if_the_process_dies_after_telegram_accepted_it(h, pool):
    service, chat, [first, second] = await world_with_chat(h, photos=("barack_obama_01.jpg", "barack_obama_02.jpg"))
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, first))
    await service.uploader.post_due()              # topic + cover + first post

    # Telegram accepts the post, then the answer is lost.
    up = await due(pool, person, await analysed(pool, chat, second))
    h.server.fail("SendMediaRequest", "ConnectionError", accept=True)
    await service.uploader.post_due()
    [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
    assert row["status"] == "pending" and row["uploaded_message_id"] is None
    await rows(pool, "UPDATE uploaded_media SET run_after = now() WHERE id = %s", up)
    await service.uploader.post_due()              # sent again with the same random_id: refused, found
    [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
    posts = h.server.posts(h.hub)
    assert len(posts) == 3 and row["status"] == "posted" and row["uploaded_message_id"] == posts[-1].id
    assert "already posted" in row["last_error"]


async def test_a_post_left_sending_by_a_killed_process_is_not_posted_twice(h, pool):
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    up = await due(pool, person, await analysed(pool, chat, message))
    await service.topics.ensure_topic(person)               # topic and cover
    h.server.fail("SendMediaRequest", "hang", accept=True)   # Telegram has it; the process never hears back
    task = asyncio.create_task(service.uploader.post_due())
    await eventually(lambda: len(h.server.posts(h.hub)) == 2, what="Telegram to accept the post")
    task.cancel()                                             # killed: no chance to record anything
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
    assert row["status"] == "sending"

    # Another process starts; the dead one's lease runs out.
    other = MediaUploader(service.registry, pool, h.settings, TopicManager(service.registry, pool, h.settings))
    assert await other.post_due() == 0                       # still leased: not touched
    await rows(pool, "UPDATE uploaded_media SET run_after = now() WHERE id = %s", up)
    assert await other.post_due() == 1
    [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
    posts = h.server.posts(h.hub)
    assert len(posts) == 2 and row["status"] == "posted" and row["uploaded_message_id"] == posts[1].id


async def test_a_long_flood_wait_pauses_the_hub_account_and_posting_resumes(h, pool):
    service, chat, [first, second] = await world_with_chat(h, photos=("barack_obama_01.jpg", "barack_obama_02.jpg"))
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, first))
    await due(pool, person, await analysed(pool, chat, second))
    h.server.fail("SendMediaRequest", "FLOOD_WAIT_2")               # the cover's send
    task = asyncio.create_task(service.uploader.run())
    try:
        [account] = await eventually(lambda: rows(pool, "SELECT * FROM telegram_accounts WHERE flood_wait_until > now()"),
                                     what="the hub account's pause")
        assert "flood wait of 2 s" in account["last_error"]
        await eventually(lambda: _all(pool, "pending"), what="the posts handed back")
        assert all("flood wait" in r["last_error"] for r in await outbox(pool))
        await eventually(lambda: _all_posted(pool), timeout=10, what="the posts after the wait")
        assert len(h.server.posts(h.hub)) == 3
    finally:
        service.uploader.stop()
        await task


async def test_an_expired_file_reference_is_fetched_again(h, pool):
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    await service.topics.ensure_topic(person)
    h.server.fail("SendMediaRequest", "expire_reference")        # expires between fetch and send
    fetched = len(h.server.requests("GetMessagesRequest"))
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "posted"
    assert h.server.posts(h.hub)[-1].via == "reference"
    assert len(h.server.requests("GetMessagesRequest")) - fetched == 2   # fetched, then fetched again


async def test_a_deleted_topic_is_recreated_and_its_posts_come_back(h, pool):
    service, chat, [first, second] = await world_with_chat(h, photos=("barack_obama_01.jpg", "barack_obama_02.jpg"))
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, first))
    await service.uploader.post_due()
    [old] = h.server.live_topics(h.hub)
    h.server.delete_topic(h.hub, old)                               # someone deleted it in the app

    await due(pool, person, await analysed(pool, chat, second))
    while await service.uploader.post_due():
        pass
    [new] = h.server.live_topics(h.hub)
    assert new != old and h.server.topics(h.hub)[new]["title"] == "Barack Obama"
    posts = h.server.posts(h.hub, new)
    assert posts[0].text == "Barack Obama" and posts[0].via == "upload"          # the cover first
    sources = sorted(p.text.split("\n")[1].rsplit("/", 1)[1] for p in posts[1:])
    assert sources == sorted([str(first), str(second)])                          # both photos, once each
    assert {r["status"] for r in await outbox(pool)} == {"posted"}
    [p] = await rows(pool, "SELECT topic_id FROM telegram_topics WHERE id = %s", person)
    assert p["topic_id"] == new
    # The new topic was asked for afresh, not refused as a repeat of the first request.
    assert len(h.server.requests("CreateForumTopicRequest")) == 2


async def test_media_whose_source_message_is_gone_fail_with_a_reason(h, pool):
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    h.server.delete_message(chat, message)
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "failed" and "deleted" in row["last_error"]


async def _all(pool, status: str) -> bool:
    return {r["status"] for r in await outbox(pool)} == {status}


async def _all_posted(pool) -> bool:
    return await _all(pool, "posted")


async def test_a_restarted_uploader_takes_over_posts_left_sending_at_once(h, pool):
    """After kill -9 the next daemon posts what was in flight without waiting out the lease."""
    service, chat, [message] = await world_with_chat(h)
    person = await make_person(pool, "Barack Obama")
    up = await due(pool, person, await analysed(pool, chat, message))
    await service.topics.ensure_topic(person)
    h.server.fail("SendMediaRequest", "hang", accept=True)
    task = asyncio.create_task(service.uploader.post_due())
    await eventually(lambda: len(h.server.posts(h.hub)) == 2, what="Telegram to accept the post")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    other = MediaUploader(service.registry, pool, h.settings, TopicManager(service.registry, pool, h.settings),
                          poll_interval=0.1)
    running = asyncio.create_task(other.run())
    try:
        await eventually(lambda: _all_posted(pool), timeout=10, what="the post taken over")
    finally:
        other.stop()
        await running
    posts = h.server.posts(h.hub)
    [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
    assert len(posts) == 2 and row["uploaded_message_id"] == posts[1].id
