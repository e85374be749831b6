"""What Telegram does to a watched chat or a connection while the daemon runs, on the fake
Telegram server beneath the real Telethon client (tests/telegram_server.py): Telethon's own
reconnects (the client never looks disconnected), and a basic group migrating to a supergroup."""

from __future__ import annotations

import asyncio

import pytest

from media_fixtures import faces_dir
from server_harness import ServerHarness, eventually, run_components

FACES = faces_dir()
A, B = "+15550001", "+15550002"
PHOTOS = sorted(p.name for p in FACES.glob("*.jpg"))


@pytest.fixture
async def h(tmp_path, pool):
    harness = ServerHarness(tmp_path, pool)
    yield harness
    await harness.close()


async def jobs(pool, chat_id: int) -> list[tuple[int, str]]:
    """(message id, media key) of the chat's jobs, in message order."""
    async with pool.connection() as conn:
        return [tuple(r) for r in await (await conn.execute(
            "SELECT source_message_id, media_key FROM media_jobs WHERE source_chat_id = %s "
            "ORDER BY source_message_id", (chat_id,))).fetchall()]


async def checkpoints(pool) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT chat_id, chat_type, state, scan_mode, last_processed_message_id "
                                 "FROM scan_checkpoints ORDER BY id")
        names = [c.name for c in cur.description]
        return [dict(zip(names, r)) for r in await cur.fetchall()]


async def realtime(pool, chat_id: int) -> bool:
    return any(c["chat_id"] == chat_id and c["scan_mode"] == "realtime" for c in await checkpoints(pool))


async def test_a_sweep_follows_telethons_own_reconnect(h, pool):
    """Telethon reconnects a dropped connection by itself (auto_reconnect) and the client never
    looks disconnected; the messages sent meanwhile never arrive as updates (no catch-up). The
    app hooks Telethon's reconnect and sweeps the account's chats again."""
    a = await h.add_account(A)
    chat = h.server.add_chat("Family", members=[A])
    h.server.post(chat, h.server.photo(FACES / PHOTOS[0]), deliver=False)
    await h.watch(a, chat)
    service = await h.service(sweep_interval=3600)   # no sweep but the ones reconnects ask for
    _, stop = await run_components(service)
    try:
        await eventually(lambda: realtime(pool, chat), what="the backfill")
        live = h.server.post(chat, h.server.photo(FACES / PHOTOS[1]))
        await eventually(lambda: len_is(pool, chat, 2), what="the live message")
        h.server.drop_connection(A)
        missed = [h.server.post(chat, h.server.photo(FACES / name)) for name in PHOTOS[2:4]]
        await asyncio.sleep(0.3)
        assert service.registry.is_connected(a)          # Telethon's reconnect is invisible
        h.server.restore_connection(A)
        await eventually(lambda: len_is(pool, chat, 4), what="the messages sent while reconnecting")
        assert [m for m, _ in await jobs(pool, chat)] == [1, live, *missed]
    finally:
        await stop()


async def len_is(pool, chat_id: int, n: int) -> bool:
    return len(await jobs(pool, chat_id)) == n


async def test_a_basic_group_that_becomes_a_supergroup_is_followed_there(h, pool):
    """Two accounts watch a basic group (per-account message ids); it migrates while watched.
    Each account reads the old group to its end (MessageActionChatMigrateTo), then its record
    moves to the new supergroup, whose history is read from its first message: nothing of the
    old part lost or doubled, the messages sent right after the migration found, and new ones
    followed live."""
    a, b = await h.add_account(A), await h.add_account(B)
    group = h.server.add_chat("Family", kind="group", members=[A, B])
    keys = [h.server.photo(FACES / name) for name in PHOTOS[:5]]
    h.server.history(group, [(keys[0], "old"), (None, "text"), (keys[1], "old")])
    await h.watch(a, group)
    await h.watch(b, group)
    service = await h.service(sweep_interval=3600)
    _, stop = await run_components(service)
    try:
        await eventually(lambda: len_is(pool, group, 4), what="both accounts' backfill")
        live = h.server.post(group, keys[2])                   # {phone: its id for that account}
        await eventually(lambda: len_is(pool, group, 6), what="the live message, once per account")
        supergroup = h.server.migrate(group)
        right_after = h.server.post(supergroup, keys[3])        # before anyone follows it
        moved = lambda: checkpoints(pool)  # noqa: E731
        await eventually(lambda: _all_moved(moved, supergroup), what="the records moving to the supergroup")
        await eventually(lambda: len_is(pool, supergroup, 1), what="the supergroup's backfill")
        later = h.server.post(supergroup, keys[4])
        await eventually(lambda: len_is(pool, supergroup, 2), what="a live message in the supergroup")
        assert await jobs(pool, supergroup) == [(right_after, keys[3]), (later, keys[4])]
        old = await jobs(pool, group)
        assert sorted(k for _, k in old) == sorted([keys[0], keys[1], keys[2]] * 2)
        assert {m for m, k in old if k == keys[2]} == set(live.values())
    finally:
        await stop()


async def _all_moved(read, supergroup: int) -> bool:
    rows = await read()
    return len(rows) == 2 and all(r["chat_id"] == supergroup and r["chat_type"] == "supergroup"
                                  and r["state"] == "active" and r["scan_mode"] == "realtime" for r in rows)
