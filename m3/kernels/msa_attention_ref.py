"""Reference block-sparse attention (msa.md step 4): each query attends exactly to the tokens of its selected blocks.

Query tokens are grouped into their query blocks and handled a tile of blocks at a time, gathering only the
selected keys, so memory is O(tile * K * S), never O(n^2). Remap (msa.md "Positions"): remote blocks are scored
with q_remote against un-rotated keys k_raw; local blocks with q against k.
"""

import math

import torch

_TILE = 16  # query blocks per gather


def sparse_attention_ref(
    q: torch.Tensor,
    q_pos: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sel: torch.Tensor,
    qblock_ids: torch.Tensor,
    block_size: int,
    *,
    q_remote: torch.Tensor | None = None,
    k_raw: torch.Tensor | None = None,
    is_local: torch.Tensor | None = None,
    is_remap: torch.Tensor | None = None,
    token_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one sequence's query tokens over its selected blocks.

    q: (T, H, D) post-RoPE queries at absolute positions q_pos (T,), consecutive and ascending;
    k, v: (L, Hkv, D) the sequence's keys/values in logical order (L = tokens cached including these);
    sel: (Q, Hkv, K) selected logical blocks per query block, -1 padded; qblock_ids: (Q,) absolute index of each
    query block (row); by default one row per distinct q_pos // block_size, in order.
    token_rows: (T,) row of sel for each token, when rows are not whole blocks (e.g. recomputed decode tokens,
    which keep the one-token query blocks they had when first decoded).
    Remap: q_remote (T, H, D) queries rotated at the fixed remote angle, k_raw (L, Hkv, D) keys with RoPE undone,
    is_local (Q, Hkv, K) from local_mask_ref, is_remap (Q,) bool which query blocks use remapped positions.
    Returns (T, H, D) in q's dtype; the math runs in float32.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    seq_len = k.shape[0]
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=torch.float32, device=q.device)
    row = token_rows
    if row is None:  # (T,) row of each token in sel; tokens are consecutive so rows are runs
        token_block = torch.div(q_pos, block_size, rounding_mode="floor")
        row = torch.searchsorted(qblock_ids.to(token_block.dtype).contiguous(), token_block)
    offs = torch.arange(block_size, device=q.device)
    heads = torch.arange(num_kv_heads, device=q.device)[None, :, None]
    for start in range(0, sel.shape[0], _TILE):
        stop = min(start + _TILE, sel.shape[0])
        tok = ((row >= start) & (row < stop)).nonzero().squeeze(1)  # (Tt,)
        if tok.numel() == 0:
            continue
        blk = sel[start:stop]  # (Qt, Hkv, K)
        key_idx = blk[..., None] * block_size + offs  # (Qt, Hkv, K, S)
        valid = (blk[..., None] >= 0) & (key_idx < seq_len)
        key_idx = key_idx.clamp(0, seq_len - 1).flatten(2)  # (Qt, Hkv, K*S)
        valid = valid.flatten(2)
        ks = k[key_idx, heads].float()  # (Qt, Hkv, K*S, D)
        vs = v[key_idx, heads].float()
        # -- lay the tile's tokens out as (row, slot): the keys are gathered once per row, not per token --
        t_row = row[tok] - start  # (Tt,) tile row of each token
        first = torch.searchsorted(t_row, torch.arange(stop - start, device=q.device))  # rows are runs
        slot = torch.arange(len(tok), device=q.device) - first[t_row]
        width = int(slot.max()) + 1
        qpad = torch.zeros(stop - start, width, num_heads, head_dim, device=q.device)
        qpad[t_row, slot] = q[tok].float()
        qpad = qpad.view(stop - start, width, num_kv_heads, group, head_dim)  # (Qt, C, Hkv, G, D)
        s = torch.einsum("qchgd,qhkd->qhgck", qpad, ks) * scale  # (Qt, Hkv, G, C, K*S)
        if q_remote is not None and is_remap is not None and bool(is_remap[start:stop].any()):
            kr = k_raw[key_idx, heads].float()
            qr = torch.zeros(stop - start, width, num_heads, head_dim, device=q.device)
            qr[t_row, slot] = q_remote[tok].float()
            qr = qr.view(stop - start, width, num_kv_heads, group, head_dim)
            s_remote = torch.einsum("qchgd,qhkd->qhgck", qr, kr) * scale
            local = is_local[start:stop, ..., None].expand(-1, -1, -1, block_size).flatten(2)  # (Qt, Hkv, K*S)
            use_remote = (~local & is_remap[start:stop, None, None])[:, :, None, None, :]
            s = torch.where(use_remote, s_remote, s)
        # -- token-causal mask: no key after its query (padding slots see position -1: masked, dropped) --
        pos_pad = torch.full((stop - start, width), -1, dtype=q_pos.dtype, device=q.device)
        pos_pad[t_row, slot] = q_pos[tok]
        mask = valid[:, :, None, :] & (key_idx[:, :, None, :] <= pos_pad[:, None, :, None])  # (Qt, Hkv, C, K*S)
        s = s.masked_fill(~mask[:, :, None], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        o = torch.einsum("qhgck,qhkd->qchgd", p, vs)  # (Qt, C, Hkv, G, D)
        out[tok] = o[t_row, slot].reshape(-1, num_heads, head_dim)
    return out.to(q.dtype)


def dense_attention_ref(q: torch.Tensor, q_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact causal attention of one sequence: q (T, H, D) at positions q_pos over k, v (L, Hkv, D).

    Queries go in tiles so the (tile, L) mask and scores stay small at long contexts.
    """
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    kk = k.float().repeat_interleave(num_heads // num_kv_heads, dim=1).transpose(0, 1)  # (H, L, D)
    vv = v.float().repeat_interleave(num_heads // num_kv_heads, dim=1).transpose(0, 1)
    tile = max(1, (1 << 22) // max(1, k.shape[0]))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    keys = torch.arange(k.shape[0], device=q.device)
    for start in range(0, q.shape[0], tile):
        qt, pt = q[start : start + tile], q_pos[start : start + tile]
        last = int(pt.max()) + 1  # keys after the tile's last query are masked anyway: skip them
        mask = keys[None, :last] <= pt[:, None]  # (Tt, L')
        o = torch.nn.functional.scaled_dot_product_attention(
            qt.float().transpose(0, 1), kk[:, :last], vv[:, :last], attn_mask=mask
        )
        out[start : start + tile] = o.transpose(0, 1).to(q.dtype)
    return out
