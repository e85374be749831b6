"""The rest of issue 5's list, through the fake Telegram server beneath the real client: init_account.py (login, session file
0600, account recorded, a clear refusal while the daemon holds the session), add_chat.py
(requests, --list, --remove) and the daemon applying them (links, invite links, ids, protected
chats, never the hub), topic titles within 128 UTF-8 bytes, one topic per person under
concurrency, and the same photo forwarded into two chats downloaded once and posted once per
person."""

from __future__ import annotations

import asyncio
import stat

import psycopg
import pytest

import add_chat
from sessions import SessionBusy
from chats import ActionFailed
from media_fixtures import faces_dir
from init_account import LoginFailed, login
from test_uploader import analysed, due, make_person, outbox, rows
from topics import TITLE_MAX_BYTES, TopicManager, topic_title

FACES = faces_dir()
A, B = "+15550001", "+15550002"


def answers(*values):
    it = iter(values)
    return lambda prompt: next(it)


# --- init_account.py ----------------------------------------------------------------------------


async def test_init_account_logs_in_with_code_and_password_and_records_the_account(h, pool, dlib_db):
    h.server.add_account(A, first_name="Ann", username="ann")
    h.server.expect_login(A, code="12345", password="s3cret")          # not logged in yet
    h.server.join(h.hub, A, admin=True)
    said = []
    account = await login(h.settings, dlib_db, A, factory=h.factory, ask=answers("11111", "12 345"),
                          ask_secret=answers("wrong", "s3cret"), say=said.append)
    session = account["session"]
    assert session.parent == h.settings.sessions_path and session.exists()
    assert stat.S_IMODE(session.stat().st_mode) == 0o600                 # the login: owner only
    assert stat.S_IMODE(session.parent.stat().st_mode) == 0o700
    assert any("not right" in s for s in said) and any("two-step" in s for s in said)
    [row] = await rows(pool, "SELECT * FROM telegram_accounts")
    assert (row["phone_number"], row["status"], row["username"], row["display_name"]) == (A, "active", "ann", "Ann")
    assert row["telegram_user_id"] == account["user_id"] and row["session_file_path"] == session.name

    # The daemon now uses it ...
    service = await h.service()
    assert service.registry.account_ids() == [row["id"]]
    # ... and while it holds the session, init_account.py refuses clearly instead of opening it.
    with pytest.raises(SessionBusy, match="Stop the daemon first"):
        await login(h.settings, dlib_db, A, factory=h.factory, ask=answers(), ask_secret=answers(), say=said.append)
    await h.close()
    again = await login(h.settings, dlib_db, A, factory=h.factory, ask=answers(), ask_secret=answers(),
                        say=said.append)                                  # daemon stopped: fine
    assert again["id"] == row["id"] and not again["created"]
    assert said[-1] == "This session is already logged in."


async def test_init_account_gives_up_after_wrong_codes_and_records_nothing(h, pool, dlib_db):
    h.server.add_account(A)
    h.server.expect_login(A, code="12345")
    with pytest.raises(LoginFailed):
        await login(h.settings, dlib_db, A, factory=h.factory, ask=answers("1", "2", "3"), ask_secret=answers(),
                    say=lambda s: None)
    assert await rows(pool, "SELECT id FROM telegram_accounts") == []


# --- add_chat.py and the daemon applying it --------------------------------------------------


