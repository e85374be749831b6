"""How the app writes its own commands in what it tells the operator ("run `… init_account.py`").

A hint must work when pasted as it is. In a checkout, a bare `python` lacks the dependencies
(they are in `.venv`), so the hint names the interpreter that runs now, as typed from the
working directory. Kept apart from config.py so that the face modules (copied alone into the
Docker image's model stage) can use it too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def python_command() -> str:
    """`.venv/bin/python` when the running interpreter lives under the working directory (a
    checkout), else `python` (the Docker image, an activated environment)."""
    executable = Path(sys.executable)
    try:
        relative = executable.relative_to(Path.cwd())
    except ValueError:
        return "python"
    return str(relative) if os.sep in str(relative) else f".{os.sep}{relative}"
