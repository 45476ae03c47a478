"""Prometheus metrics of one service instance (histograms, so that quantiles aggregate across replicas)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

# up to past the default deadline (10 s) and the longest REST timeout_ms a client may ask for
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0,
                   7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """All metrics in a registry of their own (several instances can live in one process, e.g. in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("effpose_requests", "Requests answered, by frontend route, method and status code",
                                ["route", "method", "code"], registry=self.registry)
        self.request_latency = Histogram("effpose_request_duration_seconds",
                                         "Latency of answered requests (2xx) seen by the frontend",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.error_latency = Histogram("effpose_error_duration_seconds",
                                       "Latency of refused or failed requests (non-2xx; gRPC non-OK), by status code",
                                       ["route", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_latency = Histogram("effpose_stage_duration_seconds", "Latency of each pipeline stage",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("effpose_queue_depth", "Crop chunks waiting for the model", registry=self.registry)
        self.in_flight = Gauge("effpose_in_flight_requests", "Requests being processed", registry=self.registry)
        self.decoded_pixels = Gauge("effpose_decoded_pixels", "Decoded pixels reserved by requests in flight "
                                    "(bounded by the pixel budget)", registry=self.registry)
        self.request_cost = Gauge("effpose_request_cost_seconds", "Measured busy seconds per request, by which "
                                  "requests are admitted", registry=self.registry)
        self.admission_calibration = Gauge("effpose_admission_calibration", "Answered requests' latency over what "
                                           "admission expected for them (moving average)", registry=self.registry)
        self.batch_size = Histogram("effpose_batch_size", "Crops per model batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.rejected = Counter("effpose_rejected_requests", "Requests refused, by reason", ["reason"],
                                registry=self.registry)
        self.persons = Histogram("effpose_persons_per_image", "Persons returned per image",
                                 buckets=(0, 1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.model = Info("effpose_model", "Served models", registry=self.registry)

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        """Record one request's per-stage timings (milliseconds: decode, detect, queue, pose, total)."""
        for stage, milliseconds in timings_ms.items():
            self.stage_latency.labels(stage).observe(milliseconds / 1000.0)

    def observe_answer(self, route: str, method: str, code: str, seconds: float, ok: bool) -> None:
        """Count one answer; its latency goes to the success histogram or, refused or failed, to the error one."""
        self.requests.labels(route, method, code).inc()
        if ok:
            self.request_latency.labels(route).observe(seconds)
        else:
            self.error_latency.labels(route, code).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