async def test_add_chat_records_requests_lists_and_removes(h, pool, dlib_db):
    a = await h.add_account(A)
    family = h.server.add_chat("Family photos", username="family_photos", members=[A])
    await h.watch(a, family)
    with psycopg.connect(dlib_db) as conn:
        first = add_chat.request_chat(conn, "t.me/new_pics", account_id=A)          # by phone number
        assert add_chat.request_chat(conn, "t.me/new_pics", account_id=str(a)) == first   # once
        invite = add_chat.request_chat(conn, "https://t.me/+AbCdEf123", account_id=a)
        with pytest.raises(ValueError, match="already watches"):
            add_chat.request_chat(conn, "@family_photos", account_id=a)
        with pytest.raises(ValueError, match="known accounts"):
            add_chat.request_chat(conn, "@x_pics", account_id=99)
        with pytest.raises(ValueError, match="not a chat"):
            add_chat.request_chat(conn, "https://example.com/nothing", account_id=a)
        lines = add_chat.listing(conn)
        assert any("Family photos (@family_photos)" in line for line in lines)
        assert any(f"#{first} t.me/new_pics with account {a}: pending" in line for line in lines)
        assert any(f"#{invite} " in line for line in lines)
        [removed] = add_chat.change_state(conn, str(family), "removed", account_id=a)
        assert removed["state"] == "removed"
    payloads = [r["payload"] for r in await rows(pool, "SELECT payload FROM dashboard_actions ORDER BY id")]
    assert payloads == [{"chat": "t.me/new_pics", "kind": "username", "account_id": a},
                        {"chat": "https://t.me/+AbCdEf123", "kind": "invite", "account_id": a}]
    service = await h.service()
    assert await service.scanner.due_chats(a) == []                     # removed: not read any more
    await service.realtime.refresh()
    assert not service.realtime.watches(a, family)


async def test_add_chat_on_the_command_line(h, pool, dlib_db, clean_env, tmp_path, capsys):
    """What the operator types: `python add_chat.py ACCOUNT CHAT`, `--list`, `--pause`; a
    mistake is said on stderr with exit code 2."""
    from test_dashboard_support import dashboard_environment

    dashboard_environment(clean_env, dlib_db, tmp_path)
    a = await h.add_account(A)
    family = h.server.add_chat("Family photos", username="family_photos", members=[A])
    await h.watch(a, family)
    no_file = ["--env-file", str(tmp_path / "no.env")]

    def run(*args):
        code = add_chat.main([*args, *no_file])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = run()
    assert code == 2 and "give ACCOUNT and CHAT, or --list" in err
    code, out, _ = run(A, "https://t.me/new_pics")
    assert code == 0 and out.startswith("Requested (#") and "python add_chat.py --list" in out
    code, out, _ = run("--list")
    assert code == 0 and "Family photos (@family_photos)" in out and f"with account {a}: pending" in out
    code, _, err = run(str(a), "@family_photos")
    assert code == 2 and "already watches" in err
    code, out, _ = run(str(a), str(family), "--pause")
    assert code == 0 and out.strip() == f"«Family photos» ({family}) is now paused."
    code, _, err = run(str(a), str(family), "--pause")
    assert code == 2 and "no such chat in another state" in err
    service = await h.service()
    assert await service.scanner.due_chats(a) == []                     # paused: not read


async def test_the_daemon_adds_chats_by_invite_link_id_and_protected_only_flagged(h, pool):
    a = await h.add_account(A)
    secret = h.server.add_chat("Secret club", noforwards=True)                    # A is not a member
    h.server.add_invite(secret, "AbCdEf123")
    known = h.server.add_chat("Known group", kind="group", members=[A])
    stranger = h.server.add_chat("Stranger", members=[B])
    service = await h.service()

    info = await service.chats.add_chat(a, "https://t.me/+AbCdEf123")
    assert (info.chat_id, info.noforwards) == (secret, True) and A in h.server.chats[secret].members
    info = await service.chats.add_chat(a, str(known))
    assert (info.chat_id, info.chat_type) == (known, "group")
    with pytest.raises(ActionFailed, match="not in chat"):
        await service.chats.add_chat(a, str(stranger))
    with pytest.raises(ActionFailed, match="is the hub"):
        await service.chats.add_chat(a, str(h.hub))
    cps = {r["chat_id"]: r for r in await rows(pool, "SELECT * FROM scan_checkpoints")}
    assert set(cps) == {secret, known}
    assert cps[secret]["noforwards"] and not cps[known]["noforwards"]


