"""Long-context quality suite: seeded RULER-style tasks (passkey, needles, variable tracking, common words) run
through m3's engine with dense attention and MSA over a length x depth grid; JSON, table and heat-map out.
See docs/longctx.md."""

from m3.eval.longctx.runner import Variant, evaluate, load_tokenizer, parse_variant, summarize
from m3.eval.longctx.tasks import TASKS, Sample, build_samples, make_sample

__all__ = [
    "TASKS",
    "Sample",
    "Variant",
    "build_samples",
    "evaluate",
    "load_tokenizer",
    "make_sample",
    "parse_variant",
    "summarize",
]
