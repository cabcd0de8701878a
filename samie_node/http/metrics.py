"""``/metrics``: the node in Prometheus text format.

Counters and histograms count audited events (:meth:`AuditLog.subscribe`), so the metrics and the audit
trail cannot disagree. Gauges of the queue (studies and outputs by state), the spool's bytes and the free
disk space are read from the index and the file system at scrape time by a custom collector, so they are
right after a restart without bookkeeping. Names carry the ``samie_`` prefix and base units; labels are
states, statuses, stages, models, devices and configured destinations, never a UID.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from samie_node import __version__
from samie_node.node import Node
from samie_node.records import OutputState, StudyState

#: Seconds: a stage takes from milliseconds (enhance) to minutes (a large study's segmentation on a CPU).
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: C-STORE statuses the receiver answers (shown as zero before the first one happens).
_KNOWN_STATUSES = ("0x0000", "0xA700", "0xC210", "0xC211", "0xC212", "0xC213")


class _IndexCollector(Collector):
    """Queue depth, spool size and disk space, read when Prometheus scrapes."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        studies, outputs, stored = self._node.spool.counts()
        by_state = GaugeMetricFamily("samie_studies", "Studies in the index by state (the queue).", labels=["state"])
        for state in get_args(StudyState):
            by_state.add_metric([state], studies.get(state, 0))
        yield by_state
        out = GaugeMetricFamily("samie_outputs", "Results in the outbox by delivery state.", labels=["state"])
        for state in get_args(OutputState):
            out.add_metric([state], outputs.get(state, 0))
        yield out
        yield GaugeMetricFamily("samie_spool_bytes", "Bytes of the received instances in the spool.", value=stored)
        yield GaugeMetricFamily(
            "samie_disk_free_bytes", "Free bytes on the spool's file system.", value=self._node.spool.free_bytes()
        )
        yield GaugeMetricFamily(
            "samie_disk_floor_bytes",
            "Free space below which the node refuses new instances (limits.disk_floor_bytes).",
            value=self._node.settings.limits.disk_floor_bytes,
        )
        yield GaugeMetricFamily("samie_start_time_seconds", "When the node started.", value=self._node.started_at)


class NodeMetrics:
    """The node's Prometheus registry, fed by the audit trail and the index."""

    def __init__(self, node: Node) -> None:
        # The *_created series would double every counter for nothing a node needs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.associations = Counter("samie_associations", "DICOM associations by outcome.", ["outcome"], registry=r)
        self.instances = Counter(
            "samie_instances_received",
            "Instances received (C-STORE and STOW-RS) by the DICOM status answered.",
            ["status"],
            registry=r,
        )
        self.received_bytes = Counter("samie_received_bytes", "Bytes of the instances stored.", registry=r)
        self.studies = Counter("samie_studies_processed", "Studies processed by outcome.", ["outcome"], registry=r)
        self.stages = Histogram(
            "samie_stage_duration_seconds",
            "Time per pipeline stage per study.",
            ["stage"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.study_duration = Histogram(
            "samie_study_duration_seconds", "Time to process one study.", buckets=_DURATION_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "samie_inference_duration_seconds",
            "Model time per study (segmenter: segment stage; classifier: classify stage).",
            ["model", "device"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.sends = Counter(
            "samie_results_sent",
            "Results delivered, retried or dead by destination.",
            ["destination", "outcome"],
            registry=r,
        )
        self.http_actions = Counter(
            "samie_http_actions",
            "Console actions and STOW-RS requests by outcome.",
            ["action", "outcome"],
            registry=r,
        )
        for status in _KNOWN_STATUSES:
            self.instances.labels(status=status)
        for outcome in ("done", "failed"):
            self.studies.labels(outcome=outcome)
        engine = node.engine
        Info("samie_build", "Version of the node and of its models.", registry=r).info(
            {
                "version": __version__,
                "model": engine.model if engine else "",
                "model_version": engine.model_version if engine else "",
                "device": engine.device if engine else "",
                "backend": engine.backend if engine else "",
            }
        )
        self._engine = engine
        r.register(_IndexCollector(node))
        ProcessCollector(registry=r)
        node.audit.subscribe(self.on_event)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """Count one audited event."""
        if event.startswith("association_"):
            self.associations.labels(outcome=event.removeprefix("association_")).inc()
        elif event == "instance_received":
            self.instances.labels(status="0x0000").inc()
            self.received_bytes.inc(int(fields.get("bytes", 0)))
        elif event == "instance_refused":
            self.instances.labels(status=str(fields.get("status", "unknown"))).inc()
        elif event == "study_processed":
            self._study(fields)
        elif event == "results_sent":
            destination = str(fields.get("destination", ""))
            for outcome in ("sent", "retrying", "dead"):
                count = int(fields.get(outcome, 0))
                if count:
                    self.sends.labels(destination=destination, outcome=outcome).inc(count)
        elif event in ("http_action", "http_action_refused"):
            outcome = "refused" if event == "http_action_refused" else str(fields.get("outcome", "done"))
            self.http_actions.labels(action=str(fields.get("action", "")), outcome=outcome).inc()

    def _study(self, fields: Mapping[str, Any]) -> None:
        self.studies.labels(outcome=str(fields.get("outcome", "unknown"))).inc()
        self.study_duration.observe(float(fields.get("ms", 0.0)) / 1000)
        timings: Mapping[str, float] = fields.get("timings_ms") or {}
        for stage, ms in timings.items():
            self.stages.labels(stage=stage).observe(ms / 1000)
        if self._engine is None:
            return
        models = (("segment", self._engine.segmenter), ("classify", self._engine.classifier))
        for stage, model in models:
            if model and stage in timings:
                self.inference.labels(model=model, device=self._engine.device).observe(timings[stage] / 1000)
