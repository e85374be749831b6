"""Scenarios on the fake Telegram server beneath the real Telethon client
(tests/telegram_server.py): what only Telethon's own code path shows."""

from __future__ import annotations

import asyncio

import pytest
from telethon import errors, events, functions

from media_fixtures import faces_dir
from server_harness import ServerHarness, eventually, run_components
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
    built to raise the real error after that (sessions.client_options)."""
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


# --- message ids per account -------------------------------------------------------------------------


async def jobs(pool, chat):
    return await rows(pool, "SELECT account_id, source_message_id, media_key, status FROM media_jobs "
                            "WHERE source_chat_id = %s ORDER BY account_id, source_message_id", chat)


async def test_two_accounts_private_chats_with_one_user_keep_both_messages(tg, pool):
    a = await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    friend = tg.server.add_user("Friend")
    tg.server.add_private_chat(A, friend)
    tg.server.add_private_chat(B, friend)
    photo_a, photo_b = tg.server.photo(FACES / PHOTOS[0]), tg.server.photo(FACES / PHOTOS[2])
    assert tg.server.post(friend, photo_a, owner=A, deliver=False) == 1
    assert tg.server.post(friend, photo_b, owner=B, deliver=False) == 1     # the same id, another message
    await tg.watch(a, friend, phone=A)
    await tg.watch(b, friend, phone=B)
    service = await tg.service()
    await service.scanner.sweep_chat(a, friend)
    await service.scanner.sweep_chat(b, friend)
    assert [(j["account_id"], j["media_key"]) for j in await jobs(pool, friend)] == [(a, photo_a), (b, photo_b)]


async def test_two_accounts_in_one_basic_group_keep_every_message(tg, pool):
    a = await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    friend = tg.server.add_user("Friend")
    tg.server.add_private_chat(A, friend)
    tg.server.post(friend, None, "moves A's counter", owner=A, deliver=False)
    group = tg.server.add_chat("Group", kind="group", members=[A, B])
    photos = [tg.server.photo(FACES / name) for name in PHOTOS]
    for photo in photos:
        tg.server.post(group, photo, deliver=False)
    await tg.watch(a, group)
    await tg.watch(b, group)
    service = await tg.service()
    await service.scanner.sweep_chat(b, group)       # B first: its ids are 1, 2, 3
    await service.scanner.sweep_chat(a, group)       # A's are 2, 3, 4
    found = await jobs(pool, group)
    assert [(j["account_id"], j["source_message_id"], j["media_key"]) for j in found] == \
        [(a, 2, photos[0]), (a, 3, photos[1]), (a, 4, photos[2]),
         (b, 1, photos[0]), (b, 2, photos[1]), (b, 3, photos[2])]


async def test_the_hub_account_never_reposts_another_accounts_message_with_the_same_id(tg, pool):
    """A's message 1 and B's message 1 of their chats with one user are different photos: the
    post of B's photo must be B's photo, not whatever A's message 1 holds."""
    a = await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    friend = tg.server.add_user("Friend")
    tg.server.add_private_chat(A, friend)
    tg.server.add_private_chat(B, friend)
    photo_a, photo_b = tg.server.photo(FACES / PHOTOS[0]), tg.server.photo(FACES / PHOTOS[2])
    tg.server.post(friend, photo_a, owner=A, deliver=False)
    tg.server.post(friend, photo_b, owner=B, deliver=False)
    await tg.watch(a, friend, phone=A)
    await tg.watch(b, friend, phone=B)
    service = await tg.service()
    await service.scanner.sweep_chat(a, friend)
    await service.scanner.sweep_chat(b, friend)
    [job_b] = await rows(pool, "SELECT * FROM media_jobs WHERE account_id = %s", b)
    [item] = await rows(pool, """INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id,
                                   status, face_count, analysed_at)
                                 VALUES (%s, 'photo', %s, 1, 'analysed', 1, now()) RETURNING id""",
                        job_b["media_key"], friend)
    await rows(pool, "UPDATE media_jobs SET status = 'done', media_item_id = %s WHERE id = %s", item["id"], job_b["id"])
    person = await make_person(pool, "Kamala Harris")
    await due(pool, person, item["id"])
    await service.uploader.post_due()
    [row] = await outbox(pool)
    [_, post] = tg.server.posts(tg.hub)
    assert row["status"] == "posted"
    assert tg.server.media[post.media].sha256 == tg.server.media[photo_b].sha256       # B's photo
    assert post.via == "upload"


async def test_a_message_edited_to_carry_another_photo_is_not_analysed_under_the_old_key(tg, pool):
    a = await tg.add_account(A)
    chat, [message] = await chat_with_photos(tg, A, a)
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    [job] = await rows(pool, "SELECT * FROM media_jobs")
    tg.server.edit_message(chat, message, media=tg.server.photo(FACES / PHOTOS[2]))
    from processing_queue import Job, JobSkipped
    with pytest.raises(JobSkipped, match="edited"):
        await service.downloader.download(Job.from_row(job))


# --- accounts Telegram logged out, banned or froze ----------------------------------------------------


