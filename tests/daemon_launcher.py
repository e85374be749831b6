"""Runs `main.py` the way the tests need it, without test hooks in production code.

    python tests/daemon_launcher.py [main.py arguments…]

- Timings are shortened (`main.Tuning`, `TelegramTuning`): leases of a few seconds, so that the jobs
  of a process killed with -9 come back in seconds, not a minute; a heartbeat file every second;
  a connect that takes more than 3 s is given up and tried again; ten posts a second into the hub
  (HUB_POSTS_PER_MINUTE's cap, 60, is Telegram's limit, which the fake server does not have; the
  pacing itself is test_uploader's).
- With FA_TELEGRAM_SERVER=<unix socket>, the clients are real TelegramClients talking to the
  fake Telegram *server* a test serves on that socket (tests/telegram_wire.py): everything of
  Telethon above the network runs in the daemon, and the world stays in the test process, so a
  test can build a world, run the daemon against it, kill it, and read what it posted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(TESTS))

import main  # noqa: E402

TUNING = main.Tuning(lease_seconds=3.0, grace=4.0, stop_deadline=8.0, poll_interval=0.3,
                     metrics_interval=2.0, heartbeat_interval=1.0, update_check_interval=0.3,
                     restart_delay=0.5, retry_backoff=1.0, download_timeout=10.0,
                     startup_db_wait=60.0)


def hooks() -> main.Hooks:
    from telegram_client import TelegramTuning

    factory = None
    server = os.environ.get("FA_TELEGRAM_SERVER")
    if server:
        import telegram_wire
        factory = telegram_wire.remote_factory(server, request_retries=2)
    telegram = TelegramTuning(sweep_poll=0.3, watched_refresh=0.5, account_check=0.5, actions_poll=0.3,
                              uploads_poll=0.3, offline_retry=2.0, page_wait=0.0, connect_timeout=3.0,
                              hub_posts_per_minute=600)
    return main.Hooks(telegram_client_factory=factory, tuning=TUNING, telegram_tuning=telegram)


if __name__ == "__main__":
    sys.exit(main.main(sys.argv[1:], hooks()))
