"""Scenarios on the fake Telegram server beneath the real Telethon client
(tests/telegram_server.py): what only Telethon's own code path shows."""

from __future__ import annotations

import asyncio

import pytest
from telethon import errors, events, functions

from media_fixtures import faces_dir
from server_harness import ServerHarness, eventually
from test_uploader import analysed, due, make_person, outbox, rows

FACES = faces_dir()
A, B = "+15550001", "+15550002"
PHOTOS = ("barack_obama_01.jpg", "barack_obama_02.jpg", "kamala_harris_01.jpg")


@pytest.fixture
async def tg(tmp_path, pool):
    harness = ServerHarness(tmp_path, pool)
    yield harness
    await harness.close()


async def chat_with_photos(tg, phone, account, *, kind="supergroup", photos=PHOTOS[:1], noforwards=False):
    chat = tg.server.add_chat("Family photos", kind=kind, members=[phone], noforwards=noforwards)
    ids = [tg.server.post(chat, tg.server.photo(FACES / name), deliver=False) for name in photos]
    await tg.watch(account, chat)
    return chat, ids


# --- the server itself, through the real client ----------------------------------------------------


async def test_the_real_client_pages_downloads_uploads_and_gets_updates(tg, tmp_path):
    tg.server.add_account(A)
    news = tg.server.add_chat("News", kind="channel", members=[A])
    photo = tg.server.photo(FACES / PHOTOS[0])
    tg.server.history(news, [(photo if i == 120 else None, f"m{i}") for i in range(250)])
    client = tg.server.client(A, tmp_path / "a.session", flood_sleep_threshold=0)
    await client.connect()
    try:
        with pytest.raises(ValueError):
            await client.get_input_entity(news)          # a fresh session knows no chat
        await client.get_dialogs()
        seen = [m.id async for m in client.iter_messages(news, min_id=7, reverse=True)]
        assert seen == list(range(8, 251))                # three GetHistory pages, oldest first
        # three pages of 100, and the empty one after them that tells Telethon it is done
        assert tg.server.requests("GetHistoryRequest").count("GetHistoryRequest") == 4
        message = await client.get_messages(news, ids=121)
        path = await client.download_media(message, file=str(tmp_path / "x.jpg"))
        assert open(path, "rb").read() == tg.server.media[photo].data
        tg.server.expire_references(photo)
        with pytest.raises(errors.FileReferenceExpiredError):
            await client.download_media(message, file=str(tmp_path / "y.jpg"))

        got = asyncio.Queue()

        async def handler(event):
            await got.put(event.message.id)
        client.add_event_handler(handler, events.NewMessage())
        live = tg.server.post(news, None, "live")
        assert await asyncio.wait_for(got.get(), 5) == live   # through Telethon's update loop
    finally:
        await client.disconnect()


async def test_basic_groups_number_messages_per_account(tg):
    tg.server.add_account(A)
    tg.server.add_account(B)
    friend = tg.server.add_user("Friend")
    tg.server.add_private_chat(A, friend)
    tg.server.post(friend, None, "hi A", owner=A)      # A's counter moves, B's does not
    group = tg.server.add_chat("Group", kind="group", members=[A, B])
    ids = tg.server.post(group, None, "hello")
    assert ids == {A: 2, B: 1}


async def test_a_random_id_used_twice_reaches_the_code_as_random_id_duplicate(tg):
    """Telethon classes RANDOM_ID_DUPLICATE as a 500 and repeats it; the daemon's clients are
    built to raise the real error after that (accounts.client_options)."""
    a = await tg.add_account(A)
    service = await tg.service()
    client = service.registry.client(a)
    peer = await client.get_input_entity(tg.hub)
    await client(functions.messages.CreateForumTopicRequest(peer=peer, title="x", random_id=77))
    with pytest.raises(errors.RandomIdDuplicateError):
        await client(functions.messages.CreateForumTopicRequest(peer=peer, title="x", random_id=77))
    assert tg.server.requests("CreateForumTopicRequest").count("CreateForumTopicRequest") > 2    # repeated


