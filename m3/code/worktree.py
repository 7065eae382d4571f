"""Git plumbing: one integration worktree per run, one worktree per sub-task, merges with conflict reports.

Branches: `m3/<run>/main` collects merged results (the user's own branch is never touched); each task works on
`m3/<run>/task/<id>`, started from the integration head so it sees what its dependencies produced. A merge
that conflicts is aborted and reported with its files; the task branch stays, so nothing is lost.
NOTE: sandboxed code can write a task worktree's `.git` file; `guard` rewrites it before git runs as us.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = ".m3code"  # inside the workspace, excluded from git
_ENV = {
    "GIT_AUTHOR_NAME": "m3 code",
    "GIT_AUTHOR_EMAIL": "m3-code@localhost",
    "GIT_COMMITTER_NAME": "m3 code",
    "GIT_COMMITTER_EMAIL": "m3-code@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}
_SAFE = ["-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]


class GitError(RuntimeError):
    pass


def git(cwd: str | Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *_SAFE, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **_ENV}, timeout=120
    )
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} (in {cwd}) failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def ensure_repo(workspace: Path) -> str:
    """Make `workspace` a git repository with at least one commit; return the HEAD commit."""
    workspace.mkdir(parents=True, exist_ok=True)
    if not (workspace / ".git").exists():
        git(workspace, "init", "-q")
    exclude = workspace / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if STATE_DIR not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write(f"\n{STATE_DIR}/\n")
    if not git(workspace, "rev-parse", "--verify", "-q", "HEAD", check=False):
        git(workspace, "add", "-A")
        git(workspace, "commit", "-q", "--allow-empty", "-m", "m3 code: initial snapshot of the workspace")
    return git(workspace, "rev-parse", "HEAD")


def run_branch(run_id: str) -> str:
    return f"m3/{run_id}/main"


def task_branch(run_id: str, task_id: str) -> str:
    return f"m3/{run_id}/task/{task_id}"


def worktree_dir(workspace: Path, run_id: str, name: str) -> Path:
    return workspace / STATE_DIR / "wt" / run_id / name


def guard(wt: Path) -> None:
    """Restore the worktree's `.git` pointer file before git runs in it outside the sandbox.

    NOTE: an intact pointer is left alone and a wrong one is replaced atomically: while it is missing, a
    `git worktree prune` run for another task (add_worktree) deletes this worktree's metadata, and the task's next
    git command fails (seen as a flaky sub-task failure in tests/code/test_resume.py)."""
    gitfile = wt / ".git"
    expected = wt.parent / f".{wt.name}.gitfile"
    if not expected.exists():
        return
    want = expected.read_text()
    if gitfile.is_file() and not gitfile.is_symlink() and gitfile.read_text() == want:
        return
    if gitfile.is_dir() and not gitfile.is_symlink():
        shutil.rmtree(gitfile)
    tmp = wt.parent / f".{wt.name}.gitfile.tmp"
    tmp.write_text(want)
    os.replace(tmp, gitfile)  # replaces a file or a symlink in one step


def add_worktree(workspace: Path, wt: Path, branch: str, start: str) -> Path:
    """A fresh worktree at `wt` on `branch` reset to `start` (an old one from a crashed attempt is replaced)."""
    if wt.exists():
        guard(wt)
        git(workspace, "worktree", "remove", "--force", str(wt), check=False)
        shutil.rmtree(wt, ignore_errors=True)
    git(workspace, "worktree", "prune")
    wt.parent.mkdir(parents=True, exist_ok=True)
    git(workspace, "worktree", "add", "-q", "-B", branch, str(wt), start)
    (wt.parent / f".{wt.name}.gitfile").write_text((wt / ".git").read_text())
    return wt


def ensure_run_worktree(workspace: Path, run_id: str, base_commit: str) -> Path:
    """The run's integration worktree, created on first use and reused on resume."""
    wt = worktree_dir(workspace, run_id, "_main")
    if (wt / ".git").exists():
        return wt
    branch = run_branch(run_id)
    exists = git(workspace, "rev-parse", "--verify", "-q", branch, check=False)
    git(workspace, "worktree", "prune")
    wt.parent.mkdir(parents=True, exist_ok=True)
    if exists:
        git(workspace, "worktree", "add", "-q", str(wt), branch)
    else:
        git(workspace, "worktree", "add", "-q", "-b", branch, str(wt), base_commit)
    return wt


def commit_all(wt: Path, message: str) -> tuple[str, list[str]]:
    """Commit everything in the worktree; returns (HEAD commit, changed paths). No change: no new commit."""
    guard(wt)
    git(wt, "add", "-A")
    files = [f for f in git(wt, "diff", "--cached", "--name-only").splitlines() if f]
    if files:
        git(wt, "commit", "-q", "-m", message)
    return git(wt, "rev-parse", "HEAD"), files


@dataclass
class MergeResult:
    ok: bool
    commit: str
    conflicts: list[str] = field(default_factory=list)
    message: str = ""


def merge(integration: Path, branch: str, message: str) -> MergeResult:
    """Merge `branch` into the integration worktree; on conflict abort and report the files."""
    proc = subprocess.run(
        ["git", *_SAFE, "merge", "--no-ff", "--no-edit", "-m", message, branch],
        cwd=integration,
        capture_output=True,
        text=True,
        env={**os.environ, **_ENV},
    )
    if proc.returncode == 0:
        return MergeResult(True, git(integration, "rev-parse", "HEAD"))
    conflicts = [f for f in git(integration, "diff", "--name-only", "--diff-filter=U", check=False).splitlines() if f]
    git(integration, "merge", "--abort", check=False)
    return MergeResult(False, git(integration, "rev-parse", "HEAD"), conflicts, (proc.stdout + proc.stderr).strip())


def is_merged(integration: Path, commit: str) -> bool:
    return (
        subprocess.run(
            ["git", *_SAFE, "merge-base", "--is-ancestor", commit, "HEAD"], cwd=integration, capture_output=True
        ).returncode
        == 0
    )


def changed_files(workspace: Path, base: str, ref: str) -> list[tuple[str, str]]:
    """(status letter, path) for each file that differs between `base` and `ref`."""
    out = git(workspace, "diff", "--name-status", base, ref)
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if line]
