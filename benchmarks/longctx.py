"""Long-context accuracy of MSA against dense attention on SmolLM2-135M-Instruct (issue 6), through m3's engine.

Takes every flag of `m3 eval longctx` (see docs/longctx.md) with benchmark defaults: tasks passkey, needle_single,
needle_multikey, variable_tracking, common_words; lengths 4096 and 8192 (inside the trained 8K context); depths
0/25/50/75/100%; 4 samples a cell; variants dense, msa (the Config defaults) and msa-db1024 (dense_below=1024, so
MSA is exercised at 4K too). Writes benchmarks/results/longctx-<date>.json and the heat-map .png beside it.

  python benchmarks/longctx.py                                  # <= 8K: done-means 2 (CPU works; a GPU is faster)
  python benchmarks/longctx.py --device cuda --positions remap --lengths 32k,128k --dense-up-to 128k \\
      --depths 0,10,20,30,40,50,60,70,80,90,100 --samples 5 --max-concurrent 2   # past the trained context
  python benchmarks/longctx.py --device cuda --positions remap --lengths 1M --tasks passkey --attention msa \\
      --depths 0,25,50,75,100 --samples 2 --max-concurrent 1
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine  # noqa: E402

from m3.eval.longctx.cli import add_longctx_args, run  # noqa: E402

TASKS = ["passkey", "needle_single", "needle_multikey", "variable_tracking", "common_words"]
DEFAULT_VARIANTS = ["msa-db1024:dense_below=1024"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve"
    )
    add_longctx_args(ap)
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only combine earlier results into --out (+ table, PNG)")
    ap.add_argument("--no-default-variants", action="store_true", help=f"leave out {', '.join(DEFAULT_VARIANTS)}")
    ap.set_defaults(tasks=TASKS, lengths=[4096, 8192], samples=4)
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if not args.no_default_variants:
        args.variant = DEFAULT_VARIANTS + args.variant
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"longctx-{stamp}.json")
    extra = {
        "machine": machine(),
        "commit": _commit(),
        "command": "python benchmarks/longctx.py " + " ".join(sys.argv[1:]),
    }
    run(args, extra=extra)
    return 0


def _commit() -> str | None:
    """HEAD, with "+dirty" when tracked files differ from it (the run used code that no commit holds)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def merge(paths: list[str], out: str | None) -> int:
    from rich.console import Console

    from m3.eval.longctx.report import merge_records, results_table, save_heatmap

    if not out:
        raise SystemExit("--merge needs --out")
    record = merge_records([json.load(open(p)) for p in paths])
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    Console().print(results_table(record))
    print("wrote", out, save_heatmap(record, os.path.splitext(out)[0] + ".png") or "(no heat-map)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
