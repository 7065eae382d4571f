"""The Triton kernels on a CUDA GPU against the references at real shapes: S=64, D=64/128, bf16 and fp16,
G in {1,3,4,5,8}, unequal batches with lengths not multiple of 64, cached prefixes, contexts shorter than a block,
tokens on both sides of dense_below, decode batches mixing padding, dense, short and long sequences, and a decode
step replayed from a CUDA graph."""

import os

import pytest
import torch
from msa_cases import (
    check_decode,
    check_decode_given_lists,
    check_kv_cache,
    check_prefill,
    make_batch,
    make_remap,
    naive_prefill,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU"
    ),
]

BF16, F16 = torch.bfloat16, torch.float16
SPECS = [(0, 1000), (512, 300), (0, 37), (128, 200), (700, 1), (0, 0)]  # (cached before the step, query tokens)
KNOBS = dict(block_size=64, sink_blocks=1, window_blocks=3, topk_blocks=4, score="bound", dense_below=300)
DECODE_SPECS = [(20000, 1), (0, 0), (2, 1), (63, 1), (64, 1), (4999, 1), (129, 1), (300, 1), (0, 1), (2000, 1)]
DEFAULTS = dict(block_size=64, sink_blocks=1, window_blocks=16, topk_blocks=32, score="bound", dense_below=1024)


@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("summary_dtype", [torch.float8_e4m3fn, None])
def test_kv_cache(dtype, summary_dtype):
    check_kv_cache("cuda", dtype, num_kv_heads=8, head_dim=128, block_size=64, summary_dtype=summary_dtype)


PREFILL_CASES = [  # (G, dtype, D, score)
    (1, BF16, 128, "bound"), (3, F16, 64, "mean"), (4, BF16, 128, "bound"), (4, F16, 64, "bound"),
    (5, BF16, 64, "bound"), (8, F16, 128, "mean"), (8, BF16, 64, "bound"),
]  # fmt: skip


@pytest.mark.parametrize("group,dtype,head_dim,score", PREFILL_CASES)
def test_prefill(group, dtype, head_dim, score):
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                       device="cuda", seed=group)  # fmt: skip
    check_prefill(batch, {**KNOBS, "score": score})


@pytest.mark.parametrize("inline", [True, False])
def test_prefill_default_knobs_long(inline):
    # pass 1 inside the selection kernel (short prefills) or in its own kernel on tiles of twice the query blocks
    batch = make_batch([(0, 4133), (2048, 1500)], num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16,
                       device="cuda")  # fmt: skip
    check_prefill(batch, DEFAULTS, select_config=dict(INLINE_LSE=inline, LSE_BLOCK_Q=64))


@pytest.mark.parametrize("width", [1 << 14, 1 << 16])
def test_selection_32bit_keys_coarse_scores(width):
    # block tables as wide as a 1M-token (or 4M) sequence's: 32-bit selection keys keep 9 (or 7) mantissa bits of
    # the score (prefill and decode); the chosen blocks still carry the reference score mass within 1%
    import torch.nn.functional as F

    batch = make_batch([(0, 4133), (2048, 1500)], num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16,
                       device="cuda")  # fmt: skip
    batch.block_tables = F.pad(batch.block_tables, (0, width - batch.block_tables.shape[1]), value=-1)
    check_prefill(batch, DEFAULTS)
    dec = make_batch(DECODE_SPECS, num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16, device="cuda",
                     decode=True)  # fmt: skip
    dec.block_tables = F.pad(dec.block_tables, (0, width - dec.block_tables.shape[1]), value=-1)
    check_decode(dec, {**DEFAULTS, "dense_below": 256})


@pytest.mark.parametrize("group,dtype,head_dim", [(4, BF16, 128), (5, F16, 64)])
def test_prefill_two_pages_per_step(group, dtype, head_dim):
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                       device="cuda", seed=7)  # fmt: skip
    # page ids from the list (ids in registers take one page per step)
    check_prefill(batch, {**KNOBS, "topk_blocks": 5}, attn_config=dict(PAGES=2, num_stages=2, IDS_IN_REGS=False))


def test_prefill_full_budget_is_dense():
    batch = make_batch(SPECS, num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16, device="cuda")
    knobs = {**KNOBS, "topk_blocks": 16, "dense_below": 0}
    from m3.kernels.msa_prefill import msa_prefill_attention

    o = msa_prefill_attention(*batch.attention_args(), **knobs)
    everything = torch.arange(20, dtype=torch.int32, device="cuda").expand(64, 2, 20)
    ref32, lowp = naive_prefill(batch, everything, 0), naive_prefill(batch, everything, 0, upcast=False)
    assert (o.float() - ref32).abs().max() <= 2 * (lowp - ref32).abs().max()


DECODE_CASES = [(1, BF16, 128, "bound"), (3, F16, 64, "mean"), (4, BF16, 128, "bound"), (5, F16, 128, "bound"),
                (8, BF16, 64, "mean")]  # fmt: skip


