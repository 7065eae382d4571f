"""Live and one-shot views of a run's DAG with rich: which task, which agent, status, steps, tokens.

The views read only the run store, so `m3 code status RUN_ID` shows the same table from another process.
"""

from __future__ import annotations

import os
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from m3.code.store import Store

STYLE = {
    "pending": "dim",
    "started": "yellow",
    "finished": "cyan",
    "merging": "cyan",
    "merged": "green",
    "failed": "red",
    "conflict": "magenta",
    "blocked": "red dim",
}


def run_state(run: dict) -> str:
    """The stored status, or `interrupted` when it says running but its process is gone."""
    if run["status"] in ("planning", "running") and run["pid"]:
        try:
            os.kill(run["pid"], 0)
        except ProcessLookupError:
            return "interrupted (resume it)"
        except PermissionError:
            pass
    return run["status"]


def task_table(store: Store, run_id: str) -> Table:
    run = store.get_run(run_id)
    title = f"run {run_id} · {run_state(run)} · {run['num_tokens']} tokens · {run['num_calls']} calls"
    table = Table(title=title, title_justify="left")
    for col in ("task", "agent", "status", "after", "steps", "tokens", "secs", "note"):
        table.add_column(col, overflow="fold")
    for t in store.tasks(run_id):
        secs = ""
        if t["started_at"]:
            secs = f"{(t['finished_at'] or time.time()) - t['started_at']:.1f}"
        note = (
            (t["error"] or t["summary"] or t["description"] or "").splitlines()[0][:70]
            if (t["error"] or t["summary"] or t["description"])
            else ""
        )
        table.add_row(
            t["id"],
            t["agent"] or "",
            Text(t["status"], style=STYLE.get(t["status"], "")),
            ",".join(t["dependencies"]),
            str(t["num_steps"]),
            str(t["num_tokens"]),
            secs,
            note,
        )
    return table


def status_view(store: Store, run_id: str):
    run = store.get_run(run_id)
    lines = [
        f"task: {run['task']}",
        f"workspace: {run['workspace']}",
        f"isolation: {run['isolation']}",
        f"results branch: {run['branch']}",
    ]
    if run["reason"]:
        lines.append(f"reason: {run['reason']}")
    return Group(task_table(store, run_id), Text("\n".join(lines)))


class LiveView:
    """`with LiveView(store) as view: Runner(..., on_update=view.update)`; prints nothing when not a tty."""

    def __init__(self, store: Store, console: Console | None = None):
        self.store = store
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, run_id: str) -> None:
        now = time.monotonic()
        if self._live is None or now - self._last < 0.25:
            return
        self._last = now
        try:
            self._live.update(task_table(self.store, run_id))
        except KeyError:
            pass
