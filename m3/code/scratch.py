"""A throw-away copy of a workspace for workflows that run code (tests, fix) without touching the original.

The sandbox hands its writable directory to another uid, so we never give it the user's own checkout.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from m3.code.worktree import STATE_DIR

IGNORE = shutil.ignore_patterns(".git", STATE_DIR, "__pycache__", ".venv", "venv", ".pytest_cache", "node_modules")


def scratch_copy(workspace: Path, prefix: str) -> Path:
    dest = workspace / STATE_DIR / "scratch" / f"{prefix}-{secrets.token_hex(4)}"
    shutil.copytree(workspace, dest, ignore=IGNORE, symlinks=True)
    return dest


def code_block(text: str) -> str:
    """The body of the first ```python fence in a reply (or the whole reply when there is none)."""
    import re

    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return (m.group(1) if m else text).strip() + "\n"
