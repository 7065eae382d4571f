"""Operator CLI (keys create/list/revoke, usage, analyze) and repository packing for long-context analysis."""

import argparse
import os

import pytest

from m3.analyze import pack_path
from m3.server.cli import add_server_parsers, main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parsers_register_on_a_foreign_parser():
    parser = argparse.ArgumentParser(prog="m3")
    add_server_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--port", "9000", "--max-num-seqs", "4", "--database", "sqlite:///x.db"])
    assert (args.host, args.port, args.max_num_seqs, args.database) == ("127.0.0.1", 9000, 4, "sqlite:///x.db")
    assert callable(args.func)
    for argv in (["keys", "list"], ["usage", "--days", "3"], ["analyze", ".", "task"]):
        assert callable(parser.parse_args(argv).func)


def test_keys_and_usage(capsys, tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("M3_DATABASE_URL", db)  # the default for every command
    code, out, err = run(capsys, "keys", "create", "--plan", "max", "--name", "alice")
    assert code == 0 and out.startswith("m3-") and "shown only once" in err
    key = out.strip()
    code, out, _ = run(capsys, "keys", "create", "--plan", "gold", "--name", "bob")
    assert code == 2
    assert run(capsys, "keys", "create", "--name", "alice")[0] == 2  # names are unique

    from m3.server.ledger import Ledger

    ledger = Ledger(db)
    record = ledger.authenticate(key)
    assert record is not None and record.plan == "max"
    assert key not in open(tmp_path / "cli.db", "rb").read().decode("latin-1")  # only the hash is stored
    ledger.reserve(record, "r1", "chat.completions", "m", 10, 110, 500_000)
    ledger.settle("r1", 10, 25)
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0 and "alice" in out and "max" in out and "active" in out and "35" in out and "500,000" in out
    code, out, _ = run(capsys, "usage", "--key", "alice", "--days", "1")
    lines = out.splitlines()
    assert lines[0].split() == ["day", "key", "plan", "requests", "prompt", "completion", "billed"]
    assert lines[2].split()[1:] == ["alice", "max", "1", "10", "25", "35"] and lines[-1].split()[0] == "total"
    code, out, _ = run(capsys, "keys", "revoke", "alice")
    assert code == 0 and ledger.authenticate(key) is None
    assert "revoked" in run(capsys, "keys", "list")[1]
    assert run(capsys, "keys", "revoke", "nobody")[0] == 2


def test_pack_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src" / "sub").mkdir(parents=True)
    (repo / "build").mkdir()
    (repo / ".git").mkdir()
    (repo / ".gitignore").write_text("build/\n*.log\n")
    (repo / "src" / ".gitignore").write_text("secret.txt\n")
    (repo / "src" / "a.py").write_text("print('a')\n")
    (repo / "src" / "sub" / "b.md").write_text("# B")
    (repo / "src" / "secret.txt").write_text("hidden")
    (repo / "build" / "out.py").write_text("x")
    (repo / "run.log").write_text("log")
    (repo / ".git" / "HEAD").write_text("ref")
    (repo / "logo.png").write_bytes(b"\x89PNG\x00\x00binary")
    (repo / "big.txt").write_text("y" * 2000)
    packed = pack_path(str(repo), max_file_bytes=1000)
    assert packed.files == [".gitignore", "src/.gitignore", "src/a.py", "src/sub/b.md"]
    assert dict(packed.skipped) == {"big.txt": "larger than 1000 bytes", "logo.png": "binary"}
    assert "<file path=\"src/a.py\">\nprint('a')\n</file>\n" in packed.text
    assert '<file path="src/sub/b.md">\n# B\n</file>\n' in packed.text  # a newline is added before the closing tag
    single = pack_path(str(repo / "src" / "a.py"))
    assert single.files == ["a.py"]
    with pytest.raises(FileNotFoundError):
        pack_path(str(repo / "missing"))


def test_analyze_command_reports_the_overflow(live, capsys, tmp_path):
    big = tmp_path / "big.py"
    big.write_text("x = 1\n" * 400)  # far past the tiny model's 512 tokens
    code, out, err = run(
        capsys,
        "analyze",
        str(big),
        "what is x?",
        "--base-url",
        live.api,
        "--api-key",
        live.keys["max"],
        "--max-tokens",
        "16",
    )
    assert code == 1 and "tokens over the model's context limit of 512" in err
    small = tmp_path / "small.py"
    small.write_text("x = 1\n")
    code, out, err = run(
        capsys,
        "analyze",
        str(small),
        "what is x?",
        "--base-url",
        live.api,
        "--api-key",
        live.keys["max"],
        "--max-tokens",
        "4",
    )
    assert code == 0 and "packed 1 file(s)" in err and "prompt +" in err
    assert "tokens of the model's 512-token context" in err
    assert os.path.exists(small)
