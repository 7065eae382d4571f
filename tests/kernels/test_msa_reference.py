"""The MSA reference ops against msa.md: exact when the budget covers everything, equal to a naive masked dense
attention built from the same selection, never a future block, Quest bound is an upper bound."""

import math

import pytest
import torch

from m3.kernels.kv_cache_ref import rope, summarize_blocks_ref, unrope
from m3.kernels.msa_attention_ref import dense_attention_ref, sparse_attention_ref
from m3.kernels.msa_select_ref import block_scores_ref, local_mask_ref, select_blocks_ref


def _case(seq_len: int, num_kv_heads: int, group: int, head_dim: int = 16, block_size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(seq_len, num_kv_heads, head_dim, generator=g)
    v = torch.randn(seq_len, num_kv_heads, head_dim, generator=g)
    q = torch.randn(seq_len, num_kv_heads * group, head_dim, generator=g)
    num_full = seq_len // block_size
    blocks = k[: num_full * block_size].view(num_full, block_size, num_kv_heads, head_dim)
    return q, k, v, (blocks.mean(1), blocks.amin(1), blocks.amax(1))


def _qblocks(q: torch.Tensor, pos: torch.Tensor, block_size: int):
    ids, counts = torch.unique_consecutive(pos // block_size, return_counts=True)
    qbar = torch.stack([t.mean(0) for t in torch.split(q, counts.tolist())])
    return ids, qbar


def _naive(q, pos, k, v, sel, qblock_ids, block_size, q_remote=None, k_raw=None, is_local=None):
    """Dense attention with an explicit (T, H, L) token mask from the selection."""
    num_heads, num_kv_heads, seq_len = q.shape[1], k.shape[1], k.shape[0]
    group = num_heads // num_kv_heads
    row = torch.searchsorted(qblock_ids, pos // block_size)
    key_block = torch.arange(seq_len) // block_size
    allowed = torch.zeros(len(pos), num_heads, seq_len, dtype=torch.bool)
    remote = torch.zeros_like(allowed)
    for t in range(len(pos)):
        for h in range(num_heads):
            chosen = sel[row[t], h // group]
            inside = torch.isin(key_block, chosen[chosen >= 0])
            allowed[t, h] = inside & (torch.arange(seq_len) <= pos[t])
            if is_local is not None:
                local_blocks = chosen[is_local[row[t], h // group]]
                remote[t, h] = inside & ~torch.isin(key_block, local_blocks)
    kk = k.repeat_interleave(group, 1)
    s = torch.einsum("thd,lhd->thl", q, kk) / math.sqrt(q.shape[-1])
    if q_remote is not None:
        s_remote = torch.einsum("thd,lhd->thl", q_remote, k_raw.repeat_interleave(group, 1)) / math.sqrt(q.shape[-1])
        s = torch.where(remote, s_remote, s)
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
    return torch.einsum("thl,lhd->thd", p, v.repeat_interleave(group, 1))


@pytest.mark.parametrize("group", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("seq_len", [5, 8, 37, 100])
@pytest.mark.parametrize("score", ["bound", "mean"])
def test_full_budget_equals_dense(group, seq_len, score):
    q, k, v, sums = _case(seq_len, 2, group)
    pos = torch.arange(seq_len)
    ids, qbar = _qblocks(q, pos, 8)
    sel = select_blocks_ref(qbar, ids, *sums, sink_blocks=1, window_blocks=1, topk_blocks=64, score=score)
    out = sparse_attention_ref(q, pos, k, v, sel, ids, 8)
    torch.testing.assert_close(out, dense_attention_ref(q, pos, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("seq_len", [61, 150])
def test_sparse_equals_naive_masked_dense(group, seq_len):
    q, k, v, sums = _case(seq_len, 2, group, seed=group)
    pos = torch.arange(seq_len)
    ids, qbar = _qblocks(q, pos, 8)
    sel = select_blocks_ref(qbar, ids, *sums, sink_blocks=1, window_blocks=2, topk_blocks=3, score="bound")
    assert ((sel >= 0).sum(-1) < len(ids)).any(), "the budget must actually drop blocks"
    out = sparse_attention_ref(q, pos, k, v, sel, ids, 8)
    torch.testing.assert_close(out, _naive(q, pos, k, v, sel, ids, 8), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, dense_attention_ref(q, pos, k, v), atol=1e-3)


def test_chunk_and_decode_queries_over_a_cached_prefix():
    """Queries of a later prefill chunk and a single decode token, against the whole cached sequence."""
    q, k, v, sums = _case(83, 3, 4, seed=7)
    for start in (64, 82):  # a block-aligned chunk, then one decode token
        pos = torch.arange(start, 83)
        ids, qbar = _qblocks(q[start:], pos, 8)
        sel = select_blocks_ref(qbar, ids, *sums, sink_blocks=1, window_blocks=1, topk_blocks=2, score="mean")
        out = sparse_attention_ref(q[start:], pos, k, v, sel, ids, 8)
        torch.testing.assert_close(out, _naive(q[start:], pos, k, v, sel, ids, 8), atol=1e-5, rtol=1e-5)


def test_selection_shape_forced_blocks_and_no_future_block():
    q, k, v, sums = _case(200, 2, 3, seed=3)
    pos = torch.arange(200)
    ids, qbar = _qblocks(q, pos, 8)
    sink, window, topk = 2, 3, 4
    sel = select_blocks_ref(qbar, ids, *sums, sink_blocks=sink, window_blocks=window, topk_blocks=topk, score="bound")
    assert sel.shape == (len(ids), 2, sink + window + 1 + topk)
    for r, i in enumerate(ids.tolist()):
        for h in range(2):
            chosen = sel[r, h][sel[r, h] >= 0].tolist()
            assert chosen == sorted(set(chosen)), "ascending, no duplicates"
            assert max(chosen) == i, "the current block, and never a future one"
            forced = set(range(min(sink, i))) | set(range(max(sink, i - window), i)) | {i}
            assert forced <= set(chosen)
            num_candidates = max(0, i - window - sink)
            assert len(chosen) == len(forced) + min(topk, num_candidates)


def test_topk_picks_the_highest_scoring_candidates():
    q, k, v, sums = _case(160, 1, 4, seed=11)
    pos = torch.arange(152, 160)
    ids, qbar = _qblocks(q[152:], pos, 8)  # query block 19: candidates are blocks 1..16
    sel = select_blocks_ref(qbar, ids, *sums, sink_blocks=1, window_blocks=2, topk_blocks=3, score="mean")
    s = block_scores_ref(qbar, *sums, "mean")[0, 0]  # (G, N)
    p = torch.softmax(s[:, 1:17], -1).sum(0)
    expected = set((p.topk(3).indices + 1).tolist())
    assert expected <= set(sel[0, 0].tolist())


def test_bound_score_bounds_every_key_in_the_block():
    q, k, v, (kmean, kmin, kmax) = _case(64, 2, 1, seed=5)
    bound = block_scores_ref(q, kmean, kmin, kmax, "bound")[:, :, 0, :]  # (T, Hkv, N)
    exact = torch.einsum("thd,lhd->thl", q, k) / 4.0  # sqrt(16)
    per_block = exact.view(64, 2, 8, 8).amax(-1)  # (T, Hkv, N)
    assert (bound >= per_block - 1e-5).all()


def test_summaries_and_remap_match_naive():
    """Remap: remote blocks score q_remote against un-rotated keys; local blocks keep true positions."""
    from m3.layers.rotary import RotaryEmbedding

    rot = RotaryEmbedding(16, 10000.0)
    seq_len, bs = 120, 8
    q_raw, k_raw, v, _ = _case(seq_len, 2, 3, seed=9)
    pos = torch.arange(seq_len)
    cos, sin = rot.cos_sin(pos)
    k = rope(k_raw, cos[:, None], sin[:, None])
    q = rope(q_raw, cos[:, None], sin[:, None])
    # summaries of un-rotated keys, computed from the rotated cache as the engine does
    cache = k.view(seq_len // bs, bs, 2, 16)
    sums = [torch.zeros(seq_len // bs, 2, 16) for _ in range(3)]
    c, s = rot.cos_sin(torch.arange(seq_len).view(-1, bs))
    summarize_blocks_ref(cache, torch.arange(seq_len // bs), *sums, unrotate=(c, s))
    torch.testing.assert_close(sums[0], k_raw.view(-1, bs, 2, 16).mean(1), atol=1e-5, rtol=1e-5)
    window = 2
    cw, sw = rot.cos_sin(torch.tensor([window * bs]))
    q_remote = rope(q_raw, cw[:, None], sw[:, None])
    ids, qbar = _qblocks(q_remote, pos, bs)
    sel = select_blocks_ref(qbar, ids, *sums, sink_blocks=1, window_blocks=window, topk_blocks=2, score="bound")
    local = local_mask_ref(sel, ids, window)
    kr = unrope(k, cos[:, None], sin[:, None])
    out = sparse_attention_ref(
        q,
        pos,
        k,
        v,
        sel,
        ids,
        bs,
        q_remote=q_remote,
        k_raw=kr,
        is_local=local,
        is_remap=torch.ones_like(ids, dtype=torch.bool),
    )
    expected = _naive(q, pos, k, v, sel, ids, bs, q_remote=q_remote, k_raw=kr, is_local=local)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    plain = sparse_attention_ref(q, pos, k, v, sel, ids, bs)
    assert not torch.allclose(out, plain, atol=1e-3), "remap must change remote scores"
