"""Optional notifications for what the operator must act on: an account lost (logged out, banned,
in error), the review queue above NOTIFY_REVIEW_ABOVE faces, errors rising (more than
NOTIFY_ERRORS_PER_HOUR recorded in the last hour).

Delivered to NOTIFY_WEBHOOK_URL (a JSON POST: {"text", "content", "events"}, which Slack-,
Mattermost- and Discord-style hooks accept) and/or, with NOTIFY_HUB_DIGEST=true, as one message in
the hub's General topic (through the hub account's client, paced like every hub write).

Rate-limited: the daemon looks every `check_interval` seconds; an event is told when it appears,
then reminded at most once every NOTIFY_INTERVAL_SECONDS while it lasts; what is due at one look
goes out as one digest. Nothing in a notification is secret: accounts appear as masked phone
numbers (+44…12), and any other run of digits that could be a phone number is cut out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from database import queries
from health import mask_phone
from job_queue import DB_UNAVAILABLE
from stoppable import Stoppable

logger = logging.getLogger(__name__)

_PHONE_LIKE = re.compile(r"\+?\d[\d ()-]{6,}\d")
DIGEST_MAX = 3500   # characters: a Telegram message holds 4096


def scrub(text: str) -> str:
    """`text` without anything that looks like a phone number (7 or more digits in a row)."""
    return _PHONE_LIKE.sub("…", text)


@dataclass(frozen=True)
class Event:
    key: str    # what it is about, e.g. "account:3:error": the rate limit is per key
    text: str


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: str | None = None
    hub_digest: bool = False
    review_above: int = 50
    errors_per_hour: int = 20
    interval: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Any) -> NotifySettings:
        url = settings.notify_webhook_url.get_secret_value() if settings.notify_webhook_url else None
        return cls(webhook_url=url, hub_digest=settings.notify_hub_digest, review_above=settings.notify_review_above,
                   errors_per_hour=settings.notify_errors_per_hour, interval=float(settings.notify_interval_seconds))

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url) or self.hub_digest


def events_from(facts: dict[str, Any], config: NotifySettings) -> list[Event]:
    """The events in what `queries.notify_facts` found."""
    found = []
    for account in facts["accounts"]:
        why = f" ({scrub(account['last_error'][:200])})" if account.get("last_error") else ""
        found.append(Event(f"account:{account['id']}:{account['status']}",
                           f"Account {mask_phone(account['phone_number'])} is {account['status']}{why}: "
                           "log it in again with `python init_account.py`."))
    if facts["review"] > config.review_above:
        found.append(Event("review", f"{facts['review']} faces wait for review on the dashboard's Review page "
                                     f"(more than {config.review_above})."))
    if facts["errors_last_hour"] > config.errors_per_hour:
        found.append(Event("errors", f"{facts['errors_last_hour']} errors in the last hour (more than "
                                     f"{config.errors_per_hour}); see the dashboard's Errors page."))
    return found


class Notifier(Stoppable):
    """The daemon's component: looks, and tells what is due. `send_to_hub(text)`: posts into the
    hub's General topic (None: this process does not post)."""

    def __init__(self, pool: Any, config: NotifySettings, *, send_to_hub: Callable[[str], Any] | None = None,
                 check_interval: float = 60.0, clock: Callable[[], float] = time.time):
        super().__init__()
        self.pool = pool
        self.config = config
        self.send_to_hub = send_to_hub
        self.check_interval = check_interval
        self.clock = clock
        self._told: dict[str, float] = {}   # event key -> when it was last told
        self.sent = 0

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self.check()
            except DB_UNAVAILABLE as exc:
                logger.info("notifications wait for the database (%s)", type(exc).__name__)
            await self.pause(self.check_interval)

    async def check(self) -> list[Event]:
        """Look once; deliver the events that are due; return them."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.notify_accounts)
            accounts = await cur.fetchall()
            await cur.execute(queries.notify_counts)
            counts = await cur.fetchone()
        events = events_from({"accounts": accounts, **counts}, self.config)
        now = self.clock()
        current = {e.key for e in events}
        for key in set(self._told) - current:   # over: told again if it comes back
            del self._told[key]
        due = [e for e in events if now - self._told.get(e.key, float("-inf")) >= self.config.interval]
        if due and await self.deliver(due):   # undelivered: tried again at the next look
            for event in due:
                self._told[event.key] = now
        return due

    async def deliver(self, events: list[Event]) -> bool:
        """Send one digest of `events` everywhere configured; True if it reached one place."""
        delivered = False
        text = "Face Archiver needs you:\n" + "\n".join(f"- {e.text}" for e in events)
        text = scrub(text)[:DIGEST_MAX]
        if self.config.webhook_url:
            payload = {"text": text, "content": text, "events": [{"kind": e.key.split(":")[0], "text": scrub(e.text)}
                                                                  for e in events]}
            try:
                await asyncio.to_thread(post_json, self.config.webhook_url, payload)
                delivered = True
            except (OSError, ValueError) as exc:   # the URL may hold a token: never logged
                logger.warning("the notification webhook failed: %s", type(exc).__name__)
        if self.config.hub_digest and self.send_to_hub is not None:
            try:
                await self.send_to_hub(text)
                delivered = True
            except Exception as exc:  # a flood wait, no hub, offline: the next reminder tries again
                logger.warning("the notification digest could not be posted into the hub: %s", type(exc).__name__)
        if delivered:
            self.sent += 1
            logger.info("notified: %s", "; ".join(e.key.split(":")[0] for e in events))
        return delivered


def post_json(url: str, payload: dict[str, Any], timeout: float = 10.0) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "face-archiver"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def hub_sender(topics: Any) -> Callable[[str], Any]:
    """Posts a text into the hub's General topic through `topics` (a TopicManager)."""
    from telethon import functions

    async def send(text: str) -> None:
        await topics.send(functions.messages.SendMessageRequest(
            peer=await topics.hub_peer(), message=text, random_id=random.randrange(1, 2 ** 63)))
    return send
