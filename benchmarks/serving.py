"""Serving benchmark: 1 / 8 / 32 concurrent streaming clients on the default model, through `m3 serve` (HTTP, SSE,
auth, ledger) and, in the same run, straight into the AsyncEngine: the difference is the server's overhead.

Per level: requests/s, output tokens/s, time to first token and per-token latency (p50/p99), and the server's
tokens/s lost against the engine alone. The server runs as its own process (as in production); the load generator
is this process. Usage: python benchmarks/serving.py [--concurrency 1,8,32] [--new-tokens 32] [--min-requests 4]
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import write_record  # noqa: E402

PROMPTS = [
    "Explain how a hash map works.",
    "Write a poem about the sea.",
    "What is the capital of Japan?",
    "Describe photosynthesis.",
    "How do I sort a list in Python?",
    "Tell me a story about a dragon.",
    "What are prime numbers?",
    "Summarise the French revolution.",
]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Tally:
    def __init__(self):
        self.ttft: list[float] = []
        self.gaps: list[float] = []  # seconds between consecutive tokens of one request
        self.tokens = 0
        self.requests = 0

    def summary(self, seconds: float) -> dict:
        ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
        return {
            "requests": self.requests,
            "output_tokens": self.tokens,
            "seconds": round(seconds, 2),
            "requests_per_s": round(self.requests / seconds, 3),
            "output_tokens_per_s": round(self.tokens / seconds, 2),
            "ttft_ms_p50": ms(percentile(self.ttft, 0.5)),
            "ttft_ms_p99": ms(percentile(self.ttft, 0.99)),
            "token_ms_p50": ms(percentile(self.gaps, 0.5)),
            "token_ms_p99": ms(percentile(self.gaps, 0.99)),
        }


async def run_level(one_request, concurrency: int, num_requests: int) -> dict:
    """`concurrency` clients share `num_requests` requests; each client runs its requests one after another."""
    tally = Tally()
    queue = list(range(num_requests))

    async def client():
        while queue:
            i = queue.pop()
            await one_request(PROMPTS[i % len(PROMPTS)] + f" ({i})", tally)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally.summary(time.perf_counter() - start)


# -- straight into the engine --
def direct_runner(engine, new_tokens: int):
    from m3.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True, temperature=0.7, seed=0)

    async def one_request(prompt: str, tally: Tally):
        start = last = time.perf_counter()
        seen = 0
        async for out in engine.generate(prompt, params):
            n = len(out.outputs[0].token_ids)
            if n > seen:
                now = time.perf_counter()
                if seen == 0:
                    tally.ttft.append(now - start)
                else:
                    tally.gaps.extend([(now - last) / (n - seen)] * (n - seen))
                last, seen = now, n
        tally.tokens += seen
        tally.requests += 1

    return one_request


# -- through the HTTP server --
def http_runner(client, url: str, key: str, new_tokens: int):
    body = {
        "model": "default",
        "max_tokens": new_tokens,
        "ignore_eos": True,
        "temperature": 0.7,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {key}"}

    async def one_request(prompt: str, tally: Tally):
        start = last = time.perf_counter()
        chunks = 0
        usage = None
        async with client.stream(
            "POST", url + "/v1/completions", json={**body, "prompt": prompt}, headers=headers
        ) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    usage = data["usage"]
                if data["choices"] and data["choices"][0]["text"]:
                    now = time.perf_counter()
                    if chunks == 0:
                        tally.ttft.append(now - start)
                    else:
                        tally.gaps.append(now - last)
                    last = now
                    chunks += 1
        tally.tokens += usage["completion_tokens"]
        tally.requests += 1

    return one_request


def start_server(db_url: str, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    cmd = [
        sys.executable,
        "-m",
        "m3.server",
        "serve",
        "--port",
        str(port),
        "--database",
        db_url,
        "--no-embeddings",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


async def bench(levels, new_tokens, counts, repeats) -> dict:
    """Engine and server both loaded up front; at each level they take turns (engine, server, engine, ...), so a
    change in the machine's background load hits both alike. Only one of them is busy at a time."""
    import httpx

    from m3.config import Config
    from m3.engine.async_engine import AsyncEngine
    from m3.server.ledger import Ledger

    folder = tempfile.mkdtemp()
    db_url = f"sqlite:///{folder}/bench.db"
    key = Ledger(db_url).create_key("bench", "ultra")[1]
    port = 8765
    log = open(os.path.join(folder, "server.log"), "wb")
    proc = start_server(db_url, port, log)
    url = f"http://127.0.0.1:{port}"
    engine = AsyncEngine(Config())
    runs = {"engine": {c: [] for c in levels}, "server": {c: [] for c in levels}}
    try:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
            deadline = time.time() + 300
            while True:
                try:
                    if (await client.get(url + "/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start; see " + log.name)
                await asyncio.sleep(0.5)
            runners = {"engine": direct_runner(engine, new_tokens), "server": http_runner(client, url, key, new_tokens)}
            for one in runners.values():
                await run_level(one, 1, 1)  # warm-up
            for c in levels:
                for _ in range(repeats):
                    for name, one in runners.items():
                        result = await run_level(one, c, counts[c])
                        runs[name][c].append(result)
                        print(f"{name:<7} c={c:>2}: {result}", file=sys.stderr)
    finally:
        engine.shutdown()
        proc.terminate()
        proc.wait(30)
        log.close()
    return runs


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s, plus the spread over repeats."""
    ordered = sorted(runs, key=lambda r: r["output_tokens_per_s"])
    best = dict(ordered[len(ordered) // 2])
    best["output_tokens_per_s_all"] = [r["output_tokens_per_s"] for r in runs]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--min-requests", type=int, default=4, help="requests per level at least (else 2 per client)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per level and side, alternating (median kept)")
    parser.add_argument("--out", default=None, help="result path (default: benchmarks/results/serving-DATE.json)")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    counts = {c: max(args.min_requests, c if c >= 16 else 2 * c) for c in levels}
    runs = asyncio.run(bench(levels, args.new_tokens, counts, args.repeats))
    direct = {c: median_run(runs["engine"][c]) for c in levels}
    server = {c: median_run(runs["server"][c]) for c in levels}
    rows = []
    for c in levels:
        lost = 1 - server[c]["output_tokens_per_s"] / direct[c]["output_tokens_per_s"]
        rows.append(
            {"concurrency": c, "engine": direct[c], "server": server[c], "server_tokens_per_s_lost": round(lost, 4)}
        )
    record = {
        "model": "SmolLM2-135M-Instruct (embedded GGUF), default Config",
        "workload": {
            "new_tokens": args.new_tokens,
            "ignore_eos": True,
            "temperature": 0.7,
            "requests": counts,
            "endpoint": "POST /v1/completions, stream=true, include_usage",
        },
        "method": "engine: AsyncEngine.generate in this process; server: `python -m m3.server serve` subprocess "
        "(auth, rate limit, ledger reserve/settle in SQLite WAL, SSE), clients in this process over httpx. Both "
        "loaded at once, run in turns (never together), `repeats` times per level; the median-throughput run is "
        "reported; per-token latency = gaps between streamed tokens",
        "levels": rows,
        "notes": "CPU numbers on a shared 2-core box: other jobs on the machine move results by 15% and more (runs "
        "made while another benchmark ran were discarded). At 32 clients the engine-direct baseline runs its 32 client "
        "coroutines in the engine's own process (one GIL with the engine thread) and the server admits max_num_seqs "
        "sequences at a time ahead of the engine, so the server comes out faster there: the 8-client figure is the "
        "fair overhead. HTTP requests arrive a few ms apart (auth + ledger reservation), so one may take a prefill "
        "step alone and the rest wait one more step: most of the TTFT gap at 8 clients.",
    }
    path = write_record("serving", record, args.out)
    print(path)
    for r in rows:
        print(
            f"c={r['concurrency']:>2}  engine {r['engine']['output_tokens_per_s']:7.2f} tok/s  server "
            f"{r['server']['output_tokens_per_s']:7.2f} tok/s  lost {r['server_tokens_per_s_lost']:+.1%}  "
            f"TTFT p50 {r['server']['ttft_ms_p50']} ms  token p50 {r['server']['token_ms_p50']} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
