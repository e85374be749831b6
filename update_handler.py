"""The update flag (seed §5.6): a file that asks the daemon to exit cleanly so a new version starts.

`update_checker.sh` (or an operator: `touch data/update_flag/update_available`) creates the file
when a new version is available. The daemon looks for it at safe points — between jobs, in its
supervision loop — and when it is there, stops the way it does on SIGTERM (no new work claimed,
running jobs finished or handed back), clears the flag so the next start does not exit again, and
exits 0 for the container's restart policy (and the updater) to bring the new version up.

Only the entry point (`main.py`) decides to exit; this module only reads and clears the flag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateFlag:
    """The flag file at `path` (`settings.update_flag_path`)."""

    path: Path

    def is_set(self) -> bool:
        """True when an update was requested. A flag that cannot be looked at counts as unset
        (logged): a broken volume must not restart the daemon in a loop."""
        try:
            return self.path.is_file()
        except OSError as exc:
            logger.warning("cannot look for the update flag %s: %s; check the volume it is on",
                           self.path, exc)
            return False

    def describe(self) -> str:
        """Why the daemon is exiting, for the log: the flag and what the updater wrote in it."""
        try:
            note = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            note = ""
        reason = f"the update flag {self.path} is set"
        if note:
            reason += f" ({note[:200]})"
        return reason + "; exiting at a safe point so the new version can start"

    def clear(self) -> bool:
        """Remove the flag so the next start runs normally; return False if it could not be removed.

        A flag that stays would make every start exit again: the log says how to remove it by hand.
        """
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.error("could not clear the update flag %s (%s); remove it by hand, or every "
                         "start of the daemon will exit again", self.path, exc)
            return False
        logger.info("update flag %s cleared", self.path)
        return True
