"""Pack a file or a whole repository into one long-context prompt (for `m3 analyze` and `client.analyze`).

Walks the tree in sorted order, honouring every .gitignore on the way (plus .git/ itself), skips binaries (a NUL
byte or invalid UTF-8 in the first 8 KiB) and files over a size cap, and puts each file under a header with its
path. No torch here: the SDK imports this module.
"""

import os
from dataclasses import dataclass, field

ALWAYS_SKIPPED = (".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".pytest_cache")


@dataclass
class Packed:
    text: str
    files: list[str] = field(default_factory=list)  # paths included, relative to the root
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def num_chars(self) -> int:
        return len(self.text)


def file_block(path: str, content: str) -> str:
    return f'<file path="{path}">\n{content}{"" if content.endswith(chr(10)) else chr(10)}</file>\n'


def pack_path(path: str, max_file_bytes: int = 1 << 20, max_total_bytes: int | None = None) -> Packed:
    """One file, or every text file under a folder that git would not ignore, each in a <file path="..."> block."""
    if os.path.isfile(path):
        content, reason = _read_text(path, max_file_bytes)
        if content is None:
            raise ValueError(f"{path}: {reason}")
        name = os.path.basename(path)
        return Packed(file_block(name, content), [name])
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    import pathspec

    packed = Packed("")
    blocks, total = [], 0
    specs: list[tuple[str, pathspec.PathSpec]] = []  # (folder relative to root, its .gitignore)
    for folder, dirs, files in os.walk(path):
        rel_folder = os.path.relpath(folder, path)
        rel_folder = "" if rel_folder == "." else rel_folder.replace(os.sep, "/") + "/"
        ignore_file = os.path.join(folder, ".gitignore")
        if os.path.isfile(ignore_file):
            with open(ignore_file, encoding="utf-8", errors="replace") as f:
                specs.append((rel_folder, pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())))
        dirs[:] = sorted(d for d in dirs if d not in ALWAYS_SKIPPED and not _ignored(specs, rel_folder + d + "/"))
        for name in sorted(files):
            rel = rel_folder + name
            if _ignored(specs, rel):
                continue
            content, reason = _read_text(os.path.join(folder, name), max_file_bytes)
            if content is None:
                packed.skipped.append((rel, reason))
                continue
            block = file_block(rel, content)
            if max_total_bytes is not None and total + len(block) > max_total_bytes:
                packed.skipped.append((rel, "over the total size cap"))
                continue
            total += len(block)
            blocks.append(block)
            packed.files.append(rel)
    packed.text = "".join(blocks)
    return packed


def analysis_messages(context: str, task: str) -> list[dict]:
    """The chat messages for a long-context analysis: the material first, the task last (closest to the answer)."""
    system = (
        "You are an expert software engineer and analyst. You are given a large body of material (often a whole "
        "codebase, each file in a <file path=...> block). Answer the task precisely, citing file paths and lines."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": f"{context}\n\nTask: {task}"}]


def _ignored(specs, rel: str) -> bool:
    for base, spec in specs:
        if rel.startswith(base) and spec.match_file(rel[len(base) :]):
            return True
    return False


def _read_text(path: str, max_bytes: int) -> tuple[str | None, str]:
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            return None, f"larger than {max_bytes} bytes"
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    if b"\x00" in data[:8192]:
        return None, "binary"
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "binary (not UTF-8)"
