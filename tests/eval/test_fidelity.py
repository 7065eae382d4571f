"""The outward float8 rounding of min/max summaries (kv_cache_ref) and m3.eval.fidelity on the tiny model."""

import torch

from m3.kernels.kv_cache_ref import round_outward_fp8


def _grid() -> torch.Tensor:
    """Every finite float8 e4m3 value, ascending (+0 and -0 once)."""
    grid = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.unique(grid[torch.isfinite(grid)])


def test_round_outward_fp8_is_outward_and_on_the_grid():
    x = torch.cat([torch.randn(4096) * 3, torch.tensor([0.0, -0.0, 448.0, -448.0, 1e-6, -1e-6, 0.3125])])
    up, down = round_outward_fp8(x, up=True), round_outward_fp8(x, up=False)
    assert (up >= x).all() and (down <= x).all()
    for r in (up, down):  # representable in e4m3: the cast back is exact
        assert torch.equal(r.to(torch.float8_e4m3fn).float(), r)
    exact = x.to(torch.float8_e4m3fn).float() == x  # values already on the grid stay
    assert torch.equal(up[exact], x[exact]) and torch.equal(down[exact], x[exact])
    # the nearest grid points: nothing representable lies strictly between x and its rounding (3 mantissa bits)
    assert ((up - x) <= x.abs() / 8 + 2**-9).all() and ((x - down) <= x.abs() / 8 + 2**-9).all()
    assert float(up[-3]) == 2**-9 and float(down[-2]) == -(2**-9)  # tiny values go to the smallest subnormal
    # the same points as a search over the whole grid
    grid = _grid()
    assert torch.equal(up, grid[torch.searchsorted(grid, x, right=False)])
    assert torch.equal(down, grid[torch.searchsorted(grid, x, right=True) - 1])


def test_round_outward_fp8_saturates():
    x = torch.tensor([448.5, 1000.0, -1e9, 447.0, -447.0])
    assert round_outward_fp8(x, up=True).tolist() == [448.0, 448.0, -448.0, 448.0, -416.0]
    assert round_outward_fp8(x, up=False).tolist() == [448.0, 448.0, -448.0, 416.0, -448.0]


def test_fp8_bound_stays_an_upper_bound():
    # the bound score over outward-rounded summaries is >= the bound over the exact ones, for every query sign
    torch.manual_seed(0)
    keys = torch.randn(6, 16, 2, 8) * 2  # (N, S, Hkv, D)
    kmin, kmax = keys.amin(1), keys.amax(1)
    q = torch.randn(5, 2, 8)
    bound = lambda lo, hi: torch.maximum(q[:, None] * lo[None], q[:, None] * hi[None]).sum(-1)  # (5, N, Hkv)
    exact, rounded = bound(kmin, kmax), bound(round_outward_fp8(kmin, False), round_outward_fp8(kmax, True))
    assert (rounded >= exact).all() and (rounded > exact).any()
    # and the true logits of every key stay below it
    true = torch.einsum("qhd,nshd->qnsh", q, keys).amax(2)
    assert (rounded >= true - 1e-5).all()


def test_capture_returns_every_layer_and_the_final_hidden_states(tiny_model_dir):
    from m3.eval.fidelity import attention_recall, capture
    from m3.llm import LLM
    from m3.sampling_params import SamplingParams

    llm = LLM(tiny_model_dir, attention="dense", max_model_len=300)
    ids = list(range(100, 300))
    qk, hidden = capture(llm, ids)
    assert len(qk) == 2 and hidden.shape == (200, 96) and torch.isfinite(hidden).all()
    q, k = qk[0]
    assert q.shape == (200, 6, 16) and k.shape == (200, 2, 16)
    # the captured hidden states give the engine's own next token
    with torch.inference_mode():
        logits = llm.engine.runner.model.logits(hidden[-1:])
    greedy = llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=1))
    assert int(logits.argmax()) == greedy[0].outputs[0].token_ids[0]
    # a budget covering every block recalls all the dense mass
    full = dict(block_size=16, sink_blocks=1, window_blocks=2, topk_blocks=16, score="bound")
    assert abs(attention_recall(q, k, [full], 64)[0] - 1.0) < 1e-5


def test_group_what_ifs_equal_the_softmax_sum_for_one_head_per_group():
    # with G = 1 the per-head softmax is monotone in the logit, so every aggregation picks the same blocks; with G = 2
    # they may differ, and the largest logit is not the softmax sum
    from m3.eval.fidelity import attention_recall

    torch.manual_seed(0)
    q = torch.randn(640, 2, 16)
    cfg = lambda s: dict(block_size=16, sink_blocks=1, window_blocks=2, topk_blocks=4, score=s)  # noqa: E731
    scores = ["bound", "bound_max", "bound_lse", "bound_keys32"]
    one = attention_recall(q, torch.randn(640, 2, 16), [cfg(s) for s in scores], query_from=320)
    assert one[0] == one[1] == one[2] == one[3]
    two = attention_recall(q, torch.randn(640, 1, 16), [cfg(s) for s in scores], query_from=320)
    assert two[0] != two[1] and all(0.0 < r < 1.0 for r in two)
    assert two[3] == two[0]  # msa.md's score at the GPU keys' grid: no near-tie at the top-k boundary here


def test_first_query_block_attends_itself():
    # block 0 is the current block of the first query block (i = 0 < sink_blocks): always selected, so recall is 1
    from m3.eval.fidelity import attention_recall

    torch.manual_seed(1)
    q, k = torch.randn(16, 4, 8), torch.randn(16, 2, 8)
    cfgs = [dict(block_size=16, sink_blocks=1, window_blocks=2, topk_blocks=t, score=s)
            for s in ("bound", "oracle", "bound_max") for t in (0, 4)]  # fmt: skip
    assert attention_recall(q, k, cfgs, query_from=0) == [1.0] * len(cfgs)
