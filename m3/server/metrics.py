"""Prometheus metrics: requests, tokens in/out, TTFT, per-token latency, and the engine's queue, KV and MSA gauges.

One registry per app (tests build several apps in one process); engine gauges are read at scrape time.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, get_engine):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "m3_requests", "API requests by endpoint and HTTP status", ["endpoint", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter("m3_prompt_tokens", "prompt tokens processed", registry=self.registry)
        self.generation_tokens = Counter("m3_generation_tokens", "tokens generated", registry=self.registry)
        self.ttft = Histogram(
            "m3_time_to_first_token_seconds",
            "request arrival to first generated token",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.time_per_token = Histogram(
            "m3_time_per_output_token_seconds",
            "time between generated tokens of one request",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.registry.register(_EngineCollector(get_engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, get_engine):
        self.get_engine = get_engine

    def collect(self):
        engine = self.get_engine()
        healthy = GaugeMetricFamily("m3_engine_healthy", "1 when the engine can generate")
        healthy.add_metric([], 1.0 if engine is not None and engine.is_healthy else 0.0)
        yield healthy
        if engine is None:
            return
        s = engine.stats()
        for name, help_text, value in (
            ("m3_num_requests_running", "sequences in the running batch", s["num_running"]),
            ("m3_num_requests_waiting", "sequences queued for the engine (queue depth)", s["num_waiting"]),
            ("m3_kv_cache_usage_ratio", "share of KV-cache pages in use", s["kv_usage"]),
        ):
            g = GaugeMetricFamily(name, help_text)
            g.add_metric([], float(value))
            yield g
        preemptions = CounterMetricFamily("m3_num_preemptions", "sequences preempted for KV pages")
        preemptions.add_metric([], float(s["num_preemptions"]))
        yield preemptions
        if s.get("msa_selected_share") is not None:
            g = GaugeMetricFamily("m3_msa_selected_blocks_share", "share of KV blocks MSA attention read")
            g.add_metric([], float(s["msa_selected_share"]))
            yield g


class RequestCounter:
    """ASGI middleware (outermost, so 401s and 429s count too): m3_requests_total by route and status."""

    def __init__(self, app, metrics: Metrics, known_paths: set[str]):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.known_paths else "other"
        status = ["500"]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(path, status[0]).inc()
