"""What happens to work that raised: one retry policy, written as data, for every part of the
daemon that retries (the job queue; the uploader and the action applier can use the same).

The caller asks `policy.decide(exc, failed_attempts)` and gets a `Decision`:

- `skip`: the work is deliberately not done (`JobSkipped`);
- `fail`: never worth another try: a `permanent` error (bad media, a deleted message), the last
  of `max_attempts` counted failures, or the `poison_attempts`-th time the file crashed or hung
  its analysis process (`bad_media` is then set: the file itself is the problem);
- `defer`: wait and try again *without counting an attempt*: an error carrying its own retry time
  (`deferred`: flood waits, `seconds` attribute; `pause_account` says the whole account should
  pause as long) or an `outage` (the connection to Telegram dropped: nobody's fault, however
  long it lasts);
- `retry`: an ordinary failure, tried again after `backoff_base * 2**(attempt-1)` seconds (at
  most `backoff_cap`, ± `jitter`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal


class RetryLater(Exception):
    """Try again in `seconds`, without counting an attempt (e.g. a flood wait)."""

    def __init__(self, seconds: float, reason: str = ""):
        self.seconds = seconds
        super().__init__(reason or f"retry in {seconds:.0f} s")


class PermanentJobError(Exception):
    """The work can never succeed (the message or its media is gone): fail it without retries."""


class JobSkipped(Exception):
    """The job is deliberately not done (e.g. the media is larger than MAX_MEDIA_SIZE_MB)."""


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "defer", "fail", "skip"]
    delay: float = 0.0
    counted: bool = True          # this failure counts as an attempt
    pause_account: bool = False   # a per-account wait (flood wait): the account's other work pauses too
    bad_media: bool = False       # failed because of the file itself: its copies need no analysis


@dataclass(frozen=True)
class RetryPolicy:
    """See the module docstring. `max_claims`: a job claimed this many times without being settled
    (every process that took it died: waiting gives its claim back) is failed, so one file that
    kills the daemon itself cannot take it down for ever."""

    max_attempts: int = 5
    backoff_base: float = 30.0
    backoff_cap: float = 3600.0
    jitter: float = 0.2
    max_claims: int = 25
    outage_wait: float | None = None   # seconds an outage waits (None: backoff_base)
    poison_attempts: int = 2
    permanent: tuple[type[BaseException], ...] = (PermanentJobError,)
    deferred: tuple[type[BaseException], ...] = (RetryLater,)
    outages: tuple[type[BaseException], ...] = ()
    poison: tuple[type[BaseException], ...] = ()

    @classmethod
    def standard(cls, **changes: Any) -> RetryPolicy:
        """The daemon's policy: bad media is permanent; Telegram flood waits (also the premium
        ones, which are not `FloodWaitError`s) are deferred; a lost connection is an outage; a file
        that crashes or hangs its analysis process twice is poison."""
        from telethon.errors import FloodPremiumWaitError, FloodWaitError

        from analysis_pool import AnalysisCrashed, AnalysisTimeout
        from media_processor import MediaError
        return cls(**{"permanent": (PermanentJobError, MediaError),
                      "deferred": (RetryLater, FloodWaitError, FloodPremiumWaitError),
                      "outages": (ConnectionError,), "poison": (AnalysisCrashed, AnalysisTimeout)} | changes)

    def is_permanent(self, exc: BaseException) -> bool:
        return isinstance(exc, (PermanentJobError, *self.permanent))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th counted failure (1-based), with jitter."""
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def decide(self, exc: BaseException, failed_attempts: int) -> Decision:
        """What to do after `exc`, for work that had already failed `failed_attempts` times."""
        if isinstance(exc, JobSkipped):
            return Decision("skip")
        if self.is_permanent(exc):
            return Decision("fail")
        if isinstance(exc, self.deferred):
            seconds = float(getattr(exc, "seconds", 0) or 0)
            return Decision("defer", seconds + random.uniform(0, self.jitter * seconds + 1), counted=False,
                            pause_account=not isinstance(exc, RetryLater))
        if isinstance(exc, self.outages):
            wait = self.backoff_base if self.outage_wait is None else self.outage_wait
            return Decision("defer", wait * random.uniform(1 - self.jitter, 1 + self.jitter), counted=False)
        attempt = failed_attempts + 1
        if isinstance(exc, self.poison) and attempt >= self.poison_attempts:
            return Decision("fail", bad_media=True)
        if attempt >= self.max_attempts:
            return Decision("fail")
        return Decision("retry", self.backoff(attempt))
