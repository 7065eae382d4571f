"""`m3 code run/status/review` end to end over HTTP: a fake OpenAI server stands in for `m3 serve`."""

import argparse
import json

import pytest
from conftest import FakeOpenAI, done, make_workspace, needs_bwrap, plan_reply, show, task, write

from m3.code.cli import add_code_parser, main

pytestmark = needs_bwrap


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def test_parser_registers_all_subcommands():
    parser = argparse.ArgumentParser(prog="m3")
    add_code_parser(parser.add_subparsers(dest="command"))
    for argv in (
        ["code", "run", "t"],
        ["code", "resume", "r"],
        ["code", "status"],
        ["code", "review"],
        ["code", "tests", "f.py"],
        ["code", "docs", "."],
        ["code", "fix", "--error", "log"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.func) and args.model == "default" and args.base_url.startswith("http")


def test_run_then_status_over_http(tmp_path, server, capsys):
    ws = make_workspace(tmp_path / "ws", {"greet.py": "def greet():\n    return 'hi'\n"})
    test = "from greet import greet\n\n\ndef test_greet():\n    assert greet() == 'hello'\n"
    server.replies += [
        plan_reply(task("impl", desc="make greet return hello"), task("test", deps=["impl"], caps=["pytest"])),
        json.dumps({"tool": "patch_file", "args": {"path": "greet.py", "search": "'hi'", "replace": "'hello'"}}),
        done("greet returns hello"),
        write("test_greet.py", test),
        json.dumps({"tool": "run", "args": {"command": "python -m pytest -q test_greet.py"}}),
        done("added a passing test"),
    ]
    argv = [
        "code",
        "run",
        "say hello",
        "--workspace",
        str(ws),
        "--base-url",
        server.base_url,
        "--api-key",
        "k",
        "--max-parallel",
        "1",
        "--run-id",
        "e2e",
        "--test-cmd",
        "python -m pytest -q",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "done" and report["num_calls"] == 6
    assert report["tests"]["passed"] == 1 and report["tests"]["returncode"] == 0
    assert {f["path"] for f in report["files_changed"]} == {"greet.py", "test_greet.py"}
    assert [(t["id"], t["agent"], t["status"]) for t in report["tasks"]] == [
        ("impl", "developer", "merged"),
        ("test", "tester", "merged"),
    ]
    assert report["isolation"].startswith("bwrap")
    assert all(r["auth"] == "Bearer k" for r in server.requests)
    assert "'hello'" in show(ws, "m3/e2e/main", "greet.py")
    # the model saw the pytest result of its own run command
    assert "1 passed" in server.requests[5]["body"]["messages"][-1]["content"]

    assert main(["code", "status", "--workspace", str(ws)]) == 0
    assert "e2e" in capsys.readouterr().out
    assert main(["code", "status", "e2e", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "impl" in out and "merged" in out and "bwrap" in out
    assert main(["code", "status", "nope", "--workspace", str(ws)]) == 1


def test_review_command_over_http(tmp_path, server, capsys):
    ws = make_workspace(tmp_path / "ws", {"a.py": "x = 1\n"})
    from m3.code.worktree import ensure_repo

    ensure_repo(ws)
    (ws / "a.py").write_text("x = eval(input())\n")
    finding = {
        "severity": "critical",
        "file": "a.py",
        "line": 1,
        "message": "eval of user input",
        "suggestion": "use int()",
    }
    server.replies.append(json.dumps({"findings": [finding]}))
    assert main(["code", "review", "--workspace", str(ws), "--base-url", server.base_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == [finding]
    assert "eval(input())" in server.requests[0]["body"]["messages"][0]["content"]


def test_cli_refuses_without_bubblewrap(tmp_path, monkeypatch, capsys):
    from m3.code import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    ws = make_workspace(tmp_path / "ws")
    assert main(["code", "run", "x", "--workspace", str(ws), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--unsafe-no-sandbox" in capsys.readouterr().err
    from m3.code.store import Store

    assert Store(ws / ".m3code" / "runs.db").list_runs() == []  # refused before any run was recorded
