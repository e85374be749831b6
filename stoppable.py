"""The stop block every long-running part of the daemon has: `stop()` ends `run()`, which sleeps
between rounds but wakes at once when stopped or woken.

    class Uploader(Stoppable):
        def __init__(self):
            super().__init__()
        async def run(self):
            while not self.stopping:
                ...
                await self.pause(poll_interval)     # returns early on stop() or wake()

Parts that stop on plain events (their own and the daemon's) use `stopped(*events)` and
`sleep_or_stop(seconds, *events)` instead.
"""

from __future__ import annotations

import asyncio


class Stoppable:
    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask `run()` to return (it finishes or hands back what it is doing first)."""
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Cut the current `pause()` short: there is work now."""
        self._wake.set()

    async def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`; return early on `stop()` or `wake()` (a wake-up is used once)."""
        if not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
            except TimeoutError:
                pass
        if not self.stopping:
            self._wake.clear()

    async def until_stopped(self, seconds: float) -> bool:
        """Sleep up to `seconds` or until stopped (wake-ups do not count); True if stopped."""
        try:
            await asyncio.wait_for(self._stopping.wait(), max(0.0, seconds))
        except TimeoutError:
            return False
        return True


def stopped(*events: asyncio.Event | None) -> bool:
    """True when any of the given stop events is set."""
    return any(e is not None and e.is_set() for e in events)


async def sleep_or_stop(seconds: float, *events: asyncio.Event | None) -> None:
    """Sleep up to `seconds`, returning early when any of the events is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events if e is not None]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
