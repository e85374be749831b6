"""Scenarios as a user meets them: the whole daemon in subprocesses (tests/daemon_launcher.py)
with real Telethon clients against the fake Telegram server (tests/served_world.py), real
PostgreSQL and the real dlib engine. Each test is one daemon session, several scenarios at once
(the suite's time is short): whatever happens, every photo is posted once into the topic of each
person in it, none twice, no job or post `failed`.

1. Content and outages: a chat with an album, an edited and a deleted message; two accounts in
   one basic group, a live message there (two jobs, one post); a lost answer to every kind of
   request the daemons make; kill -9 of the daemon and of a `--role worker` process at random
   moments (that worker analyses what the daemon downloads). Then an admin deletes a person's
   topic in the hub, and the same photo is forwarded into five chats: posted once per person,
   into a new topic for the deleted one, where its earlier posts are made again, once.
2. Accounts in trouble: an account logged out in the middle of its backfill (marked, its jobs
   wait, the others go on; logged in again, it finishes); a FloodWait storm on another account
   while the hub account goes on.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from served_world import ServedWorld
from test_daemon import BIDEN, BOTH, NOBODY, OBAMA, PHOTOS_ENV, db, daemons  # noqa: F401  (fixtures)
from test_daemon_workers import Daemon, process_gone, wait_until

A, B, C = "+15550001", "+15550002", "+15550003"

# Every kind of request the daemons send (checked against what they did send: see
# assert_every_kind_lost_once).
REQUEST_KINDS = ["GetUsersRequest", "GetDialogsRequest", "GetChannelsRequest", "GetChatsRequest",
                 "GetHistoryRequest", "GetMessagesRequest", "GetFileRequest", "GetForumTopicsRequest",
                 "GetRepliesRequest", "CreateForumTopicRequest", "SendMediaRequest", "SaveFilePartRequest",
                 "EditForumTopicRequest", "SendMessageRequest",
                 "GetStateRequest", "GetDifferenceRequest",     # Telethon's update loop's
                 "GetChannelDifferenceRequest"]                 # (a gap in the hub after lost posts)
NOT_SENT_BY_THE_APP = {"GetConfigRequest"}     # Telethon's own, at connect


@pytest.fixture
def world(tmp_path, db, faces_dir):  # noqa: F811
    w = ServedWorld(tmp_path, faces_dir, db, env=PHOTOS_ENV)
    yield w
    w.close()


def daemon(w: ServedWorld, tmp_path, db, *args: str, name: str = "daemon", **env: str) -> Daemon:  # noqa: F811
    return Daemon(tmp_path, db, "run", *args, env=w.env | {"NUM_WORKERS": "1"} | env, name=name)


def assert_posted_exactly_once(w: ServedWorld, expected: dict[str, set[str]]) -> dict[str, int]:
    """Every person's topic holds its cover first, then each expected photo once; nothing failed.
    `expected`: {a photo only that person is in: every photo of that person}. Returns {that
    photo: the topic's id}."""
    content = w.hub_content()
    assert "failed" not in w.statuses(), w.statuses()
    assert "failed" not in w.statuses("uploaded_media"), w.statuses("uploaded_media")
    topics: dict[str, int] = {}
    for topic, names in content.items():
        assert names[0] == "cover" and names.count("cover") == 1, names
        doubles = [n for n, k in Counter(names).items() if k > 1]
        assert not doubles, f"posted twice into topic {topic}: {doubles}"
        person = [key for key in expected if key in names]
        assert len(person) == 1, f"topic {topic} is not one expected person: {names}"
        assert set(names[1:]) == expected[person[0]], f"topic {topic}: {names}"
        topics[person[0]] = topic
    assert set(topics) == set(expected), content
    posted = w.sql("SELECT count(*) FROM uploaded_media WHERE status = 'posted'")[0][0]
    assert posted == sum(len(n) for n in expected.values())
    return topics


def assert_every_kind_lost_once(w: ServedWorld) -> None:
    """Each kind of request the daemons sent had one answer lost (and the kinds listed that were
    never sent are not claimed as tested)."""
    sent = {name for _, name, _ in w.server.calls} - NOT_SENT_BY_THE_APP
    assert sent <= set(REQUEST_KINDS), f"requests with no lost answer: {sent - set(REQUEST_KINDS)}"
    left = {f.request for f in w.server.faults}
    assert not (left & sent), f"faults left although the request was sent: {left & sent}"


# --- 1. content and outages -----------------------------------------------------------------------


def test_albums_edits_forwards_basic_groups_lost_answers_kill_9_and_a_deleted_topic(world, tmp_path, db, daemons):  # noqa: F811
    w = world
    w.add_account(A)                                    # the hub account
    w.add_account(B)
    album = w.add_chat("Album", members=[A])
    w.watch(A, album)
    for name in (OBAMA[0], OBAMA[1], BIDEN[0]):
        w.post(album, name, grouped_id=4242, deliver=False)
    w.post(album, text="a text", deliver=False)
    edited = w.post(album, NOBODY[0], deliver=False)     # edited into Biden before anyone read it
    w.call(w.server.edit_message, album, edited, media=w.photo(BIDEN[1]))
    deleted = w.post(album, NOBODY[1], deliver=False)
    w.call(w.server.delete_message, album, deleted)
    forwards = [w.add_chat(f"Forwards {i}", kind="channel", members=[A if i < 3 else B]) for i in range(5)]
    for i, chat in enumerate(forwards):
        w.watch(A if i < 3 else B, chat)
    cousins = w.add_chat("Cousins", kind="group", members=[A, B])   # per-account message ids
    w.watch(A, cousins)
    w.watch(B, cousins)
    for kind in REQUEST_KINDS:                          # Telegram does it, the answer never comes
        w.call(w.server.fail, kind, "ConnectionError", accept=True)

    # Live messages come through Telethon's update loop (no history sweep in the test's time: a
    # live update lost with its answer is Telethon's gap to fill, and the sweep at start-up finds
    # what arrived while a daemon was dead).
    main_daemon = daemon(w, tmp_path, db, SWEEP_INTERVAL_SECONDS="3600")
    worker = daemon(w, tmp_path, db, "--role", "worker", name="worker", NUM_WORKERS="2")
    rng = random.Random(1515)
    daemons.append(worker.start())
    # A worker beside the daemon, up first (seconds on a loaded machine) and never killed here
    # (test_daemon_workers kills workers): the daemon's jobs are claimable by both.
    wait_until(lambda: "running: " in worker.text(), daemons=[worker], timeout=90)
    daemons.append(main_daemon.start())
    for i, victim in enumerate((main_daemon, main_daemon, main_daemon)):   # kill -9 at random moments
        time.sleep(rng.uniform(2.0, 7.0))
        if i == 0:                                      # live messages, while daemons die
            w.post(cousins, OBAMA[2])
            w.post(album, BIDEN[2])
        victim.kill()
        pids = victim.analysis_pids()
        wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10)
        daemons.append(victim.start())
    jobs = 5 + 2                                        # album, the two cousins' copies
    wait_until(lambda: w.settled(jobs), daemons=[main_daemon, worker], timeout=150)
    topics = assert_posted_exactly_once(w, {OBAMA[0]: set(OBAMA), BIDEN[0]: set(BIDEN)})
    assert w.statuses() == {"done": jobs}
    assert w.sql("SELECT count(*) FROM media_items")[0][0] == jobs - 1   # the cousins' photo: one item
    # (Whether the worker analysed any of them is up to who claims first: the main daemon, waking on
    # its own downloads, usually does. test_daemon_workers runs workers alone on staged jobs.)
    assert "Traceback" not in worker.text()

    # An admin deletes Biden's topic; then a photo of both is posted and forwarded into four
    # more chats. It is posted once into Obama's topic, and once into a new topic of Biden's,
    # where his earlier posts are made again, once each.
    w.call(w.server.delete_topic, w.hub, topics[BIDEN[0]])
    first = w.post(forwards[0], BOTH)
    for chat in forwards[1:]:
        w.call(w.server.forward, forwards[0], first, chat)
    wait_until(lambda: w.settled(jobs + 5) and len(w.hub_content()) == 2, daemons=[main_daemon], timeout=60)
    time.sleep(1.0)
    after = assert_posted_exactly_once(w, {OBAMA[0]: {*OBAMA, BOTH}, BIDEN[0]: {*BIDEN, BOTH}})
    assert after[BIDEN[0]] != topics[BIDEN[0]] and after[OBAMA[0]] == topics[OBAMA[0]]
    assert w.sql("SELECT count(*) FROM media_items")[0][0] == jobs     # five forwards: one item
    assert_every_kind_lost_once(w)
    for d in (main_daemon, worker):
        assert d.stop()[0] == 0, d.text()[-3000:]


