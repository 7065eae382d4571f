"""Plans (daily token quota, requests per minute, priority) and the per-key request-rate limiter.

The defaults are the announcement's: Plus 100K tokens/day, Max 500K tokens/day with priority, Ultra unlimited.
Override or add plans with a TOML file (`m3 serve --plans FILE`):

    [plans.team]
    tokens_per_day = 2000000   # omit for unlimited
    requests_per_minute = 600
    priority = 1               # higher is admitted first when the engine is saturated
"""

import math
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    tokens_per_day: int | None  # None = unlimited
    requests_per_minute: int
    priority: int = 0


DEFAULT_PLANS = {
    "plus": Plan("plus", 100_000, 60, priority=0),
    "max": Plan("max", 500_000, 300, priority=1),
    "ultra": Plan("ultra", None, 1_000, priority=2),
}


def load_plans(path: str | None = None, extra: dict[str, Plan] | None = None) -> dict[str, Plan]:
    """The default plans, updated from a TOML file's [plans.NAME] tables and then from `extra`."""
    plans = dict(DEFAULT_PLANS)
    if path:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        for name, spec in data.get("plans", {}).items():
            unknown = set(spec) - {"tokens_per_day", "requests_per_minute", "priority"}
            if unknown:
                raise ValueError(f"plan {name!r} in {path}: unknown field(s) {', '.join(sorted(unknown))}")
            base = plans.get(name, Plan(name, None, 60))
            plans[name] = Plan(
                name,
                spec.get("tokens_per_day", base.tokens_per_day if name in plans else None),
                int(spec.get("requests_per_minute", base.requests_per_minute)),
                int(spec.get("priority", base.priority)),
            )
    plans.update(extra or {})
    return plans


@dataclass
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until a slot frees up (the Retry-After when not allowed)


class RateLimiter:
    """Sliding one-minute window of request times per key (in memory: per server process)."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self._hits: dict[int, deque] = {}
        self._lock = threading.Lock()

    def hit(self, key_id: int, limit: int) -> RateDecision:
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key_id, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= limit:
                return RateDecision(False, limit, 0, max(0.001, hits[0] + self.window_s - now))
            hits.append(now)
            reset = hits[0] + self.window_s - now
            return RateDecision(True, limit, limit - len(hits), reset)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