# --- lost answers ----------------------------------------------------------------------------------


async def test_a_topic_whose_answer_was_lost_is_found_not_failed(tg, pool):
    a = await tg.add_account(A)
    chat, [message] = await chat_with_photos(tg, A, a)
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    tg.server.fail("CreateForumTopicRequest", "ConnectionError", accept=True)   # created; answer lost
    await service.uploader.post_due()
    assert len(tg.server.topics(tg.hub)) == 1
    await rows(pool, "UPDATE uploaded_media SET run_after = now()")
    await service.uploader.post_due()
    [row] = await outbox(pool)
    [(topic_id, topic)] = tg.server.topics(tg.hub).items()
    assert row["status"] == "posted" and topic["title"] == "Barack Obama"          # no second topic
    [p] = await rows(pool, "SELECT topic_id FROM telegram_topics WHERE id = %s", person)
    assert p["topic_id"] == topic_id


async def test_a_post_whose_answer_was_lost_is_recorded_posted_once(tg, pool):
    a = await tg.add_account(A)
    chat, [first, second] = await chat_with_photos(tg, A, a, photos=PHOTOS[:2])
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, first))
    await service.uploader.post_due()                       # topic, cover, first post
    up = await due(pool, person, await analysed(pool, chat, second))
    tg.server.fail("SendMediaRequest", "ConnectionError", accept=True)
    await service.uploader.post_due()
    assert len(tg.server.posts(tg.hub)) == 3                # Telegram has it
    await rows(pool, "UPDATE uploaded_media SET run_after = now() WHERE id = %s", up)
    await service.uploader.post_due()
    [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
    posts = tg.server.posts(tg.hub)
    assert len(posts) == 3                                  # not twice
    assert row["status"] == "posted" and row["uploaded_message_id"] == posts[-1].id


# --- the hub -----------------------------------------------------------------------------------------


async def test_a_session_that_never_saw_the_hub_still_posts(tg, pool):
    await tg.add_account(A, knows_hub=False)            # the hub account reads no chat
    b = await tg.add_account(B, hub_member=False)
    chat, [message] = await chat_with_photos(tg, B, b)
    service = await tg.service()
    await service.scanner.sweep_chat(b, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "posted", row["last_error"]
    assert len(tg.server.posts(tg.hub)) == 2


async def test_withdrawing_more_than_a_hundred_posts_deletes_them_all(tg, pool):
    a = await tg.add_account(A)
    service = await tg.service()
    client = service.registry.client(a)
    peer = await client.get_input_entity(tg.hub)
    person = await make_person(pool, "Many")
    ids = []
    for i in range(150):
        sent = await client.send_message(peer, f"post {i}")
        [row] = await rows(pool, """INSERT INTO uploaded_media (topic_id, source_chat_id, source_message_id, status,
                                       uploaded_message_id, uploaded_at)
                                    VALUES (%s, -1001, %s, 'posted', %s, now()) RETURNING id""", person, i, sent.id)
        ids.append(row["id"])
    note = await service.topics.apply_action({"action": "delete_posts", "payload": {"uploaded_media_ids": ids}})
    assert "150" in note
    assert tg.server.posts(tg.hub) == []
    assert tg.server.requests("DeleteMessagesRequest").count("DeleteMessagesRequest") == 2


async def test_a_premium_flood_wait_pauses_the_hub_account_like_any_flood_wait(tg, pool):
    a = await tg.add_account(A)
    chat, [message] = await chat_with_photos(tg, A, a)
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    tg.server.fail("CreateForumTopicRequest", "FLOOD_PREMIUM_WAIT_900")
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "pending" and row["attempts"] == 0, row            # waits, not counted
    [account] = await rows(pool, "SELECT flood_wait_until > now() + interval '10 minutes' AS paused "
                                 "FROM telegram_accounts WHERE id = %s", a)
    assert account["paused"]
