"""The ledger: API keys, per-request usage rows and per-day quota counters, in SQL (SQLAlchemy Core).

SQLite (WAL, `BEGIN IMMEDIATE`) by default, PostgreSQL by URL (row locks via SELECT ... FOR UPDATE). A request is
reserved before generation (prompt + max_tokens) and settled after with the real count, each in one transaction,
so `quota.used_tokens` always equals the sum of its rows' billed tokens, whatever instant the process dies at.
Rows still `reserved` after a crash are settled by `recover()` at startup from their last checkpoint.
"""

import datetime as dt
import hashlib
import hmac
import os
import secrets
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import event

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("plan", sa.String(50), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False, unique=True),  # public part of the key, for lookup
    sa.Column("key_hash", sa.String(64), nullable=False),  # sha256 hex of the whole key
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(100), nullable=False, unique=True),
    sa.Column("api_key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # UTC date the request was reserved on
    sa.Column("endpoint", sa.String(50), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # reserved | settled | failed | interrupted
    sa.Column("reserved_tokens", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_usage_key_day", "api_key_id", "day"),
)

quota = sa.Table(
    "quota",
    metadata,
    sa.Column("api_key_id", sa.Integer, sa.ForeignKey("api_keys.id"), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("used_tokens", sa.Integer, nullable=False),  # reserved + settled tokens of the day
)


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    plan: str
    key_id: str
    created_at: float
    revoked_at: float | None = None


class QuotaExceeded(Exception):
    def __init__(self, limit: int, used: int, requested: int):
        self.limit, self.used, self.requested = limit, used, requested
        super().__init__(
            f"You exceeded your daily token quota: {used} of {limit} tokens used today, this request needs "
            f"{requested}. The quota resets at 00:00 UTC."
        )


def default_database_url() -> str:
    """M3_DATABASE_URL, else a SQLite file in the user's data directory."""
    if os.environ.get("M3_DATABASE_URL"):
        return os.environ["M3_DATABASE_URL"]
    import platformdirs

    folder = platformdirs.user_data_dir("m3", appauthor=False)
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, 'm3.db')}"


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def seconds_until_reset() -> int:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _billed(row) -> int:
    return row.reserved_tokens if row.status == "reserved" else row.prompt_tokens + row.completion_tokens


class Ledger:
    def __init__(self, url: str | None = None):
        self.url = url or default_database_url()
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        metadata.create_all(self.engine)
        self._write_lock = threading.Lock() if self.is_sqlite else nullcontext()

    def close(self):
        self.engine.dispose()

    @contextmanager
    def _write(self):
        """A write transaction. On SQLite, threads of this process queue on a lock first: SQLite's own busy
        handler sleeps in steps of up to 50 ms, which under concurrent requests costs far more than the write."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    # -- keys --
    def create_key(self, name: str, plan: str) -> tuple[ApiKey, str]:
        """Store a new key's hash; return the record and the key itself (shown once, never stored)."""
        key_id = secrets.token_hex(6)
        key = f"m3-{key_id}-{secrets.token_urlsafe(32)}"
        now = time.time()
        with self._write() as conn:
            if conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == name)).first() is not None:
                raise ValueError(f"a key named {name!r} already exists")
            row_id = conn.execute(
                api_keys.insert().values(name=name, plan=plan, key_id=key_id, key_hash=hash_key(key), created_at=now)
            ).inserted_primary_key[0]
        return ApiKey(row_id, name, plan, key_id, now), key

    def list_keys(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).all()
        return [_key(r) for r in rows]

    def revoke_key(self, name: str) -> ApiKey:
        with self._write() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.name == name)).first()
            if row is None:
                raise ValueError(f"no key named {name!r}")
            if row.revoked_at is None:
                conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(revoked_at=time.time()))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == row.id)).first()
        return _key(row)

    def authenticate(self, key: str) -> ApiKey | None:
        """The live key for this secret, or None. Looks up by the public id, then compares hashes in constant time."""
        parts = key.split("-")
        if len(parts) < 3 or parts[0] != "m3":
            hmac.compare_digest(hash_key(key), "0" * 64)  # NOTE: same work whether or not the format is right
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == parts[1])).first()
        expected = row.key_hash if row is not None else "0" * 64
        if not hmac.compare_digest(hash_key(key), expected) or row is None or row.revoked_at is not None:
            return None
        return _key(row)

    # -- quota and usage --
    def reserve(
        self,
        key: ApiKey,
        request_id: str,
        endpoint: str,
        model: str,
        prompt_tokens: int,
        tokens: int,
        daily_limit: int | None,
    ) -> None:
        """Book `tokens` (prompt + the most the request may generate) against today's quota, or raise QuotaExceeded."""
        day, now = today(), time.time()
        with self._write() as conn:
            used = self._lock_quota(conn, key.id, day)
            if daily_limit is not None and used + tokens > daily_limit:
                raise QuotaExceeded(daily_limit, used, tokens)
            conn.execute(
                usage.insert().values(
                    request_id=request_id,
                    api_key_id=key.id,
                    day=day,
                    endpoint=endpoint,
                    model=model,
                    status="reserved",
                    reserved_tokens=tokens,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._add_used(conn, key.id, day, tokens)

    def checkpoint(self, request_id: str, completion_tokens: int) -> None:
        """Record progress of a running request, so a crash bills what was generated up to here."""
        with self._write() as conn:
            conn.execute(
                usage.update()
                .where(usage.c.request_id == request_id, usage.c.status == "reserved")
                .values(completion_tokens=completion_tokens, updated_at=time.time())
            )

    def settle(self, request_id: str, prompt_tokens: int, completion_tokens: int, status: str = "settled") -> None:
        """Replace the reservation by the real count (status: settled | failed). Idempotent."""
        with self._write() as conn:
            self._settle(conn, request_id, prompt_tokens, completion_tokens, status)

    def recover(self, stale_after_s: float = 0.0) -> int:
        """Settle reservations left by a dead process from their last checkpoint; returns how many."""
        cutoff = time.time() - stale_after_s
        with self._write() as conn:
            rows = conn.execute(
                sa.select(usage).where(usage.c.status == "reserved", usage.c.updated_at <= cutoff)
            ).all()
            for row in rows:
                self._settle(conn, row.request_id, row.prompt_tokens, row.completion_tokens, "interrupted")
        return len(rows)

    def used_today(self, key: ApiKey) -> int:
        with self.engine.connect() as conn:
            used = conn.execute(
                sa.select(quota.c.used_tokens).where(quota.c.api_key_id == key.id, quota.c.day == today())
            ).scalar()
        return used or 0

    def usage_rows(self, key_name: str | None = None, days: int = 7) -> list[dict]:
        """Per key and day: requests, prompt/completion tokens, billed total (newest day first)."""
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days - 1)).strftime("%Y-%m-%d")
        billed = sa.case(
            (usage.c.status == "reserved", usage.c.reserved_tokens),
            else_=usage.c.prompt_tokens + usage.c.completion_tokens,
        )
        query = (
            sa.select(
                api_keys.c.name,
                api_keys.c.plan,
                usage.c.day,
                sa.func.count().label("requests"),
                sa.func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(usage.c.completion_tokens).label("completion_tokens"),
                sa.func.sum(billed).label("billed_tokens"),
            )
            .join(api_keys, api_keys.c.id == usage.c.api_key_id)
            .where(usage.c.day >= since)
            .group_by(api_keys.c.name, api_keys.c.plan, usage.c.day)
            .order_by(usage.c.day.desc(), api_keys.c.name)
        )
        if key_name is not None:
            query = query.where(api_keys.c.name == key_name)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def check_integrity(self) -> list[str]:
        """Every (key, day) whose quota counter differs from the sum of its rows; empty when consistent."""
        problems = []
        with self.engine.connect() as conn:
            sums: dict[tuple[int, str], int] = {}
            for row in conn.execute(sa.select(usage)).all():
                sums[(row.api_key_id, row.day)] = sums.get((row.api_key_id, row.day), 0) + _billed(row)
            counters = {(r.api_key_id, r.day): r.used_tokens for r in conn.execute(sa.select(quota)).all()}
        for k in sorted(set(sums) | set(counters)):
            if sums.get(k, 0) != counters.get(k, 0):
                problems.append(f"key {k[0]} day {k[1]}: quota {counters.get(k, 0)} != rows {sums.get(k, 0)}")
        return problems

    # -- inside a transaction --
    def _lock_quota(self, conn, key_id: int, day: str) -> int:
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        conn.execute(insert(quota).values(api_key_id=key_id, day=day, used_tokens=0).on_conflict_do_nothing())
        return conn.execute(
            sa.select(quota.c.used_tokens).where(quota.c.api_key_id == key_id, quota.c.day == day).with_for_update()
        ).scalar_one()

    def _add_used(self, conn, key_id: int, day: str, delta: int):
        conn.execute(
            quota.update()
            .where(quota.c.api_key_id == key_id, quota.c.day == day)
            .values(used_tokens=quota.c.used_tokens + delta)
        )

    def _settle(self, conn, request_id: str, prompt_tokens: int, completion_tokens: int, status: str):
        row = conn.execute(sa.select(usage).where(usage.c.request_id == request_id).with_for_update()).first()
        if row is None or row.status != "reserved":
            return
        self._lock_quota(conn, row.api_key_id, row.day)
        conn.execute(
            usage.update()
            .where(usage.c.id == row.id)
            .values(
                status=status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, updated_at=time.time()
            )
        )
        self._add_used(conn, row.api_key_id, row.day, prompt_tokens + completion_tokens - row.reserved_tokens)


def _key(row) -> ApiKey:
    return ApiKey(row.id, row.name, row.plan, row.key_id, row.created_at, row.revoked_at)


def _sqlite_on_connect(dbapi_conn, _record):
    # NOTE: autocommit at the driver level, so the "begin" hook's BEGIN IMMEDIATE is the only transaction start.
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process, not a power cut
    dbapi_conn.execute("PRAGMA busy_timeout=30000")
    dbapi_conn.execute("PRAGMA foreign_keys=ON")
