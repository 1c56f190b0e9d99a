"""Prometheus metrics, in a registry of mup's own (served on the receiver's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["REGISTRY", "accepted", "backlog", "delivered", "duplicates", "inbound_latency",
           "rejected", "sms_failed", "sms_sent"]

REGISTRY = CollectorRegistry(auto_describe=True)

accepted = Counter("mup_inbound_accepted", "Inbound SMS made durable and answered 2xx",
                   ["gateway"], registry=REGISTRY)
duplicates = Counter("mup_inbound_duplicates", "Inbound SMS posted again (answered 2xx, not "
                     "delivered twice)", ["gateway"], registry=REGISTRY)
rejected = Counter("mup_inbound_rejected", "Webhook requests refused", ["reason"],
                   registry=REGISTRY)
delivered = Counter("mup_inbound_delivered", "Inbound SMS confirmed by the IRC server",
                    registry=REGISTRY)
backlog = Gauge("mup_inbound_backlog", "Inbound SMS accepted and not yet confirmed on IRC",
                registry=REGISTRY)
inbound_latency = Histogram("mup_inbound_latency_seconds", "Webhook accept to IRC confirmation",
                            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
                                     10, 30, 60, 300, 3600), registry=REGISTRY)
sms_sent = Counter("mup_sms_sent", "Outbound SMS accepted or queued by the gateway",
                   ["gateway"], registry=REGISTRY)
sms_failed = Counter("mup_sms_failed", "Outbound SMS the gateway refused or could not take",
                     ["gateway"], registry=REGISTRY)
