"""The tools an agent may call, bound to one worktree: read/list/search files, write/patch files, run commands.

File tools run in this process but refuse any path that resolves (symlinks included) outside the worktree;
`run` goes through the sandbox. Results are plain text, truncated, since they go back into the prompt.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from m3.code.sandbox import Sandbox

MAX_RESULT_CHARS = 12_000

TOOL_SPECS = {
    "read_file": '{"path": str, "start_line"?: int, "max_lines"?: int}  read a text file',
    "list_files": '{"path"?: str}  list files under a directory (recursive)',
    "search": '{"pattern": regex, "path"?: str}  grep for a regex in files',
    "write_file": '{"path": str, "content": str}  create or overwrite a file',
    "patch_file": '{"path": str, "search": str, "replace": str}  replace one exact occurrence of search',
    "run": '{"command": str}  run a shell command (tests, linters) in the sandbox; no network',
}


class ToolError(ValueError):
    """A tool call the agent got wrong; its message goes back to the model."""


def _clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} more characters cut]"


class Tools:
    def __init__(self, root: Path, sandbox: Sandbox | None, allowed: tuple[str, ...] = tuple(TOOL_SPECS)):
        self.root = root.resolve()
        self.sandbox = sandbox
        self.allowed = allowed

    def describe(self) -> str:
        return "\n".join(f"- {name} {TOOL_SPECS[name]}" for name in self.allowed)

    def call(self, name: str, args: dict) -> str:
        if name not in self.allowed:
            raise ToolError(f"unknown or not permitted tool {name!r}; allowed: {list(self.allowed)}")
        if not isinstance(args, dict):
            raise ToolError("'args' must be a JSON object")
        try:
            return _clip(getattr(self, name)(**args))
        except TypeError as e:
            raise ToolError(f"bad arguments for {name}: {e}") from None

    def _path(self, path: str) -> Path:
        if not isinstance(path, str) or not path:
            raise ToolError("'path' must be a non-empty string")
        p = (self.root / path).resolve()
        if p != self.root and not p.is_relative_to(self.root):
            raise ToolError(f"path {path!r} is outside the worktree")
        if ".git" in p.relative_to(self.root).parts:
            raise ToolError("the .git directory is off limits")
        return p

    def read_file(self, path: str, start_line: int = 1, max_lines: int = 400) -> str:
        p = self._path(path)
        if not p.is_file():
            raise ToolError(f"no such file: {path}")
        lines = p.read_text(errors="replace").splitlines()
        chunk = lines[max(0, start_line - 1) : start_line - 1 + max_lines]
        more = len(lines) - (start_line - 1 + len(chunk))
        return "\n".join(chunk) + (f"\n... [{more} more lines]" if more > 0 else "")

    def list_files(self, path: str = ".") -> str:
        base = self._path(path)
        out = []
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__", ".m3code"))
            for f in sorted(files):
                out.append(str(Path(dirpath, f).relative_to(self.root)))
                if len(out) >= 500:
                    return "\n".join(out) + "\n... [listing cut at 500 files]"
        return "\n".join(out) or "(no files)"

    def search(self, pattern: str, path: str = ".") -> str:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ToolError(f"bad regex: {e}") from None
        hits = []
        for rel in self.list_files(path).splitlines():
            p = self.root / rel
            if not p.is_file() or p.stat().st_size > 1_000_000:
                continue
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                if rx.search(line):
                    hits.append(f"{rel}:{i}: {line.strip()[:200]}")
                    if len(hits) >= 100:
                        return "\n".join(hits) + "\n... [cut at 100 matches]"
        return "\n".join(hits) or "(no matches)"

    def write_file(self, path: str, content: str) -> str:
        if not isinstance(content, str):
            raise ToolError("'content' must be a string")
        p = self._path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        return f"wrote {len(content)} characters to {path}"

    def patch_file(self, path: str, search: str, replace: str) -> str:
        p = self._path(path)
        if not p.is_file():
            raise ToolError(f"no such file: {path}")
        text = p.read_text()
        count = text.count(search) if search else 0
        if count != 1:
            raise ToolError(f"'search' must occur exactly once in {path}; it occurs {count} times")
        p.write_text(text.replace(search, replace, 1))
        return f"patched {path}"

    def run(self, command: str) -> str:
        if self.sandbox is None:
            raise ToolError("running commands is not available here")
        if not isinstance(command, str) or not command.strip():
            raise ToolError("'command' must be a non-empty string")
        r = self.sandbox.run(["sh", "-c", command], self.root)
        head = f"exit code {r.returncode}" + (" (killed: wall-clock limit)" if r.is_timeout else "")
        return f"{head}\n--- stdout ---\n{_clip(r.stdout, 6000)}\n--- stderr ---\n{_clip(r.stderr, 4000)}"
