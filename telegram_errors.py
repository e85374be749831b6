"""What Telegram's errors mean for the daemon, in one place (Telethon 1.45's classes).

- Flood waits: `FloodWaitError` and `FloodPremiumWaitError` (FLOOD_PREMIUM_WAIT_X, a separate
  class: downloads and uploads of non-Premium accounts) both pause the account that got them.
- Account states (DESIGN §3): an account can be logged out (AUTH_KEY_UNREGISTERED,
  SESSION_REVOKED, SESSION_EXPIRED, AUTH_KEY_DUPLICATED), banned or deleted
  (USER_DEACTIVATED_BAN, USER_DEACTIVATED) or frozen (FROZEN_METHOD_INVALID,
  FROZEN_PARTICIPANT_MISSING: it can read but not write). `account_state(exc)` names the state an
  error reveals, `ACCOUNT_ADVICE` what the operator does about it. These are the values of
  `telegram_accounts.status` besides 'active', 'paused' and 'error' (migration 0004).
"""

from __future__ import annotations

from telethon import errors

FLOOD_WAITS = (errors.FloodWaitError, errors.FloodPremiumWaitError)

LOGGED_OUT = (errors.AuthKeyUnregisteredError, errors.SessionRevokedError, errors.SessionExpiredError,
              errors.AuthKeyDuplicatedError)
BANNED = (errors.UserDeactivatedBanError, errors.UserDeactivatedError)
FROZEN = (errors.FrozenMethodInvalidError, errors.FrozenParticipantMissingError)

ACCOUNT_ADVICE = {
    "logged_out": "Telegram ended this account's session (logged out from another device, or the "
                  "session was revoked). Log it in again with `python init_account.py`; its work waits "
                  "until then and the other accounts go on.",
    "banned": "Telegram banned or deleted this account. Its work waits; remove the account, or add "
              "its chats to another account.",
    "frozen": "Telegram froze this account: it can still read, but cannot post or change anything. "
              "Appeal in the Telegram app (@SpamBot); posts wait until it is unfrozen, or make "
              "another account post to the hub (HUB_ACCOUNT).",
}


def account_state(exc: BaseException) -> str | None:
    """'logged_out', 'banned' or 'frozen' if `exc` says the account is in that state, else None."""
    if isinstance(exc, BANNED):
        return "banned"
    if isinstance(exc, FROZEN):
        return "frozen"
    if isinstance(exc, LOGGED_OUT):
        return "logged_out"
    return None


def as_flood_wait(exc: BaseException) -> BaseException:
    """A premium flood wait as a `FloodWaitError` of the same length (for code that knows only
    that class, e.g. the job queue's retry policy); any other error unchanged."""
    if isinstance(exc, errors.FloodPremiumWaitError) and not isinstance(exc, errors.FloodWaitError):
        flood = errors.FloodWaitError(request=getattr(exc, "request", None), capture=exc.seconds)
        flood.__cause__ = exc
        return flood
    return exc
