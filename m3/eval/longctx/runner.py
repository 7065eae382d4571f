"""Runs a grid of long-context samples through m3's engine under several attention variants (dense, MSA with
given knobs) and scores them. All prompts of a variant go to the engine at once, which batches and chunks them;
greedy decoding, so a variant's answers are reproducible. The KV cache is sized from the grid unless set.
"""

import dataclasses
import gc
import math
import os
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

from m3.config import Config
from m3.eval.longctx.tasks import Sample
from m3.sampling_params import SamplingParams


@dataclass
class Variant:
    name: str  # row label: "dense", "msa", "msa-db1024", ...
    config: Config
    max_length: int | None = None  # grid lengths above this are skipped (dense past what its kernels can run)


def parse_variant(text: str, base: Config) -> Variant:
    """ "NAME:field=value,field=value" -> Variant with those Config fields changed from `base` (attention defaults to
    msa). dense_layers takes a comma list too: "msa-l0:dense_layers=0,1,dense_below=1024"."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"variant {text!r}: expected NAME:field=value,... (e.g. msa-db1024:dense_below=1024)")
    pairs: list[list[str]] = []
    for piece in filter(None, rest.split(",")):
        if "=" in piece:
            pairs.append(piece.split("=", 1))
        elif pairs:  # a further item of a comma list (dense_layers=0,1)
            pairs[-1][1] += "," + piece
        else:
            raise ValueError(f"variant {text!r}: {piece!r} is not field=value")
    hints = typing.get_type_hints(Config)
    changes: dict = {"attention": "msa"}
    for key, value in pairs:
        key = key.strip().replace("-", "_")
        if key not in hints:
            raise ValueError(f"variant {text!r}: {key!r} is not a Config field")
        changes[key] = _convert(hints[key], value.strip())
    return Variant(name, dataclasses.replace(base, **changes))


def _convert(hint, value: str):
    if typing.get_origin(hint) is tuple:
        return value  # Config parses "0,1"
    kinds = typing.get_args(hint) or (hint,)
    if value.lower() == "none" and type(None) in kinds:
        return None
    for kind in (int, float):
        if kind in kinds:
            return kind(value)
    return value


def load_tokenizer(model: str = ""):
    """The model's tokenizer alone (no weights), to build prompts before any engine loads."""
    from m3.models.loader import default_model_path
    from m3.tokenizer import Tokenizer

    path = model or default_model_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist (expected a .gguf file or a Hugging Face folder)")
    return Tokenizer.from_hf_folder(path) if os.path.isdir(path) else Tokenizer.from_gguf(path)


def sized_config(config: Config, samples: list[Sample], max_concurrent: int) -> Config:
    """Fill max_model_len (the longest grid length) and num_kv_blocks (room for `max_concurrent` of the longest
    sequences) when the config leaves them unset."""
    longest = max(s.num_tokens + s.max_tokens for s in samples)
    changes: dict = {}
    if config.max_model_len is None:
        changes["max_model_len"] = max(s.length for s in samples)
    if config.num_kv_blocks is None:
        per_seq = math.ceil(longest / config.block_size) + 1
        changes["num_kv_blocks"] = per_seq * max(1, min(max_concurrent, len(samples), config.max_num_seqs))
    return dataclasses.replace(config, **changes)


class Progress:
    """Prompt tokens prefilled and prompts finished: a live bar on a terminal, a line every `every_s` otherwise."""

    def __init__(self, label: str, num_prompts: int, num_tokens: int, every_s: float = 30.0, enabled: bool = True):
        self.label, self.num_prompts, self.num_tokens, self.every_s = label, num_prompts, num_tokens, every_s
        self.enabled = enabled
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("prompt tokens"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(label, total=num_tokens)

    def update(self, done: int, tokens: int):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=tokens, description=f"{self.label} ({done}/{self.num_prompts} done)")
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._line(done, tokens)

    def close(self, done: int, tokens: int):
        if self.bar is not None:
            self.bar.stop()
        if self.enabled:
            self._line(done, tokens)

    def _line(self, done: int, tokens: int):
        elapsed = time.monotonic() - self.start
        eta = f", ~{elapsed * (self.num_tokens / tokens - 1) / 60:.1f} min left" if 0 < tokens < self.num_tokens else ""
        print(
            f"[{self.label}] {done}/{self.num_prompts} prompts, {tokens:,}/{self.num_tokens:,} prompt tokens, "
            f"{elapsed / 60:.1f} min{eta}",
            file=sys.stderr,
            flush=True,
        )