@pytest.mark.parametrize("group,dtype,head_dim,score", DECODE_CASES)
def test_decode(group, dtype, head_dim, score):
    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                       device="cuda", decode=True, seed=group)  # fmt: skip
    check_decode(batch, {**DEFAULTS, "score": score, "dense_below": 256})


@pytest.mark.parametrize("group,dtype", [(4, BF16), (5, F16)])
def test_summaries_in_the_cache_dtype(group, dtype):
    # min/max in the cache dtype (msa.md before session 8; still accepted): scored with operands in that dtype
    kw = dict(num_kv_heads=2, group=group, head_dim=128, block_size=64, dtype=dtype, device="cuda", seed=group,
              summary_dtype=None)  # fmt: skip
    check_prefill(make_batch(SPECS, **kw), KNOBS)
    check_decode(make_batch(DECODE_SPECS, decode=True, **kw), {**KNOBS, "dense_below": 1000})


@pytest.mark.parametrize("seed", range(4))
def test_decode_many_splits_last_program_merges(monkeypatch, seed):
    # many score / top-k / attention splits per (sequence, KV head): the last program of each to finish merges the
    # others' top-ks and combines their partials (cross-program visibility through the atomic counters)
    from m3.kernels import msa_decode

    monkeypatch.setattr(msa_decode, "_SCORE_SPLIT", 32)
    monkeypatch.setattr(msa_decode, "_TOPK_SPLIT", 64)
    monkeypatch.setattr(msa_decode, "_COMBINE_ELEMS", 2 * 4 * 128)
    specs = DECODE_SPECS + [(30_000 + 977 * seed, 1), (9_000, 1)]
    batch = make_batch(specs, num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16, device="cuda",
                       decode=True, seed=seed)  # fmt: skip
    check_decode(batch, {**DEFAULTS, "dense_below": 256})


def test_decode_cuda_graph():
    from m3.kernels.msa_decode import msa_decode_attention

    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16, device="cuda",
                       decode=True)  # fmt: skip
    knobs = {**DEFAULTS, "dense_below": 256}
    q, lens = batch.q.clone(), batch.seq_lens.clone()
    args = lambda: (q, batch.k_cache, batch.v_cache, batch.kmean, batch.kmin, batch.kmax, batch.block_tables, lens)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        msa_decode_attention(*args(), **knobs)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = msa_decode_attention(*args(), **knobs)
    # new step: other queries, shorter sequences (one becomes padding)
    q.copy_(torch.randn_like(q))
    lens.copy_((batch.seq_lens - 2).clamp(min=0))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, msa_decode_attention(*args(), **knobs))


@pytest.mark.parametrize("remapped", [False, True])
def test_decode_sparse_given_lists(remapped):
    # lists not made by msa_decode_select: the kernel reads every page from them (msa_decode_sparse's public path)
    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16, device="cuda",
                       decode=True)  # fmt: skip
    knobs = {**DEFAULTS, "dense_below": 256}
    remap = make_remap(batch, window_blocks=16, from_block=3, decode=True) if remapped else None
    check_decode_given_lists(batch, knobs, remap=remap)


REMAP_CASES = [(1, F16, 128, 0), (4, BF16, 128, 0), (5, F16, 64, 3), (8, BF16, 64, 6)]  # (G, dtype, D, from_block)


@pytest.mark.parametrize("group,dtype,head_dim,from_block", REMAP_CASES)
def test_prefill_remap(group, dtype, head_dim, from_block):
    # window 1 and dense_below 300 (inside block 4): the mixed block has remote pages too
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                       device="cuda", seed=group)  # fmt: skip
    remap = make_remap(batch, window_blocks=1, from_block=from_block)
    # G=4: 256-row tiles, two pages per step, ids from the list (ids in registers take one page per step)
    two_pages = dict(PAGES=2, IDS_IN_REGS=False) if group == 4 else None
    check_prefill(batch, {**KNOBS, "window_blocks": 1}, remap=remap, attn_config=two_pages)


def test_prefill_remap_default_knobs_long():
    batch = make_batch([(0, 4133), (2048, 1500)], num_kv_heads=2, group=4, head_dim=128, block_size=64, dtype=BF16,
                       device="cuda")  # fmt: skip
    check_prefill(batch, DEFAULTS, remap=make_remap(batch, window_blocks=16, from_block=0))


@pytest.mark.parametrize("group,dtype,head_dim,from_block", REMAP_CASES)
def test_decode_remap(group, dtype, head_dim, from_block):
    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                       device="cuda", decode=True, seed=group)  # fmt: skip
    remap = make_remap(batch, window_blocks=16, from_block=from_block, decode=True)
    check_decode(batch, {**DEFAULTS, "dense_below": 256}, remap=remap)
