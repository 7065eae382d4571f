"""m3 eval: long-context quality (passkey, needle, RULER-style) and coding (HumanEval, MBPP) benchmarks."""
