"""What the engine reports in Prometheus format at /metrics.

Each engine has its own registry, so two engines in one process (tests, benchmarks) never
collide. Prometheus metric objects are thread-safe: the engine thread writes, the server reads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; from a fast GPU step to a long queue on a CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("tokenmill_requests_running", "Requests with a sequence in the running batch.", registry=r)
        self.waiting = Gauge(
            "tokenmill_requests_waiting", "Requests waiting for KV-cache blocks or a batch slot.", registry=r)
        self.kv_usage = Gauge(
            "tokenmill_kv_cache_usage_ratio", "Share of KV-cache blocks held by sequences.", registry=r)
        self.prefix_queries = Counter(
            "tokenmill_prefix_cache_queries_tokens", "Prompt tokens looked up in the prefix cache.", registry=r)
        self.prefix_hits = Counter(
            "tokenmill_prefix_cache_hits_tokens", "Prompt tokens found in the prefix cache.", registry=r)
        self.preemptions = Counter(
            "tokenmill_preemptions", "Sequences preempted for lack of KV-cache blocks.", registry=r)
        self.prompt_tokens = Counter("tokenmill_prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter("tokenmill_generation_tokens", "Tokens generated.", registry=r)
        self.finished = Counter(
            "tokenmill_requests_finished", "Requests finished, by reason.", ["finish_reason"], registry=r)
        self.ttft = Histogram(
            "tokenmill_time_to_first_token_seconds", "From arrival to the first generated token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(
            "tokenmill_inter_token_latency_seconds", "Between two generated tokens of one sequence.",
            buckets=LATENCY_BUCKETS, registry=r)