# --- topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["Ж" * 100, "👩‍👩‍👧‍👦 Family " * 20, "a" * 300, "  ", "Ana María"])
def test_topic_titles_fit_128_utf8_bytes_without_broken_characters(label):
    title = topic_title(label, 7)
    encoded = title.encode("utf-8")
    assert 0 < len(encoded) <= TITLE_MAX_BYTES
    assert encoded.decode("utf-8") == title
    assert label.strip() == "" and title == "Person 7" or " ".join(label.split()).startswith(title)


async def test_long_labels_make_valid_topics_and_renames(h, pool):
    from psycopg.types.json import Jsonb

    await h.add_account(A)
    service = await h.service()
    person = await make_person(pool, "Жанна " * 40)                 # 480 bytes
    topic = await service.topics.ensure_topic(person)                # the fake refuses > 128 bytes
    title = h.server.topics(h.hub)[topic]["title"]
    assert len(title.encode()) <= 128 and title.startswith("Жанна Жанна")
    await rows(pool, "INSERT INTO dashboard_actions (action, payload) VALUES ('rename_topic', %s)",
               Jsonb({"person_id": person, "title": "🙂" * 60}))
    assert await service.actions.apply_pending() == 1
    title = h.server.topics(h.hub)[topic]["title"]
    assert title == "🙂" * 32 and len(title.encode()) == 128


async def test_one_topic_per_person_under_concurrency(h, pool):
    await h.add_account(A)
    service = await h.service()
    persons = [await make_person(pool, f"Person {i}") for i in range(3)]
    # Two topic managers (as two processes would have: separate locks) asking at once.
    other = TopicManager(service.registry, pool, h.settings)
    calls = [m.ensure_topic(p) for p in persons for m in (service.topics, other, service.topics, other)]
    got = await asyncio.gather(*calls)
    topics = h.server.topics(h.hub)
    assert len(topics) == 3 and len(set(got)) == 3
    for i, person in enumerate(persons):
        assert set(got[i * 4:(i + 1) * 4]) == {got[i * 4]}
        posts = h.server.posts(h.hub, got[i * 4])
        assert [p.text for p in posts] == [f"Person {i}"]                # one cover, not four
    assert len(h.server.requests("CreateForumTopicRequest")) == 3


# --- the same photo in two chats ------------------------------------------------------------


async def test_a_photo_forwarded_into_two_chats_is_downloaded_once_and_posted_once_per_person(h, pool):
    from downloads import AlreadyAnalysed

    a = await h.add_account(A)
    family = h.server.add_chat("Family", members=[A])
    friends = h.server.add_chat("Friends", members=[A])
    original = h.server.post(family, h.server.photo(FACES / "group_obama_biden_composite.jpg"), deliver=False)
    forwarded = h.server.forward(family, original, friends)
    await h.watch(a, family)
    await h.watch(a, friends)
    service = await h.service()
    await service.scanner.sweep_chat(a, family)
    await service.scanner.sweep_chat(a, friends)
    jobs = await rows(pool, "SELECT * FROM media_jobs ORDER BY id")
    assert len(jobs) == 2 and jobs[0]["media_key"] == jobs[1]["media_key"]

    from test_telegram_robustness import Job
    path = await service.downloader.download(Job(jobs[0]))
    assert path.exists()
    item = await analysed(pool, family, original)                    # what the worker leaves behind
    with pytest.raises(AlreadyAnalysed):
        await service.downloader.download(Job(jobs[1]))
    assert h.server.downloads_total() == 1

    obama, biden = await make_person(pool, "Barack Obama"), await make_person(pool, "Joe Biden")
    await due(pool, obama, item)
    await due(pool, biden, item)
    with pytest.raises(psycopg.errors.UniqueViolation):             # never due twice for one person
        await due(pool, obama, item)
    while await service.uploader.post_due():
        pass
    assert await service.uploader.post_due() == 0
    assert {r["status"] for r in await outbox(pool)} == {"posted"}
    topics = h.server.live_topics(h.hub)
    assert len(topics) == 2
    for topic in topics:
        cover, *posts = h.server.posts(h.hub, topic)
        assert len(posts) == 1                                         # once per person
    assert {(j["source_chat_id"], j["source_message_id"]) for j in jobs} == {(family, original), (friends, forwarded)}
