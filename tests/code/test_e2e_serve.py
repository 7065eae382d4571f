"""End to end: `m3 code run` as a subprocess against a real `m3 serve` subprocess (the default model,
SmolLM2-135M-Instruct, on 127.0.0.1 with a temporary SQLite ledger), sandboxed with bubblewrap.

A 135M model plans and codes poorly; what is checked is the pipeline, not the code: the run reaches a final
state (planning repaired or, after the repair budget, the whole task run as one sub-task), every sub-task was
attempted and ended in a final state (or, if a valid plan of many sub-tasks uses up `--max-calls`, the run is
`stopped` with that reason), everything is in the run store (run, tasks, events, report), the token
counts come from the server's usage, and the server's ledger billed the key for exactly the run's calls.
Kept to well under 90 s on 2 CPU cores by small per-reply and step budgets.
"""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO_ROOT, make_workspace, needs_bwrap

from m3.code.store import DONE_STATES, Store

pytestmark = [pytest.mark.slow, needs_bwrap]

TASK = "Add a function mul(a, b) to calc.py that returns a * b, and a test for it in test_calc.py."
CALC = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def m3(*argv: str) -> list[str]:
    return [sys.executable, "-m", "m3.cli", *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "m3 serve exited during startup"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


@pytest.fixture
def serve(tmp_path):
    """A real `m3 serve` with the default model, and an ultra key named 'e2e' in its ledger."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    created = subprocess.run(
        m3("keys", "create", "--plan", "ultra", "--name", "e2e", "--database", db),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    assert key.startswith("m3-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    cmd = m3("serve", "--port", str(port), "--database", db, "--no-embeddings", "--sampling-seed", "0")
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc, timeout=120)
        yield url, key, db, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_code_run_against_m3_serve_records_everything(tmp_path, serve):
    url, key, db, env = serve
    ws = make_workspace(tmp_path / "ws", {"calc.py": CALC, "test_calc.py": TEST})
    run = [
        *m3("code", "run", TASK, "--workspace", str(ws), "--base-url", url + "/v1", "--api-key", key),
        *("--run-id", "e2e", "--max-parallel", "2", "--max-steps", "3", "--max-reply-tokens", "128"),
        *("--max-calls", "12", "--request-timeout", "120", "--test-cmd", "python -m pytest -q", "--json"),
    ]
    start = time.monotonic()
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    print(f"m3 code run: exit {proc.returncode} in {seconds:.1f}s\n{proc.stdout}")  # shown with -s or on failure
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 0: done, 1: finished but not everything merged
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    # the run reached a final state, sandboxed, with usage that came from the real server
    assert report["run_id"] == "e2e" and report["status"] in ("done", "failed", "stopped")
    stopped = report["status"] == "stopped"  # a valid plan of many sub-tasks can use up --max-calls: resumable
    assert not stopped or "max_calls 12" in report["reason"]
    assert (report["status"] == "done") == (proc.returncode == 0)
    assert report["isolation"].startswith("bwrap")
    assert report["num_calls"] >= 2 and report["num_tokens"] > report["num_calls"] * 100  # prompts are long
    assert 1 <= report["planning"]["attempts"] <= 3

    # every sub-task was attempted and ended; the planner's calls and the agents' calls add up
    tasks = report["tasks"]
    assert tasks and all(t["status"] in DONE_STATES or (stopped and t["status"] == "pending") for t in tasks)
    if report["planning"]["fallback"]:
        assert [(t["id"], t["agent"]) for t in tasks] == [("task", "developer")]
    attempted = [t for t in tasks if t["attempts"] >= 1]
    assert attempted and all(t["num_steps"] >= 1 and t["num_tokens"] > 0 for t in attempted)
    assert all(t["status"] in ("blocked", "pending") for t in tasks if t["attempts"] == 0)  # not started (yet)
    assert all(t["status"] == "blocked" for t in tasks if t["attempts"] == 0 and not stopped)
    assert all(t["error"] for t in tasks if t["status"] not in ("merged", "pending"))  # every failure says why
    assert sum(t["num_tokens"] for t in tasks) < report["num_tokens"]  # the rest is planning
    assert report["tests"] is not None and isinstance(report["tests"]["returncode"], int)

    # the run store has the same story: run, report, tasks, and the event log of every transition
    store = Store(ws / ".m3code" / "runs.db")
    stored = store.get_run("e2e")
    assert stored["status"] == report["status"] and stored["num_tokens"] == report["num_tokens"]
    assert json.loads(stored["report"]) == report
    kinds = [e["kind"] for e in store.events("e2e")]
    assert kinds[:2] == ["run_created", "isolation"] and kinds[-1] == "run_" + report["status"]
    attempts = [e["data"] for e in store.events("e2e", kind="plan_attempt")]
    assert len(attempts) == report["planning"]["attempts"]
    assert all(a.get("ok") or (a["problems"] and "reply" in a) for a in attempts)  # what the model said, and why not
    assert kinds.count("plan_fallback") == int(report["planning"]["fallback"])
    assert kinds.count("started") == sum(t["attempts"] for t in tasks)
    assert kinds.count("step") == sum(t["num_steps"] for t in tasks)
    assert {"tests", *(t["status"] for t in tasks)} <= set(kinds)
    store.close()
    status = subprocess.run(
        m3("code", "status", "e2e", "--workspace", str(ws), "--json"), env=env, capture_output=True, text=True
    )
    assert status.returncode == 0 and json.loads(status.stdout)["tasks"] == tasks

    # the server's ledger billed the key for exactly these calls and tokens
    usage = subprocess.run(
        m3("usage", "--key", "e2e", "--days", "1", "--database", db), env=env, capture_output=True, text=True
    )
    assert usage.returncode == 0, usage.stderr
    rows = [line.split() for line in usage.stdout.splitlines() if line.split()[1:2] == ["e2e"]]
    assert len(rows) == 1, usage.stdout
    requests, prompt, completion, billed = (int(x.replace(",", "")) for x in rows[0][3:7])
    assert requests == report["num_calls"] and prompt + completion == billed == report["num_tokens"]

    # the user's branch is untouched; the results (if any) are on the run's branch
    assert (ws / "calc.py").read_text() == CALC
    assert seconds < 300