# --- 2. accounts in trouble ---------------------------------------------------------------------


def test_a_logged_out_account_waits_and_a_flood_storm_pauses_only_its_account(world, tmp_path, db, daemons):  # noqa: F811
    w = world
    w.add_account(A)                                    # the hub account, calm
    w.add_account(B)                                    # in a flood storm
    c = w.add_account(C)                                # logged out in the middle of its backfill
    calm = w.add_chat("Calm", members=[A])
    for name in (OBAMA[0], OBAMA[1], BIDEN[0], BIDEN[1]):
        w.post(calm, name, deliver=False)
    storm = w.add_chat("Storm", kind="channel", members=[B])
    for name in (OBAMA[2], BIDEN[2]):
        w.post(storm, name, deliver=False)
    archive = w.add_chat("Archive", members=[C])
    w.post(archive, BOTH, deliver=False)                 # on the first page of the backfill
    for i in range(150):
        w.post(archive, text=f"chatter {i}", deliver=False)
    w.post(archive, NOBODY[0], deliver=False)            # on the second page
    for phone, chat in ((A, calm), (B, storm), (C, archive)):
        w.watch(phone, chat)
    for kind in ("GetHistoryRequest", "GetFileRequest"):
        w.call(w.server.fail, kind, "FLOOD_WAIT_3", phone=B, times=3)
    # C's backfill reads its first page and is told to wait before the second; the download of
    # the first page's photo then finds C logged out (from another device).
    w.call(w.server.fail, "GetHistoryRequest", "FLOOD_WAIT_4", phone=C, after=1)
    w.call(w.server.fail, "GetFileRequest", "revoke", phone=C)

    d = daemon(w, tmp_path, db)
    daemons.append(d.start())
    calm_and_storm = lambda: w.sql(  # noqa: E731
        "SELECT count(*) FROM media_jobs WHERE status = 'done' AND source_chat_id = ANY(%s)", [calm, storm])[0][0]
    wait_until(lambda: calm_and_storm() == 6, daemons=[d], timeout=90)
    # C: marked, what it read is kept, its jobs wait (not failed). (Whether its second page was read
    # before the download found it logged out depends on the machine's speed: the flood wait is 4 s.)
    status, error = w.sql("SELECT status, last_error FROM telegram_accounts WHERE id = %s", c)[0]
    assert status == "logged_out" and "init_account" in error, (status, error)
    cursor = w.sql("SELECT last_processed_message_id FROM scan_checkpoints WHERE chat_id = %s", archive)[0][0]
    assert cursor > 0, cursor
    assert {s for (s,) in w.sql("SELECT status FROM media_jobs WHERE source_chat_id = %s", archive)} == {"queued"}
    # B's storm did not stop A: A's downloads went on while B was told to wait.
    floods = [t for phone, name, t in w.server.calls if phone == B and name in ("GetHistoryRequest", "GetFileRequest")]
    a_work = [t for phone, name, t in w.server.calls if phone == A and name in ("GetFileRequest", "SendMediaRequest")]
    assert any(floods[0] < t < floods[-1] for t in a_work), "the hub account waited for the other's flood"

    # kill -9 while C is logged out: the new daemon finds it so again, and nothing waiting is lost.
    d.kill()
    pids = d.analysis_pids()
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10)
    mark = len(d.text())
    daemons.append(d.start())
    d.wait_log(r"running: ", timeout=90, after=mark)
    assert {s for (s,) in w.sql("SELECT status FROM media_jobs WHERE source_chat_id = %s", archive)} == {"queued"}

    # C is logged in again (init_account.py): its backfill goes on from where it stopped.
    w.call(lambda: setattr(w.server.accounts[C], "status", "ok"))
    w.sql("UPDATE telegram_accounts SET status = 'active', last_error = NULL WHERE id = %s", c)
    # Its waiting job is due at once (not after its deferral of a minute or more).
    wait_until(lambda: w.settled(8), daemons=[d], timeout=40)
    time.sleep(1.0)
    assert_posted_exactly_once(w, {OBAMA[0]: {*OBAMA, BOTH}, BIDEN[0]: {*BIDEN, BOTH}})
    assert w.statuses() == {"done": 8}
    assert d.stop()[0] == 0, d.text()[-3000:]
