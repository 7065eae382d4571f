"""Run a command isolated without Docker: bubblewrap, a non-root uid, no network, one writable directory.

Layout inside: the host root read-only, fresh /tmp, /dev and /proc, the writable directory bound at /tmp/work
(the cwd). As root we let bwrap mount and then drop to uid/gid 65534 with setpriv, so the code runs as a real
unprivileged user on the host (root-only files stay unreadable); as a normal user bwrap runs unprivileged.
rlimits (prlimit) cap CPU seconds, address space, file size and processes; a wall clock kills the whole
process group; stdout/stderr are captured up to a cap. Without bwrap we refuse unless `unsafe=True`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SANDBOX_UID = 65534  # nobody
INNER_DIR = "/tmp/work"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing (or unusable) and the caller did not allow running unsandboxed."""


@dataclass
class Limits:
    timeout_s: float = 60.0  # wall clock, whole process group killed after it
    cpu_s: int = 60  # RLIMIT_CPU
    memory_mb: int = 2048  # RLIMIT_AS
    file_size_mb: int = 64  # RLIMIT_FSIZE
    max_processes: int = 256  # RLIMIT_NPROC (per uid; shared by concurrent sandboxes of the same uid)
    max_output_bytes: int = 64_000  # per stream; the rest is drained and counted


@dataclass
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    is_timeout: bool = False
    num_truncated_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.is_timeout

    @property
    def killed_by(self) -> str | None:
        """A best guess at which limit ended the command, for reports."""
        if self.is_timeout:
            return "wall-clock"
        sig = -self.returncode if self.returncode < 0 else self.returncode - 128 if self.returncode > 128 else 0
        if sig == signal.SIGXCPU:
            return "cpu"
        if sig == signal.SIGXFSZ:
            return "file-size"
        if "MemoryError" in self.stderr or "Cannot allocate memory" in self.stderr or sig == signal.SIGKILL:
            return "memory"
        return None

    def to_dict(self) -> dict:
        return asdict(self)


_EMPTIED = ("/tmp", "/var/tmp", "/run")  # replaced by empty tmpfs inside the sandbox


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _expose_args(paths: list[str]) -> list[str]:
    """Make `paths` (e.g. the Python prefix under /root/.pyenv) reachable for the sandbox uid: mask the first
    ancestor it cannot traverse with an empty tmpfs, then bind the path back read-only."""
    args, masked = [], set()
    for p in sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}):
        path = Path(p)
        hidden = next((Path(h) for h in _EMPTIED if p.startswith(h + "/")), None)
        if hidden is not None:
            # under a directory the sandbox empties (a checkout's venv in /tmp, say): rebuild the way down 0755
            for a in reversed(path.parents):
                if hidden in a.parents and str(a) not in masked:
                    args += ["--perms", "0755", "--dir", str(a)]
                    masked.add(str(a))
            args += ["--ro-bind", p, p]
            continue
        if _traversable_by_others(path.parent):
            continue
        blocked = next(a for a in reversed([path, *path.parents]) if not os.stat(a).st_mode & 0o001)
        if str(blocked) not in masked and blocked != path:
            args += ["--perms", "0755", "--tmpfs", str(blocked)]
            masked.add(str(blocked))
        # NOTE: bwrap creates missing parents 0700; create them 0755 ourselves or the uid cannot pass.
        for a in reversed(path.parents):
            if blocked in a.parents and str(a) not in masked:
                args += ["--perms", "0755", "--dir", str(a)]
                masked.add(str(a))
        args += ["--ro-bind", p, p]
    return args


