"""Shared helpers for the agent-cluster tests: a scripted model keyed by sub-task, and small workspaces."""

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # NOTE: the package is not installed in the dev venv
    sys.path.insert(0, str(REPO_ROOT))

HAS_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap not installed (apt-get install -y bubblewrap)")


def plan_reply(*tasks: dict) -> str:
    return "Here is the plan:\n```json\n" + json.dumps({"tasks": list(tasks)}) + "\n```"


def task(tid: str, deps=(), caps=("python",), desc: str | None = None) -> dict:
    return {
        "id": tid,
        "description": desc or f"do {tid}",
        "dependencies": list(deps),
        "required_capabilities": list(caps),
        "estimated_effort": 1,
    }


def write(path: str, content: str) -> str:
    return json.dumps({"tool": "write_file", "args": {"path": path, "content": content}})


def done(summary: str = "done") -> str:
    return json.dumps({"done": True, "summary": summary})


class TaskScript:
    """A `respond` for ScriptedModel: plan replies in order, then per sub-task its own list of actions.

    Safe under parallel workers (each sub-task reads only its own list); records when each call happened and
    can hold a sub-task's first reply for `delay_s`, so tests can observe overlap in time.
    """

    def __init__(self, plans: list[str], actions: dict[str, list[str]], delay_s: float = 0.0):
        self.plans, self.actions, self.delay_s = list(plans), actions, delay_s
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float]] = []

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def __call__(self, messages) -> str:
        first = messages[1]["content"] if len(messages) > 1 else messages[0]["content"]
        m = re.search(r"Your sub-task \((.+?)\):", first)
        if m is None:
            with self.lock:
                self.calls.append(("plan", time.monotonic()))
                return self.plans.pop(0)
        tid = m.group(1)
        step = sum(1 for x in messages if x["role"] == "assistant")
        with self.lock:
            self.calls.append((tid, time.monotonic()))
        if step == 0 and self.delay_s:
            time.sleep(self.delay_s)
        script = self.actions[tid]
        return script[min(step, len(script) - 1)]


def make_workspace(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    for name, content in (files or {"README.md": "# demo\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    return path


def show(ws: Path, ref: str, path: str) -> str:
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "show", f"{ref}:{path}"], cwd=ws, capture_output=True, text=True, check=True
    ).stdout


class FakeOpenAI:
    """A tiny chat-completions server: replies in order; statuses to return first can be queued."""

    def __init__(self, replies=(), statuses=()):
        self.replies, self.statuses, self.requests = list(replies), list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status = outer.statuses.pop(0) if outer.statuses else 200
                text = outer.replies.pop(0) if status == 200 else ""
                data = (
                    {
                        "choices": [{"message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                    }
                    if status == 200
                    else {"error": {"message": "nope"}}
                )
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