async def status_of(pool, account):
    [row] = await rows(pool, "SELECT status, last_error FROM telegram_accounts WHERE id = %s", account)
    return row


async def test_an_account_logged_out_mid_backfill_is_marked_and_the_others_go_on(tg, pool):
    a = await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    chat_a = tg.server.add_chat("A's", members=[A])
    chat_b = tg.server.add_chat("B's", members=[B])
    photo = tg.server.photo(FACES / PHOTOS[0])
    tg.server.history(chat_a, [(photo, str(i)) for i in range(150)])
    tg.server.history(chat_b, [(photo, str(i)) for i in range(150)])
    await tg.watch(a, chat_a)
    await tg.watch(b, chat_b)
    service = await tg.service()
    tg.server.fail("GetHistoryRequest", "AUTH_KEY_UNREGISTERED", phone=B, times=None)
    result = await service.scanner.sweep_chat(b, chat_b)
    assert result.stopped_because == "account"
    assert (await status_of(pool, b))["status"] == "logged_out"
    assert "init_account.py" in (await status_of(pool, b))["last_error"]
    assert not service.registry.holds(b)                         # its work waits for it
    from processing_queue import RetryLater
    with pytest.raises(RetryLater):                              # not counted as an attempt
        await service.downloader.download(type("J", (), dict(id=1, account_id=b, source_chat_id=chat_b,
                                                             source_message_id=1, media_key=photo))())
    await service.scanner.sweep_chat(a, chat_a)                  # the other account goes on
    assert len(await jobs(pool, chat_a)) == 150
    [checkpoint] = await rows(pool, "SELECT deferred_until FROM scan_checkpoints WHERE chat_id = %s", chat_b)
    assert checkpoint["deferred_until"] is None                  # the chat is not blamed


async def test_a_banned_hub_account_makes_posts_wait_not_fail(tg, pool):
    a = await tg.add_account(A)
    chat, [message] = await chat_with_photos(tg, A, a)
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    tg.server.ban(A)
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "pending" and row["attempts"] == 0, row
    assert (await status_of(pool, a))["status"] == "banned"
    assert service.registry.hub_client() is None


async def test_a_frozen_hub_account_stops_posting_and_says_so(tg, pool):
    a = await tg.add_account(A)
    chat, [message] = await chat_with_photos(tg, A, a)
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    tg.server.freeze(A)
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "pending" and row["attempts"] == 0, row
    status = await status_of(pool, a)
    assert status["status"] == "frozen" and "@SpamBot" in status["last_error"]
    assert tg.server.topics(tg.hub) == {}
    await service.scanner.sweep_chat(a, chat)                    # reading still works
    assert service.registry.holds(a)


async def test_an_account_logged_in_again_is_used_again(tg, pool):
    a = await tg.add_account(A)
    service = await tg.service(account_check=0.05)
    tg.server.revoke(A, "SESSION_REVOKED")
    client = service.registry.client(a)
    with pytest.raises(errors.SessionRevokedError):
        await client.get_dialogs()
    try:
        await client.get_dialogs()
    except errors.RPCError as exc:
        await service.registry.account_problem(a, exc)
    assert (await status_of(pool, a))["status"] == "logged_out"
    tg.server.accounts[A].status = "ok"
    tg.server.login(A, tg.session_path(A))                       # init_account.py, then:
    await rows(pool, "UPDATE telegram_accounts SET status = 'active' WHERE id = %s", a)
    task = asyncio.create_task(service.registry.run())
    try:
        await eventually(lambda: service.registry.holds(a), what="the account to be opened again")
    finally:
        service.registry.stop()
        await task


async def test_an_album_photo_whose_answer_was_lost_is_recorded_with_its_own_message(tg, pool):
    """Both photos of an album from a basic group: same chat, same minute, no link. The first
    post's answer is lost (Telegram has it), the second is posted meanwhile; recovering the first
    must record its own message, not its sibling's (a later withdrawal would delete the wrong one)."""
    await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    group = tg.server.add_chat("Family", kind="group", members=[B])
    photos = [tg.server.photo(FACES / name) for name in PHOTOS[:2]]
    ids = [tg.server.post(group, p, grouped_id=42, deliver=False)[B] for p in photos]
    await tg.watch(b, group)
    service = await tg.service()
    await service.scanner.sweep_chat(b, group)
    person = await make_person(pool, "Barack Obama")
    await service.topics.ensure_topic(person)
    ups = [await due(pool, person, await analysed(pool, group, i)) for i in ids]
    tg.server.fail("SendMediaRequest", "MSG_WAIT_FAILED", accept=True)   # posted; the client hears an error
    await service.uploader.post_due()                        # the first: an attempt failed; the second: posted
    await rows(pool, "UPDATE uploaded_media SET run_after = now()")
    await service.uploader.post_due()                        # the first again: a duplicate, looked up
    posts = {p.id: p for p in tg.server.posts(tg.hub)[1:]}
    assert len(posts) == 2                                    # each posted once
    for up, photo in zip(ups, photos):
        [row] = await rows(pool, "SELECT * FROM uploaded_media WHERE id = %s", up)
        assert row["status"] == "posted"
        assert tg.server.media[posts[row["uploaded_message_id"]].media].sha256 == tg.server.media[photo].sha256