class Sandbox:
    """`Sandbox().run(["python", "-c", "..."], workdir)`; `isolation` says what protection applies."""

    def __init__(self, limits: Limits | None = None, unsafe: bool = False, expose: list[str] | None = None):
        self.limits = limits or Limits()
        self.bwrap = shutil.which("bwrap")
        self.is_root = os.geteuid() == 0
        if self.bwrap is None and not unsafe:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install -y bubblewrap) "
                "or pass --unsafe-no-sandbox to run generated code without isolation"
            )
        self.expose = expose if expose is not None else [sys.prefix, sys.base_prefix]
        if self.bwrap is None:
            self.isolation = "none (--unsafe-no-sandbox): rlimits and timeout only"
        elif self.is_root:
            self.isolation = f"bwrap (uid {SANDBOX_UID} via setpriv, no network, read-only host, rlimits)"
        else:
            self.isolation = f"bwrap (unprivileged uid {os.getuid()}, no network, read-only host, rlimits)"

    def _prlimit(self) -> list[str]:
        lim = self.limits
        return [
            "prlimit",
            f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}",  # SIGXCPU at the soft limit, SIGKILL a second later
            f"--as={lim.memory_mb * 1024 * 1024}",
            f"--fsize={lim.file_size_mb * 1024 * 1024}",
            f"--nproc={lim.max_processes}",
            "--core=0",
            "--",
        ]

    def command(self, argv: list[str], workdir: Path) -> tuple[list[str], str]:
        """The full host command line and the cwd it runs in."""
        if self.bwrap is None:
            return self._prlimit() + argv, str(workdir)
        bin_dir = os.path.dirname(sys.executable)
        env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": INNER_DIR, "LANG": "C.UTF-8"}
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": "/tmp"})
        bw = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
        bw += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        bw += ["--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]  # = _EMPTIED
        bw += _expose_args(self.expose)
        bw += ["--bind", str(workdir), INNER_DIR, "--chdir", INNER_DIR, "--clearenv"]
        for k, v in env.items():
            bw += ["--setenv", k, v]
        if self.is_root:
            # NOTE: bwrap mounts as root (it can reach paths under /root), then setpriv drops to a real
            # unprivileged uid with no capabilities; --unshare-all without a user namespace keeps uids real.
            bw = [a for a in bw if a != "--unshare-all"]
            bw[1:1] = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
            drop = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
            drop += ["--inh-caps=-all", "--bounding-set=-all", "--"]
            return self._prlimit() + bw + ["--"] + drop + argv, "/"
        return self._prlimit() + bw + ["--"] + argv, "/"

    def prepare(self, workdir: Path) -> None:
        """Hand the writable directory to the sandbox uid (as root), so it can write there and nowhere else."""
        if self.bwrap is None or not self.is_root:
            return
        for root, dirs, files in os.walk(workdir):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), SANDBOX_UID, SANDBOX_UID)
        os.chown(workdir, SANDBOX_UID, SANDBOX_UID)

    def run(self, argv: list[str], workdir: str | Path, stdin: str | None = None) -> SandboxResult:
        workdir = Path(workdir).resolve()
        self.prepare(workdir)
        cmd, cwd = self.command(argv, workdir)
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group, so a timeout kills everything it spawned
        )
        cap = self.limits.max_output_bytes
        out, err, dropped = bytearray(), bytearray(), [0, 0]

        def drain(stream, buf: bytearray, i: int) -> None:
            while chunk := stream.read(65536):
                keep = max(0, cap - len(buf))
                buf += chunk[:keep]
                dropped[i] += len(chunk) - min(keep, len(chunk))

        readers = [
            threading.Thread(target=drain, args=(proc.stdout, out, 0), daemon=True),
            threading.Thread(target=drain, args=(proc.stderr, err, 1), daemon=True),
        ]
        for r in readers:
            r.start()
        if stdin is not None:
            try:
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
        is_timeout = False
        try:
            proc.wait(timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            is_timeout = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for r in readers:
            r.join(timeout=5)
        return SandboxResult(
            returncode=proc.returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration_s=round(time.monotonic() - start, 3),
            is_timeout=is_timeout,
            num_truncated_bytes=sum(dropped),
        )