def run_samples(llm, samples: list[Sample], label: str = "", progress: bool = True) -> list[dict]:
    """Greedy answers for every sample through one engine (all requests queued at once); one row per sample."""
    engine = llm.engine
    ids = [engine.add_request(s.prompt_ids, SamplingParams(temperature=0.0, max_tokens=s.max_tokens)) for s in samples]
    computed = dict.fromkeys(ids, 0)
    done: dict[str, str] = {}
    bar = Progress(label, len(samples), sum(s.num_tokens for s in samples), enabled=progress)
    try:
        while engine.has_unfinished():
            for out in engine.step():
                computed[out.request_id] = out.num_computed_prompt_tokens
                if out.finished:
                    done[out.request_id] = out.outputs[0].text
                    computed[out.request_id] = out.num_prompt_tokens
            bar.update(len(done), sum(computed.values()))
    finally:
        for rid in ids:
            if rid not in done:
                engine.abort_request(rid)
        bar.close(len(done), sum(computed.values()))
    rows = []
    for s, rid in zip(samples, ids):
        output = done[rid]
        rows.append(
            {
                "task": s.task,
                "length": s.length,
                "depth": s.depth,
                "index": s.index,
                "num_tokens": s.num_tokens,
                "answers": s.answers,
                "output": output,
                "score": s.score(output),
            }
        )
    return rows


def evaluate(
    samples: list[Sample],
    variants: list[Variant],
    *,
    max_concurrent: int = 4,
    progress: bool = True,
    make_llm: Callable[[Config], object] | None = None,
    on_variant_done: Callable[[dict], None] | None = None,
) -> dict:
    """Run every variant over the same samples; returns {"variants", "rows", "summary", "seconds"}.
    on_variant_done gets that result so far after each variant (to save partial results of long runs)."""
    if make_llm is None:
        from m3.llm import LLM

        make_llm = lambda config: LLM(config=config)  # noqa: E731
    rows, configs, seconds = [], {}, {}
    for v in variants:
        todo = [s for s in samples if v.max_length is None or s.length <= v.max_length]
        if not todo:
            continue
        config = sized_config(v.config, todo, max_concurrent)
        configs[v.name] = {"config": dataclasses.asdict(config), "max_length": v.max_length}
        start = time.monotonic()
        llm = make_llm(config)
        loaded = time.monotonic()
        share = None
        try:
            for row in run_samples(llm, todo, v.name, progress):
                rows.append({"variant": v.name, **row})
            share = llm.engine.runner.selected_share()
        finally:
            del llm
            gc.collect()
        seconds[v.name] = {"load": round(loaded - start, 1), "run": round(time.monotonic() - loaded, 1)}
        if share is not None:
            seconds[v.name]["last_msa_block_share"] = round(share, 3)
        if on_variant_done is not None:
            on_variant_done({"variants": configs, "rows": rows, "summary": summarize(rows), "seconds": seconds})
    return {"variants": configs, "rows": rows, "summary": summarize(rows), "seconds": seconds}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean accuracy (0-100) per variant x task x length x depth, per variant x task x length over depths, and per
    variant x task over everything; depth "all" marks the pooled cells."""
    cells: dict[tuple, list[float]] = {}
    tokens: dict[tuple, list[int]] = {}
    for r in rows:
        v, t, length = r["variant"], r["task"], r["length"]
        keys = [(v, t, length, "all"), (v, t, "all", "all")]
        if r["depth"] is not None:
            keys.append((v, t, length, r["depth"]))
        for key in keys:
            cells.setdefault(key, []).append(r["score"])
            tokens.setdefault(key, []).append(r["num_tokens"])
    out = []
    for (variant, task, length, depth), scores in cells.items():
        n = tokens[(variant, task, length, depth)]
        out.append(
            {
                "variant": variant,
                "task": task,
                "length": length,
                "depth": depth,
                "accuracy": round(100 * sum(scores) / len(scores), 2),
                "num_samples": len(scores),
                "mean_tokens": round(sum(n) / len(n)),
            }
        )
    return out