# --- transfers that stall ------------------------------------------------------------------------------


async def test_a_download_that_stalls_is_abandoned_and_leaves_no_file(tg, pool):
    a = await tg.add_account(A)
    chat, [message] = await chat_with_photos(tg, A, a)
    service = await tg.service()
    await service.scanner.sweep_chat(a, chat)
    [job] = await rows(pool, "SELECT * FROM media_jobs")
    from processing_queue import Job
    service.downloader.stall_timeout = 1.0
    tg.server.fail("GetFileRequest", "hang")                       # Telegram never answers
    with pytest.raises(asyncio.TimeoutError, match="no progress"):   # (not the test's own limit)
        await asyncio.wait_for(service.downloader.download(Job.from_row(job)), 20)
    from pathlib import Path
    assert not list(Path(tg.settings.staging_path).glob("*"))
    path = await service.downloader.download(Job.from_row(job))     # the queue's next try works
    assert path.read_bytes() == (FACES / PHOTOS[0]).read_bytes()


async def test_an_upload_that_stalls_hands_the_post_back(tg, pool):
    await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    chat, [message] = await chat_with_photos(tg, B, b)               # posted by upload
    service = await tg.service()
    await service.scanner.sweep_chat(b, chat)
    person = await make_person(pool, "Barack Obama")
    await service.topics.ensure_topic(person)
    await due(pool, person, await analysed(pool, chat, message))
    service.uploader.stall_timeout = 1.0
    tg.server.fail("SaveFilePartRequest", "hang")
    await asyncio.wait_for(service.uploader.post_due(), 20)
    [row] = await outbox(pool)
    assert row["status"] == "pending" and row["attempts"] == 0, row   # waits, not counted
    await rows(pool, "UPDATE uploaded_media SET run_after = now()")
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "posted"


async def test_a_reading_account_logged_out_makes_its_posts_wait_and_leaves_the_hub_account_alone(tg, pool):
    a = await tg.add_account(A)
    b = await tg.add_account(B, hub_member=False)
    chat, [message] = await chat_with_photos(tg, B, b)               # only B can fetch it
    service = await tg.service()
    await service.scanner.sweep_chat(b, chat)
    person = await make_person(pool, "Barack Obama")
    await due(pool, person, await analysed(pool, chat, message))
    tg.server.revoke(B)
    await service.uploader.post_due()
    [row] = await outbox(pool)
    assert row["status"] == "pending" and row["attempts"] == 0, row   # waits for B, not failed
    assert (await status_of(pool, b))["status"] == "logged_out"
    assert (await status_of(pool, a))["status"] == "active"          # the hub account is fine


async def test_a_sweep_of_an_account_logged_out_meanwhile_stops_instead_of_crashing_the_daemon(tg, pool):
    a = await tg.add_account(A)
    b = await tg.add_account(B)
    chat, _ = await chat_with_photos(tg, B, b)
    service = await tg.service()
    due = await service.scanner.due_chats(b)
    assert [c["chat_id"] for c in due] == [chat]
    tg.server.revoke(B)   # a download (another component) finds it logged out: dropped ...
    await service.registry.account_problem(b, errors.AuthKeyUnregisteredError(request=None))
    result = await service.scanner.sweep_chat(b, chat)   # ... before its due chat's sweep starts
    assert result.stopped_because == "account"
    assert service.registry.holds(a)

async def test_an_account_not_active_at_the_start_is_opened_once_it_is_logged_in_again(tg, pool):
    await tg.add_account(A)
    b = await tg.add_account(B)
    await rows(pool, "UPDATE telegram_accounts SET status = 'logged_out' WHERE id = %s", b)
    service = await tg.service()
    assert not service.registry.holds(b)
    task, stop = await run_components(service)
    try:   # init_account.py logs it in again while this daemon runs (it started after the logout)
        await rows(pool, "UPDATE telegram_accounts SET status = 'active', last_error = NULL WHERE id = %s", b)
        await eventually(lambda: service.registry.holds(b), what="the account to be opened")
    finally:
        await stop()

# --- the wire (tests/telegram_wire.py): the daemon's side of a served world ---------------------------


async def test_a_request_the_fake_cannot_answer_is_a_server_error_at_once_and_fails_the_world(tmp_path, db_conninfo):
    from served_world import ServedWorld
    from telegram_wire import remote_client

    w = ServedWorld(tmp_path, FACES, db_conninfo)
    w.add_account(A)
    client = remote_client(w.socket, w.sessions / "15550001.session", request_retries=1, receive_updates=False)
    await client.connect()
    try:
        # Not one the fake knows: before, its NotImplementedError died in the serving task and
        # the client waited for an answer until its own timeout.
        with pytest.raises(ValueError, match="unsuccessful"):   # Telethon's word for a 500 it gave up on
            await asyncio.wait_for(client(functions.contacts.GetContactsRequest(hash=0)), 10)
    finally:
        await client.disconnect()
    assert "GetContactsRequest" in w.server.bugs[0], w.server.bugs
    with pytest.raises(AssertionError, match="the fake Telegram failed on requests"):
        w.close()
