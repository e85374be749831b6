"""Optional notifications (notifications.py): a webhook on a local HTTP server receives what the
operator must act on, rate-limited, with no phone number in it; the digest goes into the hub's
General topic through the hub account's client (the fake Telegram)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from notifications import Notifier, NotifySettings, events_from, hub_sender

PHONE = "+447700900012"


@pytest.fixture
def webhook():
    """A local HTTP server; yields (url, [received JSON bodies])."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-token", received
    server.shutdown()
    server.server_close()


async def lost_account(pool, phone: str = PHONE) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "INSERT INTO telegram_accounts (phone_number, session_file_path, status, last_error) "
            "VALUES (%s, 'x.session', 'logged_out', %s) RETURNING id",
            (phone, f"AuthKeyUnregisteredError for {phone} (+44 7700 900012)"))).fetchone()
    return row[0]


async def errors(pool, count: int) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO processing_errors (error_type, error_message) "
                           "SELECT 'OSError', 'disk' FROM generate_series(1, %s)", (count,))


async def test_the_webhook_is_told_rate_limited_and_without_phone_numbers(pool, webhook):
    url, received = webhook
    now = [1000.0]
    notifier = Notifier(pool, NotifySettings(webhook_url=url, errors_per_hour=2, interval=3600), clock=lambda: now[0])
    assert await notifier.check() == [] and received == []        # all is well: nothing told

    account = await lost_account(pool)
    await errors(pool, 3)
    told = await notifier.check()
    assert sorted(e.key for e in told) == [f"account:{account}:logged_out", "errors"]
    assert len(received) == 1                                      # one digest for both
    body = json.dumps(received[0])
    assert "+44…12" in received[0]["text"] and "3 errors in the last hour" in received[0]["text"]
    assert received[0]["content"] == received[0]["text"]
    assert {e["kind"] for e in received[0]["events"]} == {"account", "errors"}
    for digits in ("447700900012", "7700900012", "7700 900012", "900012"):
        assert digits not in body

    now[0] += 60                                                   # the next look: nothing new
    assert await notifier.check() == [] and len(received) == 1
    second = await lost_account(pool, "+15550001234")              # something new: told at once, alone
    assert [e.key for e in await notifier.check()] == [f"account:{second}:logged_out"]
    assert len(received) == 2 and "+15…34" in received[1]["text"] and "errors" not in received[1]["text"]
    now[0] += 3600                                                 # still there an interval later: reminded
    assert len(await notifier.check()) == 3 and len(received) == 3

    async with pool.connection() as conn:                          # solved, then lost again: told again
        await conn.execute("UPDATE telegram_accounts SET status = 'active' WHERE id = %s", (account,))
    now[0] += 60
    assert await notifier.check() == []
    async with pool.connection() as conn:
        await conn.execute("UPDATE telegram_accounts SET status = 'banned' WHERE id = %s", (account,))
    assert [e.key for e in await notifier.check()] == [f"account:{account}:banned"]
    assert len(received) == 4


async def test_an_unreachable_webhook_is_tried_again_and_its_url_never_logged(pool, caplog):
    closed = "http://127.0.0.1:9/hook/secret-token"   # the discard port: nothing listens
    notifier = Notifier(pool, NotifySettings(webhook_url=closed, errors_per_hour=0))
    await errors(pool, 1)
    assert len(await notifier.check()) == 1 and notifier.sent == 0
    assert len(await notifier.check()) == 1        # not told: due again at the next look
    assert "webhook failed" in caplog.text and "secret-token" not in caplog.text


def test_the_review_queue_above_the_setting_is_an_event():
    config = NotifySettings(webhook_url="http://x", review_above=50)
    assert events_from({"accounts": [], "review": 50, "errors_last_hour": 0}, config) == []
    [event] = events_from({"accounts": [], "review": 51, "errors_last_hour": 0}, config)
    assert event.key == "review" and "51 faces wait for review" in event.text


async def test_the_digest_goes_into_the_hubs_general_topic(h, pool):
    await h.add_account("+15550009999")
    service = await h.service()
    await lost_account(pool)
    notifier = Notifier(pool, NotifySettings(hub_digest=True), send_to_hub=hub_sender(service.topics))
    assert len(await notifier.check()) == 1
    [post] = h.server.posts(h.hub)
    assert post.topic in (None, 1) and "+44…12 is logged_out" in post.text
    assert "7700900012" not in post.text
