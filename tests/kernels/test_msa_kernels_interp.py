"""The Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, see conftest.py) against the references at
small shapes: S=16, D=16/32, G in {1,3,4,5,8}, float32/float16/bfloat16, unequal batches with lengths not multiple of
S, cached prefixes, contexts shorter than one block, a one-token row inside a prefill batch, tokens on both sides of
dense_below, decode batches mixing padding, dense, short and long sequences."""

import os

import pytest
import torch

pytest.importorskip("triton")
from msa_cases import (  # noqa: E402
    check_decode,
    check_decode_given_lists,
    check_kv_cache,
    check_prefill,
    make_batch,
    make_remap,
)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter tests run without CUDA")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
SPECS = [(0, 150), (32, 70), (0, 9), (64, 64), (100, 1), (0, 0)]  # (cached before the step, query tokens)
KNOBS = dict(block_size=16, sink_blocks=1, window_blocks=2, topk_blocks=3, score="bound", dense_below=40)
# (cached, new); 80: fewer candidates than top-k
DECODE_SPECS = [(299, 1), (0, 0), (5, 1), (40, 1), (150, 1), (47, 1), (15, 1), (80, 1)]


@pytest.fixture(scope="module", autouse=True)
def _interpreted():
    from m3.kernels import msa_prefill

    if type(msa_prefill._prefill_kernel).__name__ != "InterpretedFunction":
        pytest.skip("kernel modules were imported before TRITON_INTERPRET=1: run tests/kernels on its own")


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("summary_dtype", [torch.float8_e4m3fn, None])
def test_kv_cache(dtype, summary_dtype):
    check_kv_cache("cpu", dtype, summary_dtype=summary_dtype)


PREFILL_CASES = [  # (G, dtype, D, score)
    (1, F32, 16, "bound"), (1, BF16, 32, "mean"),
    (3, F32, 32, "mean"), (3, BF16, 16, "bound"),
    (4, F32, 16, "bound"), (4, F16, 32, "bound"),
    (5, F32, 16, "mean"), (5, F16, 16, "bound"),
    (8, BF16, 16, "bound"), (8, F16, 32, "mean"),
]  # fmt: skip


@pytest.mark.parametrize("group,dtype,head_dim,score", PREFILL_CASES)
def test_prefill(group, dtype, head_dim, score):
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=head_dim, block_size=16, dtype=dtype, seed=group)
    check_prefill(batch, {**KNOBS, "score": score})


@pytest.mark.parametrize("group,dtype", [(3, F16), (8, BF16)])
def test_prefill_two_pages_per_step(group, dtype):
    # odd and even numbers of selected pages: the last step of a row may hold one page
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=32, block_size=16, dtype=dtype, seed=5)
    check_prefill(batch, {**KNOBS, "topk_blocks": 4, "dense_below": 20}, attn_config=dict(PAGES=2))


def test_prefill_odd_head_dim_no_sinks_all_msa():
    batch = make_batch(SPECS, num_kv_heads=2, group=3, head_dim=24, block_size=16)
    check_prefill(batch, {**KNOBS, "sink_blocks": 0, "dense_below": 0})


def test_prefill_no_topk_and_all_dense():
    batch = make_batch(SPECS, num_kv_heads=1, group=4, head_dim=16, block_size=16, dtype=F16)
    check_prefill(batch, {**KNOBS, "topk_blocks": 0})
    check_prefill(batch, {**KNOBS, "dense_below": 1 << 20})


# (G, dtype, MERGE_AT, pass 1: query blocks of its own tiles, or 0 = inside the selection kernel)
STREAM_CASES = [(4, F32, 0, 4), (4, F32, 16, 8), (5, BF16, 2, 8), (3, F32, 2, 4), (4, F32, 2, 0), (5, BF16, 16, 0)]


