"""The sandbox really isolates: no writes outside the worktree, no network, killed at time/memory/CPU limits."""

import os
import socket
import time

import pytest
from conftest import needs_bwrap

from m3.code import sandbox as sandbox_mod
from m3.code.sandbox import Limits, Sandbox, SandboxUnavailable

pytestmark = needs_bwrap


@pytest.fixture
def box(tmp_path):
    wt = tmp_path / "wt"
    wt.mkdir()
    return Sandbox(Limits(timeout_s=10, cpu_s=10, memory_mb=512)), wt


def py(code: str) -> list[str]:
    return ["python", "-c", code]


def test_writes_inside_worktree_only(box, tmp_path):
    sb, wt = box
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    home = os.path.expanduser("~")
    code = f"""
import os
open('inside.txt', 'w').write('ok')
for target in [{str(outside)!r}, '/etc/m3-escape', {os.getcwd()!r} + '/m3-escape', {home!r} + '/m3-escape']:
    try:
        open(target, 'w').write('escaped')
        print('WROTE', target)
    except OSError as e:
        print('blocked', target, e.errno)
print('uid', os.getuid())
"""
    r = sb.run(py(code), wt)
    assert r.returncode == 0, r.stderr
    assert "WROTE" not in r.stdout and r.stdout.count("blocked") == 4
    assert (wt / "inside.txt").read_text() == "ok"
    assert outside.read_text() == "original"
    assert not os.path.exists("/etc/m3-escape") and not os.path.exists(os.getcwd() + "/m3-escape")
    assert "uid 0" not in r.stdout  # never root inside
    assert sb.isolation.startswith("bwrap")


def test_no_network(box):
    sb, wt = box
    # a server on the host's loopback: reachable from here, not from inside the sandbox
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=3).close()  # the listen backlog accepts from the host
    code = f"""
import socket
for addr in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:
    try:
        socket.create_connection(addr, timeout=3)
        print('CONNECTED', addr)
    except OSError as e:
        print('refused', addr, type(e).__name__)
"""
    r = sb.run(py(code), wt)
    server.close()
    assert r.returncode == 0, r.stderr
    assert "CONNECTED" not in r.stdout and r.stdout.count("refused") == 2


def test_killed_at_wall_clock_limit_with_its_children(tmp_path):
    wt = tmp_path / "wt"
    wt.mkdir()
    sb = Sandbox(Limits(timeout_s=1.5))
    start = time.monotonic()
    r = sb.run(["sh", "-c", "(sleep 30; echo late > late.txt) & sleep 30"], wt)
    assert r.is_timeout and r.killed_by == "wall-clock" and not r.ok
    assert time.monotonic() - start < 10
    time.sleep(0.5)
    assert not (wt / "late.txt").exists()  # the background child died with the group


def test_killed_at_memory_limit(tmp_path):
    wt = tmp_path / "wt"
    wt.mkdir()
    sb = Sandbox(Limits(timeout_s=20, memory_mb=256))
    r = sb.run(py("x = bytearray(1024 * 1024 * 1024); print('ALLOCATED')"), wt)
    assert r.returncode != 0 and "ALLOCATED" not in r.stdout
    assert r.killed_by == "memory"
    assert sb.run(py("x = bytearray(32 * 1024 * 1024); print('small ok')"), wt).stdout.strip() == "small ok"


def test_killed_at_cpu_limit(tmp_path):
    wt = tmp_path / "wt"
    wt.mkdir()
    r = Sandbox(Limits(timeout_s=30, cpu_s=1)).run(py("while True: pass"), wt)
    assert not r.ok and not r.is_timeout and r.killed_by == "cpu"
    assert r.duration_s < 10


def test_output_is_capped(box):
    sb, wt = box
    sb.limits.max_output_bytes = 1000
    r = sb.run(py("print('x' * 100000)"), wt)
    assert r.ok and len(r.stdout) == 1000 and r.num_truncated_bytes == 100001 - 1000


def test_refuses_without_bubblewrap_unless_unsafe(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="--unsafe-no-sandbox"):
        Sandbox()
    sb = Sandbox(Limits(timeout_s=5), unsafe=True)
    assert sb.isolation.startswith("none")
    r = sb.run(["sh", "-c", "echo hi"], tmp_path)
    assert r.stdout == "hi\n"


def test_exposed_paths_under_tmp_stay_reachable(tmp_path):
    """Regression: a checkout (and its venv) under /tmp vanished behind the sandbox's empty /tmp, so `python`
    failed to start in CI clones living there."""
    tool = tmp_path / "venv" / "bin"
    tool.mkdir(parents=True)
    (tool / "hello.txt").write_text("reachable")
    os.chmod(tmp_path, 0o700)  # like a private temp dir: the sandbox uid must still get through
    wt = tmp_path / "wt"
    wt.mkdir()
    sb = Sandbox(Limits(timeout_s=10), expose=[str(tmp_path / "venv"), *Sandbox().expose])
    res = sb.run(["cat", str(tool / "hello.txt")], wt)
    assert res.ok, res.stderr
    assert res.stdout.strip() == "reachable"
