"""`m3 eval longctx`: the long-context suite from the command line. Engine and MSA flags are generated from Config;
--attention picks dense, msa or both (side by side), --variant adds further MSA rows with other knobs."""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from m3.config import Config
from m3.eval.longctx.tasks import FORMS, HAYSTACKS, TASKS

DEFAULT_TASKS = (
    "passkey",
    "needle_single",
    "needle_multikey",
    "needle_multivalue",
    "variable_tracking",
    "common_words",
)


def parse_lengths(text: str) -> list[int]:
    """ "4096,8k,128K,1M" -> [4096, 8192, 131072, 1048576] (k = 1024, M = 1024**2)."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        scale = {"k": 1 << 10, "m": 1 << 20}.get(item[-1].lower(), 1)
        number = item[:-1] if scale > 1 else item
        if not number.isdigit() or int(number) <= 0:
            raise argparse.ArgumentTypeError(f"bad length {item!r}: use positive integers like 4096, 32k or 1M")
        out.append(int(number) * scale)
    return out


def parse_depths(text: str) -> list[float]:
    """Percentages "0,25,50,75,100" -> fractions."""
    out = []
    for item in filter(None, (x.strip().rstrip("%") for x in text.split(","))):
        value = float(item)
        if not 0 <= value <= 100:
            raise argparse.ArgumentTypeError(f"depth {item!r} is outside 0-100 (%)")
        out.append(value / 100)
    return out


def parse_tasks(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    names = list(TASKS) if names == ["all"] else names
    for name in names:
        if name not in TASKS:
            raise argparse.ArgumentTypeError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return names


def add_longctx_args(p: argparse.ArgumentParser) -> None:
    """The suite's flags plus one flag per Config field (engine and MSA knobs)."""
    from m3.cli import add_dataclass_flags

    add_dataclass_flags(p, Config, "engine and MSA knobs (Config; shared by every variant)")
    g = p.add_argument_group("suite")
    g.add_argument(
        "--tasks", type=parse_tasks, default=list(DEFAULT_TASKS), help=f"comma list or all: {', '.join(TASKS)}"
    )
    g.add_argument("--lengths", type=parse_lengths, default=[4096], help="prompt lengths in tokens: 4096,8k,32k,1M")
    g.add_argument("--depths", type=parse_depths, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="needle depths in %%")
    g.add_argument("--samples", type=int, default=5, help="samples per (task, length, depth) cell")
    g.add_argument("--seed", type=int, default=0, help="seeds every generated prompt")
    g.add_argument("--form", choices=FORMS, default="completion", help="plain completion, or the chat template")
    g.add_argument("--haystack", choices=HAYSTACKS, default="noise", help="filler for needles (passkey: always noise)")
    # NOTE: replaces the generated --attention (conflict_handler="resolve"): "both" is not a Config value.
    g.add_argument(
        "--attention", choices=("dense", "msa", "both"), default="both", help="dense, msa, or both side by side"
    )
    g.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE,...",
        help="a further MSA row with other knobs, e.g. msa-db1024:dense_below=1024 (repeatable)",
    )
    g.add_argument(
        "--dense-up-to",
        type=parse_lengths,
        default=None,
        metavar="LENGTH",
        help="run the dense variant only at grid lengths up to this (dense reference attention is O(n^2))",
    )
    g.add_argument("--max-concurrent", type=int, default=4, help="sequences whose KV fits at once (sizes the cache)")
    g.add_argument("--out", help="JSON path (default benchmarks/results/longctx-<time>.json); the PNG goes beside it")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def add_longctx_parser(eval_subparsers) -> None:
    """Registers `longctx` under `m3 eval`."""
    p = eval_subparsers.add_parser(
        "longctx",
        help="long-context suite: passkey, needles, variable tracking, common words; dense vs MSA",
        conflict_handler="resolve",
    )
    add_longctx_args(p)
    p.set_defaults(func=cmd_longctx)


def variants_from_args(args: argparse.Namespace) -> list:
    from m3.cli import dataclass_from_args
    from m3.eval.longctx.runner import Variant, parse_variant

    chosen, args.attention = args.attention, None  # the base Config keeps its own default; variants set it
    base = dataclass_from_args(Config, args)
    args.attention = chosen
    modes = ["dense", "msa"] if chosen == "both" else [chosen]
    dense_up_to = args.dense_up_to[0] if args.dense_up_to else None
    variants = [
        Variant(m, dataclasses.replace(base, attention=m), dense_up_to if m == "dense" else None) for m in modes
    ]
    variants += [parse_variant(text, base) for text in args.variant]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ; got {', '.join(names)}")
    return variants


def run(args: argparse.Namespace, extra: dict | None = None) -> dict:
    """Build the grid, evaluate every variant, print the table, write JSON (+ heat-map PNG); returns the record."""
    from rich.console import Console

    from m3.eval.longctx.report import results_table, save_heatmap
    from m3.eval.longctx.runner import evaluate, load_tokenizer
    from m3.eval.longctx.tasks import build_samples

    variants = variants_from_args(args)
    if args.samples < 1:
        raise ValueError(f"samples must be >= 1; got {args.samples}")
    start = time.monotonic()
    tokenizer = load_tokenizer(args.model or "")
    samples = build_samples(
        tokenizer,
        args.tasks,
        args.lengths,
        args.depths,
        args.samples,
        seed=args.seed,
        form=args.form,
        haystack=args.haystack,
    )
    if not args.quiet:
        print(
            f"{len(samples)} prompts ({sum(s.num_tokens for s in samples):,} tokens) x {len(variants)} variants: "
            + ", ".join(v.name for v in variants),
            file=sys.stderr,
        )
    out = Path(args.out or f"benchmarks/results/longctx-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = {
        "tasks": args.tasks,
        "lengths": args.lengths,
        "depths": args.depths,
        "samples": args.samples,
        "seed": args.seed,
        "form": args.form,
        "haystack": args.haystack,
    }

    def write(result: dict) -> dict:
        record = {
            "benchmark": "longctx",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": args.model or "SmolLM2-135M-Instruct (default GGUF)",
            "grid": grid,
            **(extra or {}),
            **result,
            "total_seconds": round(time.monotonic() - start, 1),
        }
        out.write_text(json.dumps(record, indent=2))
        return record

    result = evaluate(
        samples, variants, max_concurrent=args.max_concurrent, progress=not args.quiet, on_variant_done=write
    )
    record = write(result)
    console = Console()
    console.print(results_table(record))
    png = save_heatmap(record, os.fspath(out.with_suffix(".png")))
    console.print(f"wrote {out}" + (f" and {png}" if png else " (no heat-map: matplotlib is not installed)"))
    return record


def cmd_longctx(args: argparse.Namespace) -> int:
    run(args)
    return 0
