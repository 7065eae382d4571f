"""The run store: one SQLite file (WAL) holding runs, their sub-tasks and an append-only event log.

Every transition is committed here *before* it takes effect (a task is `started` before its worker is
submitted, `merging` before the merge), so `m3 code resume` after a crash or kill -9 can tell what finished.
One connection guarded by a lock; synchronous=FULL so a committed transition survives power loss too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, task TEXT NOT NULL, workspace TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, config TEXT NOT NULL, plan TEXT, isolation TEXT, base_commit TEXT, branch TEXT,
    pid INTEGER, num_tokens INTEGER NOT NULL DEFAULT 0, num_calls INTEGER NOT NULL DEFAULT 0,
    elapsed_s REAL NOT NULL DEFAULT 0, report TEXT, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL, id TEXT NOT NULL, ord INTEGER NOT NULL, description TEXT NOT NULL,
    dependencies TEXT NOT NULL, capabilities TEXT NOT NULL, effort REAL NOT NULL,
    status TEXT NOT NULL, agent TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    num_steps INTEGER NOT NULL DEFAULT 0, num_tokens INTEGER NOT NULL DEFAULT 0,
    commit_sha TEXT, summary TEXT, error TEXT, files TEXT,
    started_at REAL, finished_at REAL, PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, task_id TEXT, kind TEXT NOT NULL,
    data TEXT NOT NULL, ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, task_id);
"""

TASK_STATES = ("pending", "started", "finished", "merging", "merged", "failed", "conflict", "blocked")
DONE_STATES = ("merged", "failed", "conflict", "blocked")


class RunNotFound(KeyError):
    pass


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    # -- runs --
    def create_run(self, run_id: str, task: str, workspace: str, config: dict) -> None:
        now = time.time()
        self._write(
            "INSERT INTO runs (id, task, workspace, status, config, created, updated) VALUES (?,?,?,?,?,?,?)",
            (run_id, task, workspace, "planning", json.dumps(config), now, now),
        )
        self.event(run_id, None, "run_created", {"task": task, "config": config})

    def update_run(self, run_id: str, **fields) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def get_run(self, run_id: str) -> dict:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in {self.path}")
        run = rows[0]
        run["config"] = json.loads(run["config"])
        return run

    def list_runs(self) -> list[dict]:
        return self._read("SELECT id, task, status, num_tokens, created FROM runs ORDER BY created")

    def charge(self, run_id: str, num_tokens: int, num_calls: int = 1) -> tuple[int, int]:
        """Add usage; returns the run's totals (tokens, calls) after it."""
        with self._lock:
            self._db.execute(
                "UPDATE runs SET num_tokens = num_tokens + ?, num_calls = num_calls + ? WHERE id = ?",
                (num_tokens, num_calls, run_id),
            )
            row = self._db.execute("SELECT num_tokens, num_calls FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row[0], row[1]

    # -- tasks --
    def set_plan(self, run_id: str, plan_json: str) -> None:
        tasks = json.loads(plan_json)["tasks"]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE runs SET plan = ?, status = 'running', updated = ? WHERE id = ?",
                (plan_json, time.time(), run_id),
            )
            for i, t in enumerate(tasks):
                self._db.execute(
                    "INSERT INTO tasks (run_id, id, ord, description, dependencies, capabilities, effort, status)"
                    " VALUES (?,?,?,?,?,?,?, 'pending')",
                    (
                        run_id,
                        t["id"],
                        i,
                        t["description"],
                        json.dumps(t["dependencies"]),
                        json.dumps(t["capabilities"]),
                        t["effort"],
                    ),
                )
            self._db.execute("COMMIT")
        self.event(run_id, None, "planned", {"tasks": [t["id"] for t in tasks]})

    def set_task(self, run_id: str, task_id: str, status: str | None = None, event: dict | None = None, **fields):
        """Update a task (and log the transition as an event) in one transaction."""
        if status is not None:
            assert status in TASK_STATES, status
            fields["status"] = status
        for k in ("files",):
            if k in fields and not isinstance(fields[k], str | None):
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                f"UPDATE tasks SET {cols} WHERE run_id = ? AND id = ?", (*fields.values(), run_id, task_id)
            )
            self._db.execute(
                "INSERT INTO events (run_id, task_id, kind, data, ts) VALUES (?,?,?,?,?)",
                (run_id, task_id, status or "update", json.dumps(event or {}), time.time()),
            )
            self._db.execute("COMMIT")

    def tasks(self, run_id: str) -> list[dict]:
        rows = self._read("SELECT * FROM tasks WHERE run_id = ? ORDER BY ord", (run_id,))
        for r in rows:
            r["dependencies"] = json.loads(r["dependencies"])
            r["capabilities"] = json.loads(r["capabilities"])
            r["files"] = json.loads(r["files"]) if r["files"] else []
        return rows

    def add_task_usage(self, run_id: str, task_id: str, num_tokens: int, num_steps: int) -> None:
        self._write(
            "UPDATE tasks SET num_tokens = num_tokens + ?, num_steps = num_steps + ? WHERE run_id = ? AND id = ?",
            (num_tokens, num_steps, run_id, task_id),
        )

    # -- events --
    def event(self, run_id: str, task_id: str | None, kind: str, data: dict | None = None) -> None:
        self._write(
            "INSERT INTO events (run_id, task_id, kind, data, ts) VALUES (?,?,?,?,?)",
            (run_id, task_id, kind, json.dumps(data or {}), time.time()),
        )

    def events(self, run_id: str, task_id: str | None = None, kind: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM events WHERE run_id = ?", [run_id]
        if task_id is not None:
            sql, args = sql + " AND task_id = ?", [*args, task_id]
        if kind is not None:
            sql, args = sql + " AND kind = ?", [*args, kind]
        rows = self._read(sql + " ORDER BY seq", tuple(args))
        for r in rows:
            r["data"] = json.loads(r["data"])
        return rows
