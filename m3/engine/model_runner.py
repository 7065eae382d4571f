"""ModelRunner: owns the model weights and the paged KV cache; turns a scheduled batch into one forward pass
and one sampled token per sequence that finished computing its tokens this step.

On CUDA, decode steps (one query token per sequence) replay CUDA graphs: one per padded batch size (and remap
choice), captured on first use. Per step the host copies four small rows (token, position, slot, length) and the
block-table rows that changed into static device buffers, replays the whole model, then summarises any KV block the
step filled (its summary is first read by a later step: a filled block is the current block, never scored).
"""

import torch

from m3.config import Config
from m3.engine.scheduler import ScheduledBatch
from m3.kernels.kv_cache_ref import summary_tensors
from m3.layers.attention import AttentionMetadata, FilledBlocks, LayerCache, MSAParams, remap_from_block
from m3.layers.sampler import Sampler
from m3.models.args import ModelArgs
from m3.models.llama import CausalLM


def resolve_device_dtype(config: Config) -> tuple[torch.device, torch.dtype]:
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA GPU is available")
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return torch.device(device), getattr(torch, dtype)


GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class ModelRunner:
    def __init__(self, config: Config, args: ModelArgs, state_dict: dict[str, torch.Tensor], max_model_len: int):
        self.device, self.dtype = resolve_device_dtype(config)
        self.block_size = config.block_size
        self.args = args
        for i in config.dense_layers:
            if not 0 <= i < args.num_layers:
                raise ValueError(
                    f"dense_layers entry {i} is not a layer index (the model has {args.num_layers} layers)"
                )
        msa = [
            MSAParams(
                use_msa=config.attention == "msa" and i not in config.dense_layers,
                block_size=config.block_size,
                sink_blocks=config.sink_blocks,
                window_blocks=config.window_blocks,
                topk_blocks=config.topk_blocks,
                dense_below=config.dense_below,
                score=config.score,
                positions=config.positions,
                trained_len=args.max_position_embeddings,
            )
            for i in range(args.num_layers)
        ]
        with torch.device("meta"):
            model = CausalLM(args, msa).to(self.dtype)  # no memory yet: 7B in float32 would not be wasted
        model = model.to_empty(device=self.device)
        model.load_weights(state_dict)
        self.model = model.eval()
        self.sampler = Sampler()
        self.generator = torch.Generator()
        if config.sampling_seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(config.sampling_seed)
        # -- KV cache: remapped positions need raw-key summaries too ("auto" remaps a query block that reaches past the
        # trained length, so a partial last block counts whole) --
        padded_len = -(-max_model_len // config.block_size) * config.block_size
        self.uses_remap = config.attention == "msa" and (
            config.positions == "remap" or (config.positions == "auto" and padded_len > args.max_position_embeddings)
        )
        self.num_blocks = config.num_kv_blocks or self._blocks_for(config.kv_cache_gb)
        if self.num_blocks * self.block_size < max_model_len:
            raise ValueError(
                f"the KV cache holds {self.num_blocks * self.block_size} tokens, fewer than "
                f"max_model_len={max_model_len}; raise kv_cache_gb / num_kv_blocks or lower max_model_len"
            )
        self._allocate_cache()
        self.use_graphs = self.device.type == "cuda" and config.cuda_graphs
        self.max_model_len = max_model_len
        self._graph_sizes = [b for b in GRAPH_BATCH_SIZES if b < config.max_num_seqs] + [config.max_num_seqs]
        self._graphs: dict[tuple[int, int | None], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._static: dict[str, torch.Tensor] | None = None
        self._pool = None
        self._slot_tables: list[tuple[list[int] | None, int]] = []  # per batch slot: (table object, entries written)

    def _bytes_per_block(self) -> int:
        a = self.args
        elem = torch.tensor([], dtype=self.dtype).element_size()
        summaries = (2 if self.uses_remap else 1) * a.num_kv_heads * a.head_dim * (elem + 2)  # mean + float8 min/max
        return a.num_layers * (elem * 2 * self.block_size * a.num_kv_heads * a.head_dim + summaries)

    def _blocks_for(self, gigabytes: float) -> int:
        return max(1, int(gigabytes * 2**30) // self._bytes_per_block())

    def _allocate_cache(self):
        a, nb, bs = self.args, self.num_blocks, self.block_size
        kv_shape = (nb, bs, a.num_kv_heads, a.head_dim)  # (NB, S, Hkv, D)
        zeros = lambda shape: torch.zeros(shape, dtype=self.dtype, device=self.device)  # noqa: E731
        sums = lambda: summary_tensors(nb, a.num_kv_heads, a.head_dim, self.dtype, self.device)  # noqa: E731
        for attn in self.model.attention_layers():
            raw = sums() if self.uses_remap else (None, None, None)
            attn.cache = LayerCache(zeros(kv_shape), zeros(kv_shape), *sums(), *raw)

    def prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, AttentionMetadata, list[int]]:
        bs = self.block_size
        input_ids, positions, slots, cu, q_start, seq_lens, filled, filled_starts, sample_rows = (
            [],
            [],
            [],
            [0],
            [],
            [],
            [],
            [],
            [],
        )
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = seq.num_computed_tokens
            end = start + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(seq.block_table[p // bs] * bs + p % bs for p in range(start, end))
            cu.append(cu[-1] + n)
            q_start.append(start)
            seq_lens.append(end)
            for j in range(start // bs, end // bs):  # blocks whose last slot is written now
                if (j + 1) * bs <= end and (j + 1) * bs > start:
                    filled.append(seq.block_table[j])
                    filled_starts.append(j * bs)
            if end == len(seq):
                sample_rows.append(cu[-1] - 1)
        max_blocks = max(len(s.block_table) for s in batch.seqs)
        tables = [s.block_table + [-1] * (max_blocks - len(s.block_table)) for s in batch.seqs]
        t = lambda x, dtype=torch.long: torch.tensor(x, dtype=dtype, device=self.device)  # noqa: E731
        meta = AttentionMetadata(
            positions=t(positions),
            slot_mapping=t(slots),
            cu_seqlens_q=t(cu, torch.int32),
            q_start=q_start,
            num_prompt_tokens=[s.num_prompt_tokens for s in batch.seqs],
            seq_lens=seq_lens,
            block_tables=t(tables, torch.int32),
            filled=FilledBlocks(t(filled), t(filled_starts)),
            q_start_t=t(q_start, torch.int32),
            seq_lens_t=t(seq_lens, torch.int32),
            remap_from=remap_from_block(self.model.attention_layers()[0].msa, q_start, seq_lens),
        )
        return t(input_ids), meta, sample_rows

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[tuple[int, dict | None] | None]:
        """One forward pass; per sequence the (token, logprobs) sampled, or None while its prefill continues."""
        if self.use_graphs and all(n == 1 for n in batch.num_tokens) and len(batch) <= self._graph_sizes[-1]:
            hidden, sample_rows = self._replay_decode(batch), list(range(len(batch)))
        else:
            input_ids, meta, sample_rows = self.prepare(batch)
            hidden = self.model(input_ids, meta.positions, meta)
        sampling = [seq for seq, n in zip(batch.seqs, batch.num_tokens) if seq.num_computed_tokens + n == len(seq)]
        if not sampling:
            return [None] * len(batch)
        logits = self.model.logits(hidden[sample_rows])  # (B', V)
        tokens, logprobs = self.sampler(
            logits,
            [s.params for s in sampling],
            [s.token_ids for s in sampling],
            [s.num_prompt_tokens for s in sampling],
            [s.generator for s in sampling],
            self.generator,
        )
        by_seq = {s.seq_id: (tok, lp) for s, tok, lp in zip(sampling, tokens, logprobs)}
        return [by_seq.get(s.seq_id) for s in batch.seqs]

    # -- CUDA graphs for decode steps --
    def _replay_decode(self, batch: ScheduledBatch) -> torch.Tensor:
        """Hidden states (B, hidden) of a decode step, through the captured graph of its padded batch size."""
        n, bs = len(batch), self.block_size
        size = next(b for b in self._graph_sizes if b >= n)
        st = self._static_buffers()
        width = self._graph_sizes[-1]
        rows = [[0] * width, [0] * width, [-1] * width, [0] * width]  # token, position, slot, length (0 = padding)
        filled, filled_starts = [], []
        for i, seq in enumerate(batch.seqs):
            p = seq.num_computed_tokens
            slot = seq.block_table[p // bs] * bs + p % bs
            rows[0][i], rows[1][i], rows[2][i], rows[3][i] = seq.token_ids[p], p, slot, p + 1
            if (p + 1) % bs == 0:
                filled.append(seq.block_table[p // bs])
                filled_starts.append(p + 1 - bs)
            # block tables only grow (extend) or are replaced (freed): write the new tail, or the whole row when the
            # slot holds another table object than last step (the cached reference keeps that object alive)
            table, (cached, written) = seq.block_table, self._slot_tables[i]
            start = written if cached is table else 0
            if start < len(table):
                st["tables"][i, start : len(table)].copy_(torch.tensor(table[start:], dtype=torch.int32))
                self._slot_tables[i] = (table, len(table))
        st["host"].copy_(torch.tensor(rows, dtype=torch.long))
        st["inputs"].copy_(st["host"], non_blocking=True)  # rows stay contiguous: the kernels read them flat
        # -- which query blocks remap positions: the same choice as an eager step, fixed per graph --
        lens = rows[3][:n]
        remap_from = remap_from_block(self.model.attention_layers()[0].msa, [x - 1 for x in lens], lens)
        key = (size, remap_from)
        if key not in self._graphs:
            self._graphs[key] = self._capture(size, remap_from)
        graph, hidden = self._graphs[key]
        graph.replay()
        layers = self.model.attention_layers()
        if filled:  # (most steps fill no block: no host-to-device copies then)
            t = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
            blocks = FilledBlocks(t(filled), t(filled_starts))
            for attn in layers:
                attn.summarize(blocks)
        for attn in layers:
            attn.record_share(lens)
        return hidden[:n]

    def _static_buffers(self) -> dict[str, torch.Tensor]:
        if self._static is None:
            size = self._graph_sizes[-1]
            max_blocks = -(-self.max_model_len // self.block_size)
            host = torch.zeros(4, size, dtype=torch.long)
            self._static = dict(
                host=host.pin_memory() if self.device.type == "cuda" else host,
                inputs=torch.zeros(4, size, dtype=torch.long, device=self.device),
                tables=torch.zeros(size, max_blocks, dtype=torch.int32, device=self.device),
                cu=torch.arange(size + 1, dtype=torch.int32, device=self.device),
            )
            self._slot_tables = [(None, 0)] * size
        return self._static

    def _graph_forward(self, size: int, remap_from: int | None) -> torch.Tensor:
        st = self._static
        ids, positions, slots, lens = st["inputs"][:, :size]
        seq_lens_t = lens.int()
        meta = AttentionMetadata(
            positions=positions,
            slot_mapping=slots,
            cu_seqlens_q=st["cu"][: size + 1],
            q_start=[0] * size,
            num_prompt_tokens=[0] * size,
            seq_lens=[1] * size,
            block_tables=st["tables"][:size],
            filled=FilledBlocks(*(torch.zeros(0, dtype=torch.long, device=self.device),) * 2),
            q_start_t=seq_lens_t - 1,
            seq_lens_t=seq_lens_t,
            remap_from=remap_from,
        )
        return self.model(ids, positions, meta)

    def _capture(self, size: int, remap_from: int | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # warm up eagerly (Triton compiles, lazily built tables grow) on this step's real inputs: it writes the same
        # K/V the replay writes again
        self._graph_forward(size, remap_from)
        torch.cuda.synchronize()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # shared by every size: one graph runs at a time
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            hidden = self._graph_forward(size, remap_from)
        return graph, hidden

    def selected_share(self) -> float | None:
        """Mean share of cached blocks that MSA layers read in their last sparse step (None if none ran)."""
        shares = [a.last_selected_share for a in self.model.attention_layers() if a.last_selected_share is not None]
        return sum(shares) / len(shares) if shares else None
