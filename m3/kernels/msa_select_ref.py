"""Reference MSA block selection (msa.md "Prefill" steps 1-3): score full KV blocks, take the top-k, add the forced set.

One selection per (query block, KV head), shared by the block's query tokens and the G query heads of the group.
Query blocks are processed in tiles so memory stays at (tile, H, N), never (N, N).
"""

import math

import torch

_TILE = 256  # query blocks scored at once


def block_scores_ref(
    qbar: torch.Tensor, kmean: torch.Tensor, kmin: torch.Tensor | None, kmax: torch.Tensor | None, score: str
) -> torch.Tensor:
    """qbar: (Q, H, D); summaries: (N, Hkv, D) -> raw logits s (Q, Hkv, G, N) of msa.md step 2."""
    num_q, num_heads, head_dim = qbar.shape
    num_kv_heads = kmean.shape[1]
    q = qbar.float().view(num_q, num_kv_heads, num_heads // num_kv_heads, head_dim)  # (Q, Hkv, G, D)
    if score == "mean":
        s = torch.einsum("qhgd,nhd->qhgn", q, kmean.float())
    else:
        # sum_d max(q_d*a_d, q_d*b_d) = max(q,0).kmax + min(q,0).kmin: two dot products (msa.md)
        s = torch.einsum("qhgd,nhd->qhgn", q.clamp(min=0), kmax.float())
        s = s + torch.einsum("qhgd,nhd->qhgn", q.clamp(max=0), kmin.float())
    return s / math.sqrt(head_dim)


def select_blocks_ref(
    qbar: torch.Tensor,
    qblock_ids: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor | None,
    kmax: torch.Tensor | None,
    *,
    sink_blocks: int,
    window_blocks: int,
    topk_blocks: int,
    score: str,
) -> torch.Tensor:
    """Select KV blocks for each query block of one sequence.

    qbar: (Q, H, D) mean (scoring) query of each query block; qblock_ids: (Q,) absolute block index i of each;
    kmean/kmin/kmax: (N, Hkv, D) summaries of the sequence's full blocks in logical order (N >= max i).
    Returns sel (Q, Hkv, K) int64 logical block ids in ascending order, padded with -1 at the end,
    K = sink_blocks + window_blocks + 1 + topk_blocks. Never a block after i.
    """
    num_q = qbar.shape[0]
    num_kv_heads = kmean.shape[1]
    num_full = kmean.shape[0]
    max_sel = sink_blocks + window_blocks + 1 + topk_blocks
    sel = torch.full((num_q, num_kv_heads, max_sel), -1, dtype=torch.long, device=qbar.device)
    blocks = torch.arange(num_full, device=qbar.device)
    for start in range(0, num_q, _TILE):
        ids = qblock_ids[start : start + _TILE].long()  # (Qt,)
        assert int(ids.max()) <= num_full, "every block before a query block must be full"
        # -- forced set: sinks, window, current block --
        forced = (blocks[None, :] < ids.clamp(max=sink_blocks)[:, None]) | (
            (blocks[None, :] >= (ids - window_blocks).clamp(min=sink_blocks)[:, None])
            & (blocks[None, :] < ids[:, None])
        )  # (Qt, N)
        candidate = (blocks[None, :] >= sink_blocks) & (blocks[None, :] < (ids - window_blocks)[:, None])
        # -- score candidates; softmax per query head, summed over the group --
        chosen = torch.zeros(len(ids), num_kv_heads, num_full, dtype=torch.bool, device=qbar.device)
        num_cand = int(candidate.sum(1).max()) if num_full else 0
        if topk_blocks > 0 and num_cand > 0:
            s = block_scores_ref(qbar[start : start + _TILE], kmean, kmin, kmax, score)  # (Qt, Hkv, G, N)
            s = s.masked_fill(~candidate[:, None, None, :], float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num(0.0).sum(dim=2)  # (Qt, Hkv, N)
            p = p.masked_fill(~candidate[:, None, :], float("-inf"))
            k = min(topk_blocks, num_cand)
            top = p.topk(k, dim=-1)
            hit = torch.zeros_like(chosen).scatter_(-1, top.indices, True)
            chosen = hit & candidate[:, None, :]
        chosen |= forced[:, None, :]
        # -- pack as ascending ids; current block i sits after all earlier blocks --
        tile = torch.where(chosen, blocks, num_full + 1).sort(dim=-1).values[..., : max_sel - 1]
        tile = torch.where(tile > num_full, -1, tile)
        n_prev = chosen.sum(-1)  # (Qt, Hkv)
        out = torch.full((len(ids), num_kv_heads, max_sel), -1, dtype=torch.long, device=qbar.device)
        out[..., : tile.shape[-1]] = tile
        out.scatter_(-1, n_prev[..., None], ids[:, None, None].expand(-1, num_kv_heads, 1))
        sel[start : start + _TILE] = out
    return sel


def local_mask_ref(sel: torch.Tensor, qblock_ids: torch.Tensor, window_blocks: int) -> torch.Tensor:
    """(Q, Hkv, K) bool: True where a selected block lies within the window or is the current block.

    These keep their true positions under remap; all other selected blocks (sinks further back, top-k) are remote.
    """
    i = qblock_ids.long()[:, None, None]
    return (sel >= 0) & (sel >= i - window_blocks)