@pytest.mark.parametrize("group,dtype,merge_at,lse_q", STREAM_CASES)
def test_select_streams_many_candidates(group, dtype, merge_at, lse_q):
    # small tiles: several tiles per sequence and several candidate chunks merged into the running top-k, by sorting
    # (merge_at 0), by replacing minima one by one (merge_at 16 = the chunk width), or both (2); pass 1 on tiles of
    # the same or twice the query blocks (lse_q), or inline (0)
    batch = make_batch([(0, 700), (320, 90)], num_kv_heads=2, group=group, head_dim=16, block_size=16, dtype=dtype,
                       seed=group)  # fmt: skip
    knobs = {**KNOBS, "topk_blocks": 5, "window_blocks": 3}
    pass1 = dict(INLINE_LSE=True) if lse_q == 0 else dict(INLINE_LSE=False, LSE_BLOCK_Q=lse_q)
    check_prefill(batch, knobs, select_config=dict(BLOCK_Q=4, BLOCK_N=16, MERGE_AT=merge_at, **pass1))


@pytest.mark.parametrize("width,dtype", [(1 << 14, BF16), (1 << 16, F16)])
def test_selection_32bit_keys_coarse_scores(width, dtype):
    # block tables as wide as a 1M-token (or 4M) sequence's: 32-bit keys keep 9 (or 7) mantissa bits of the score;
    # prefill and decode still choose blocks carrying the reference score mass within 1%
    import torch.nn.functional as F

    batch = make_batch([(0, 700), (320, 90)], num_kv_heads=2, group=4, head_dim=16, block_size=16, dtype=dtype)
    batch.block_tables = F.pad(batch.block_tables, (0, width - batch.block_tables.shape[1]), value=-1)
    check_prefill(batch, {**KNOBS, "topk_blocks": 5, "window_blocks": 3}, select_config=dict(BLOCK_Q=4, BLOCK_N=16))
    dec = make_batch([(299, 1), (0, 0), (150, 1)], num_kv_heads=2, group=4, head_dim=16, block_size=16, dtype=dtype,
                     decode=True)  # fmt: skip
    dec.block_tables = F.pad(dec.block_tables, (0, width - dec.block_tables.shape[1]), value=-1)
    check_decode(dec, {**KNOBS, "dense_below": 45})


@pytest.mark.parametrize("group,dtype,score", [(1, F32, "bound"), (3, BF16, "mean"), (4, F16, "bound"),
                                               (5, F32, "mean"), (8, BF16, "bound")])  # fmt: skip
def test_decode(group, dtype, score):
    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=group, head_dim=16, block_size=16, dtype=dtype, decode=True,
                       seed=group)  # fmt: skip
    check_decode(batch, {**KNOBS, "score": score, "dense_below": 45})


@pytest.mark.parametrize("group,dtype", [(3, BF16), (4, F32)])
def test_summaries_in_the_cache_dtype(group, dtype):
    # min/max in the cache dtype (msa.md before session 8; still accepted): scored with operands in that dtype
    kw = dict(num_kv_heads=2, group=group, head_dim=16, block_size=16, dtype=dtype, seed=group, summary_dtype=None)
    check_prefill(make_batch(SPECS, **kw), KNOBS)
    check_decode(make_batch(DECODE_SPECS, decode=True, **kw), {**KNOBS, "dense_below": 45})


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_decode_many_splits(monkeypatch, dtype):
    from m3.kernels import msa_decode

    monkeypatch.setattr(msa_decode, "_SCORE_SPLIT", 4)  # several score and top-k splits per sequence
    monkeypatch.setattr(msa_decode, "_TOPK_SPLIT", 8)  # (bf16: 32-bit keys, ids up to 43 in 6 bits)
    batch = make_batch(DECODE_SPECS + [(700, 1)], num_kv_heads=2, group=4, head_dim=32, block_size=16, decode=True,
                       dtype=dtype)  # fmt: skip
    check_decode(batch, {**KNOBS, "topk_blocks": 5})
    check_decode(batch, {**KNOBS, "topk_blocks": 0})
    check_decode(batch, {**KNOBS, "dense_below": 1 << 30})  # a dense layer: every list is 0..i, split evenly


