"""The ledger under concurrency: reservations from many threads never overbook a quota, settlement keeps the
counter equal to the rows, recovery settles orphans. SQLite always; PostgreSQL too when M3_TEST_POSTGRES_URL is set."""

import os
import threading
import uuid

import pytest

from m3.server.ledger import Ledger, QuotaExceeded, hash_key

URLS = ["sqlite"] + ([os.environ["M3_TEST_POSTGRES_URL"]] if os.environ.get("M3_TEST_POSTGRES_URL") else [])


@pytest.fixture(params=URLS)
def ledger(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}" if request.param == "sqlite" else request.param
    ledger = Ledger(url)
    yield ledger
    if not ledger.is_sqlite:
        from m3.server.ledger import metadata

        metadata.drop_all(ledger.engine)
    ledger.close()


def test_concurrent_reservations_never_overbook(ledger):
    key = ledger.create_key(f"k-{uuid.uuid4().hex[:6]}", "plus")[0]
    limit, cost = 3000, 70
    granted, refused = [], []

    def worker():
        for _ in range(15):
            rid = uuid.uuid4().hex
            try:
                ledger.reserve(key, rid, "completions", "m", 20, cost, limit)
            except QuotaExceeded:
                refused.append(rid)
                continue
            granted.append(rid)
            ledger.settle(rid, 20, 30)  # used less than reserved: frees room for others

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) + len(refused) == 120
    assert ledger.check_integrity() == []
    assert ledger.used_today(key) == 50 * len(granted) <= limit
    assert ledger.used_today(key) > limit - cost - 50  # refused only when it truly did not fit


def test_recover_settles_orphans_from_checkpoints(ledger):
    key = ledger.create_key(f"k-{uuid.uuid4().hex[:6]}", "max")[0]
    ledger.reserve(key, "a", "chat.completions", "m", 10, 110, None)
    ledger.checkpoint("a", 42)
    ledger.reserve(key, "b", "chat.completions", "m", 5, 105, None)
    assert ledger.used_today(key) == 215 and ledger.check_integrity() == []
    assert ledger.recover(stale_after_s=3600) == 0  # fresh reservations of a live replica are left alone
    assert ledger.recover() == 2
    assert ledger.used_today(key) == 10 + 42 + 5 and ledger.check_integrity() == []
    ledger.settle("a", 10, 100)  # a late settle of an already-recovered row changes nothing
    assert ledger.used_today(key) == 57


def test_keys_are_hashed_and_checked(ledger):
    record, key = ledger.create_key(f"k-{uuid.uuid4().hex[:6]}", "ultra")
    assert ledger.authenticate(key) == record
    assert ledger.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ledger.authenticate("m3-" + record.key_id) is None and ledger.authenticate("sk-whatever") is None
    stored = {k.key_id for k in ledger.list_keys()}
    assert record.key_id in stored and hash_key(key) != key
