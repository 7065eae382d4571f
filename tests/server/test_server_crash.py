"""Ledger integrity across a crash: SIGKILL a real server process while many streams run, restart it, and check
that every key's quota use equals the sum of its ledger rows and that no completed request is missing."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from m3.server.ledger import Ledger, usage
from tests.server.live import auth, free_port, wait_healthy

REPO_ROOT = str(Path(__file__).resolve().parents[2])
NUM_STREAMS = 16


def start_server(model_dir: str, db_url: str, port: int, log) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "m3.server",
        "serve",
        "--model",
        model_dir,
        "--database",
        db_url,
        "--port",
        str(port),
        "--no-embeddings",
        "--checkpoint-s",
        "0.1",
        "--served-model-name",
        "tiny",
        "--log-level",
        "warning",
        "--block-size",
        "8",
    ]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_sigkill_mid_stream_loses_no_usage(tiny_model_dir, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'crash.db'}"
    ledger = Ledger(db_url)
    keys = [ledger.create_key(f"k{i}", "max")[1] for i in range(3)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    proc = start_server(tiny_model_dir, db_url, port, log)
    try:
        wait_healthy(url)
        results = [dict(id=None, chunks=0, usage=None, done=False) for _ in range(NUM_STREAMS)]

        def stream(i: int):
            short = i % 2 == 0
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": f"story {i}"}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 3 if short else 450,
                "ignore_eos": True,
            }
            res = results[i]
            try:
                with httpx.stream(
                    "POST", url + "/v1/chat/completions", json=body, headers=auth(keys[i % 3]), timeout=60
                ) as r:
                    for line in r.iter_lines():
                        if line == "data: [DONE]":
                            res["done"] = True
                        elif line.startswith("data: "):
                            chunk = httpx.Response(200, content=line[6:]).json()
                            res["id"] = chunk["id"]
                            res["chunks"] += bool(chunk["choices"])
                            res["usage"] = chunk.get("usage") or res["usage"]
            except httpx.HTTPError:
                pass  # the server died under us

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(NUM_STREAMS)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while not all(r["done"] if i % 2 == 0 else r["chunks"] >= 4 for i, r in enumerate(results)):
            assert time.time() < deadline, results
            time.sleep(0.01)
        time.sleep(0.3)  # let the long streams checkpoint a few times
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for t in threads:
            t.join(30)

        with ledger.engine.connect() as conn:
            reserved = conn.execute(sa.select(sa.func.count()).where(usage.c.status == "reserved")).scalar()
        assert reserved > 0, "the kill should catch some requests mid-stream"
        assert ledger.check_integrity() == []  # reservations are on the books too

        proc = start_server(tiny_model_dir, db_url, port, log)  # startup settles the orphaned reservations
        wait_healthy(url)
        with ledger.engine.connect() as conn:
            rows = {r.request_id: r for r in conn.execute(sa.select(usage)).all()}
        assert ledger.check_integrity() == []
        assert not [r for r in rows.values() if r.status == "reserved"]
        completed = [r for r in results if r["done"]]
        assert len(completed) >= NUM_STREAMS // 2
        for r in completed:
            row = rows[r["id"]]
            assert row.status == "settled"
            assert (row.prompt_tokens, row.completion_tokens) == (
                r["usage"]["prompt_tokens"],
                r["usage"]["completion_tokens"],
            )
        interrupted = [row for row in rows.values() if row.status == "interrupted"]
        assert interrupted and all(0 < row.completion_tokens < 450 for row in interrupted)  # billed from checkpoints
        for key in ledger.list_keys():
            billed = sum(r.prompt_tokens + r.completion_tokens for r in rows.values() if r.api_key_id == key.id)
            assert ledger.used_today(key) == billed
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
