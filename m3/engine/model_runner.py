"""ModelRunner: owns the model weights and the paged KV cache; turns a scheduled batch into one forward pass
and one sampled token per sequence that finished computing its tokens this step."""

import torch

from m3.config import Config
from m3.engine.scheduler import ScheduledBatch
from m3.layers.attention import AttentionMetadata, LayerCache, MSAParams
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

    def _bytes_per_block(self) -> int:
        a = self.args
        elem = torch.tensor([], dtype=self.dtype).element_size()
        summaries = (6 if self.uses_remap else 3) * a.num_kv_heads * a.head_dim
        return a.num_layers * elem * (2 * self.block_size * a.num_kv_heads * a.head_dim + summaries)

    def _blocks_for(self, gigabytes: float) -> int:
        return max(1, int(gigabytes * 2**30) // self._bytes_per_block())

    def _allocate_cache(self):
        a, nb, bs = self.args, self.num_blocks, self.block_size
        kv_shape = (nb, bs, a.num_kv_heads, a.head_dim)  # (NB, S, Hkv, D)
        sum_shape = (nb, a.num_kv_heads, a.head_dim)  # (NB, Hkv, D)
        zeros = lambda shape: torch.zeros(shape, dtype=self.dtype, device=self.device)  # noqa: E731
        for attn in self.model.attention_layers():
            raw = (zeros(sum_shape), zeros(sum_shape), zeros(sum_shape)) if self.uses_remap else (None, None, None)
            attn.cache = LayerCache(
                zeros(kv_shape), zeros(kv_shape), zeros(sum_shape), zeros(sum_shape), zeros(sum_shape), *raw
            )

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
            filled_blocks=t(filled),
            filled_block_starts=t(filled_starts),
            q_start_t=t(q_start, torch.int32),
            seq_lens_t=t(seq_lens, torch.int32),
        )
        return t(input_ids), meta, sample_rows

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[tuple[int, dict | None] | None]:
        """One forward pass; per sequence the (token, logprobs) sampled, or None while its prefill continues."""
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

    def selected_share(self) -> float | None:
        """Mean share of cached blocks that MSA layers read in their last sparse step (None if none ran)."""
        shares = [a.last_selected_share for a in self.model.attention_layers() if a.last_selected_share is not None]
        return sum(shares) / len(shares) if shares else None