@pytest.mark.parametrize("splits", ["one", "chunked"])
def test_decode_attention_splits(monkeypatch, splits):
    # one split per (sequence, KV head) writes o directly; many splits combined a few partials per load
    from m3.kernels import msa_decode

    if splits == "one":
        monkeypatch.setattr(msa_decode, "decode_splits", lambda b, h, num_pages, device: (num_pages, 1))
    else:
        monkeypatch.setattr(msa_decode, "_COMBINE_ELEMS", 2 * 4 * 32)  # BLOCK_C = 2
    batch = make_batch(DECODE_SPECS + [(700, 1)], num_kv_heads=2, group=3, head_dim=32, block_size=16, decode=True)
    check_decode(batch, KNOBS)


@pytest.mark.parametrize("remapped", [False, True])
def test_decode_sparse_given_lists(remapped):
    # lists not made by msa_decode_select: the kernel reads every page from them (msa_decode_sparse's public path)
    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=4, head_dim=32, block_size=16, dtype=BF16, decode=True)
    knobs = {**KNOBS, "window_blocks": 1, "dense_below": 45}
    remap = make_remap(batch, window_blocks=1, from_block=2, decode=True) if remapped else None
    check_decode_given_lists(batch, knobs, remap=remap)


REMAP_CASES = [  # (G, dtype, window_blocks, dense_below, from_block): all rows remapped, or only later blocks
    (1, F32, 2, 40, 0), (3, BF16, 1, 40, 0), (4, F16, 1, 40, 2), (8, BF16, 2, 0, 5),
]  # fmt: skip


@pytest.mark.parametrize("group,dtype,window,dense_below,from_block", REMAP_CASES)
def test_prefill_remap(group, dtype, window, dense_below, from_block):
    # window 1, dense_below 40: the mixed block (dense and MSA rows) has a remote page; PAGES=2 on the rest
    batch = make_batch(SPECS, num_kv_heads=2, group=group, head_dim=32, block_size=16, dtype=dtype, seed=group)
    knobs = {**KNOBS, "window_blocks": window, "dense_below": dense_below}
    remap = make_remap(batch, window_blocks=window, from_block=from_block)
    check_prefill(batch, knobs, remap=remap, attn_config=dict(PAGES=2) if group == 4 else None)


@pytest.mark.parametrize("group,dtype,from_block", [(1, F32, 0), (4, BF16, 0), (5, F16, 4)])
def test_decode_remap(group, dtype, from_block):
    batch = make_batch(DECODE_SPECS, num_kv_heads=2, group=group, head_dim=32, block_size=16, dtype=dtype, decode=True,
                       seed=group)  # fmt: skip
    knobs = {**KNOBS, "window_blocks": 1, "dense_below": 45}
    check_decode(batch, knobs, remap=make_remap(batch, window_blocks=1, from_block=from_block, decode=True))


def test_prefill_256_row_tiles():
    # the tile real GQA shapes take at S=64 (G=4: one tile per query block); here padded rows past S x G
    batch = make_batch(SPECS, num_kv_heads=2, group=8, head_dim=32, block_size=16, dtype=BF16, seed=9)
    for ids_in_regs in (False, True):  # page ids from the list / held in registers (the H200 default at 256 rows)
        attn_config = dict(BLOCK_M=256, PAGES=1, num_warps=16, num_stages=2, IDS_IN_REGS=ids_in_regs)
        check_prefill(batch, KNOBS, attn_config=attn_config)
    remap = make_remap(batch, window_blocks=1, from_block=2)
    attn_config = dict(BLOCK_M=256, PAGES=1, IDS_IN_REGS=True)
    check_prefill(batch, {**KNOBS, "window_blocks": 1}, remap=remap, attn_config=attn_config)
