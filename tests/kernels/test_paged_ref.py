"""The batched paged references (paged_ref.py) against naive masked dense attention built from their selection,
plus the invariants the Triton launchers rely on: the query-block table, full budget = dense, chunked = whole,
one-token prefill = decode."""

import pytest
import torch
from msa_cases import make_batch, make_remap, naive_decode, naive_prefill

from m3.kernels.paged_ref import (
    msa_decode_attention_ref,
    msa_prefill_attention_ref,
    num_decode_pages,
    prefill_query_blocks,
)

SPECS = [(0, 150), (32, 70), (0, 9), (64, 64), (100, 1), (0, 0)]  # (cached before the step, query tokens)
KNOBS = dict(block_size=16, sink_blocks=1, window_blocks=2, topk_blocks=3, dense_below=40)


def test_query_block_table():
    S = 16
    starts, lens = torch.tensor([0, 32, 0, 64, 100, 7], dtype=torch.int32), torch.tensor([150, 102, 9, 128, 101, 7])
    seq, ids = prefill_query_blocks(int((lens - starts).sum()), starts, lens.int(), S)
    expect = [
        (b, i) for b in range(6) for i in range(int(starts[b]) // S, (int(lens[b]) - 1) // S + 1) if lens[b] > starts[b]
    ]
    got = [(int(b), int(i)) for b, i in zip(seq, ids) if b >= 0]
    assert got == expect
    assert (seq[len(expect) :] == -1).all() and (ids[len(expect) :] == -1).all()


@pytest.mark.parametrize("group", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("score", ["bound", "mean"])
def test_prefill_ref_equals_naive_masked(group, score):
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=16, block_size=16, seed=group)
    o, sel = msa_prefill_attention_ref(*batch.attention_args(), **KNOBS, score=score, return_sel=True)
    # the selection is not trivially everything: some MSA rows leave blocks out
    assert ((sel >= 0).sum(-1) < torch.tensor(SPECS).sum(1).max() // 16).any()
    torch.testing.assert_close(o, naive_prefill(batch, sel, KNOBS["dense_below"]), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 4])
def test_prefill_full_budget_is_dense(group):
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=16, block_size=16)
    knobs = {**KNOBS, "topk_blocks": 64, "dense_below": 0}
    o = msa_prefill_attention_ref(*batch.attention_args(), **knobs, score="bound")
    everything = torch.arange(64, dtype=torch.int32).expand(1000, 2, 64)
    torch.testing.assert_close(o, naive_prefill(batch, everything, 0), atol=2e-5, rtol=1e-5)


def test_chunked_prefill_equals_whole():
    whole = make_batch([(0, 200)], num_kv_heads=2, group=3, head_dim=16, block_size=16, seed=3)
    o = msa_prefill_attention_ref(*whole.attention_args(), **KNOBS, score="bound")
    # second chunk: tokens 96..199 against the cached prefix, block-aligned start
    chunk = make_batch([(96, 104)], num_kv_heads=2, group=3, head_dim=16, block_size=16, seed=3)
    chunk.q = whole.q[96:]
    o2 = msa_prefill_attention_ref(*chunk.attention_args(), **KNOBS, score="bound")
    torch.testing.assert_close(o2, o[96:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("group", [1, 3, 8])
def test_decode_ref_equals_naive_masked(group):
    specs = [(299, 1), (0, 0), (5, 1), (40, 1), (150, 1), (47, 1)]
    batch = make_batch(specs, num_kv_heads=2, group=group, head_dim=16, block_size=16, decode=True, seed=group)
    o, pages = msa_decode_attention_ref(*batch.decode_args(), **KNOBS, score="bound", return_sel=True)
    assert pages.shape[2] == num_decode_pages(16, 1, 2, 3, 40, batch.block_tables.shape[1])
    assert (pages[1] == -1).all() and (o[1] == 0).all()  # padding row
    assert (pages[2, :, :1] == 0).all() and (pages[3, :, :3] == torch.arange(3)).all()  # dense rows list every block
    assert ((pages[0] >= 0).sum(-1) == 7).all()  # 1 sink + 3 top-k + 2 window + current
    torch.testing.assert_close(o, naive_decode(batch, pages), atol=2e-5, rtol=1e-5)


def test_one_token_prefill_equals_decode():
    batch = make_batch([(160, 1), (95, 1)], num_kv_heads=2, group=4, head_dim=16, block_size=16, decode=True)
    o_dec = msa_decode_attention_ref(*batch.decode_args(), **KNOBS, score="mean")
    o_pre = msa_prefill_attention_ref(*batch.attention_args(), **KNOBS, score="mean")
    torch.testing.assert_close(o_pre, o_dec, atol=1e-6, rtol=1e-6)


def test_empty_batch():
    empty = torch.zeros(0, dtype=torch.int32)
    seq, ids = prefill_query_blocks(0, empty, empty, 16)
    assert seq.shape == ids.shape == (0,)


@pytest.mark.parametrize("group,from_block", [(1, 0), (4, 3)])
def test_remap_refs_equal_naive_masked(group, from_block):
    # window 1 and dense_below 40: remote pages for MSA rows, also in the mixed block 2; from_block 3 mixes both kinds
    knobs = {**KNOBS, "window_blocks": 1, "score": "bound"}
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=32, block_size=16, seed=group)
    remap = make_remap(batch, window_blocks=1, from_block=from_block)
    o, sel = msa_prefill_attention_ref(*batch.attention_args(), **knobs, remap=remap, return_sel=True)
    torch.testing.assert_close(o, naive_prefill(batch, sel, 40, remap=remap), atol=2e-5, rtol=1e-5)
    o_true = msa_prefill_attention_ref(*batch.attention_args(), **knobs)
    assert (o - o_true).abs().max() > 1e-2, "remapped positions must change the remote scores"
    dec = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=32, block_size=16, seed=group, decode=True)
    remap = make_remap(dec, window_blocks=1, from_block=from_block, decode=True)
    o, pages = msa_decode_attention_ref(*dec.decode_args(), **knobs, remap=remap, return_sel=True)
    torch.testing.assert_close(o, naive_decode(dec, pages, remap=remap, dense_below=40), atol=2e-5, rtol=1e-5)
