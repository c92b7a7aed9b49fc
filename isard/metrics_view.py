"""/metrics in Prometheus' text format, for a scraper holding the token or on an allowed address.

What is a state (desktops by status and school, each hypervisor's last sample, the depth
of each task queue) is read at scrape time from the database and Redis, so it is the
same whichever web process answers. What is an event (starts, failures, sign-ins, viewer
connections, durations) was counted in Redis by whichever process saw it
(isard.core.metrics). prometheus-client only renders the text, from a custom collector:
no process keeps metrics in its own memory, and no multiprocess directory is needed.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from desktops.models import Desktop
from hypervisors.models import Hypervisor
from isard.celery import app
from isard.core import metrics

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def may_scrape(request: HttpRequest) -> bool:
    """The metrics token as a Bearer credential, or a connection from an allowed network.

    The address is the connection's own (REMOTE_ADDR): a forwarded header is whatever
    the client wrote, and the platform serves its ports itself, with no proxy in front.
    """
    kind, _, credential = request.headers.get("Authorization", "").partition(" ")
    configured = settings.ISARD_METRICS_TOKEN
    if (
        configured
        and kind.lower() == "bearer"
        and credential
        and hmac.compare_digest(credential.encode(), configured.encode())
    ):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(
        address in ipaddress.ip_network(cidr, strict=False) for cidr in settings.ISARD_METRICS_ALLOW
    )


def task_queues() -> list[str]:
    """The default queue and every hypervisor's own (README, "A worker per hypervisor")."""
    named = Hypervisor.objects.exclude(queue="").values_list("queue", flat=True).distinct()
    return sorted({str(app.conf.task_default_queue), *named})


class PlatformCollector(Collector):
    """Everything /metrics shows, read afresh at each scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from self._desktops()
        yield from self._hypervisors()
        yield from self._redis_side()

    def _desktops(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "isard_desktops",
            "Desktops by status and by their owner's school (blank: no school).",
            labels=["status", "school"],
        )
        rows = (
            Desktop.objects.values("status", "owner__school__name")
            .annotate(desktops=Count("id"))
            .order_by("status", "owner__school__name")
        )
        for row in rows:
            family.add_metric([row["status"], row["owner__school__name"] or ""], row["desktops"])
        yield family

    def _hypervisors(self) -> Iterator[Metric]:
        labels = ["hypervisor"]
        cpu = GaugeMetricFamily(
            "isard_hypervisor_cpu_load",
            "Share of the host's CPU time busy at its last sample (1.0: every CPU busy).",
            labels=labels,
        )
        cpus = GaugeMetricFamily("isard_hypervisor_cpus", "The host's CPUs.", labels=labels)
        memory = GaugeMetricFamily(
            "isard_hypervisor_memory_bytes", "The host's memory.", labels=labels
        )
        free = GaugeMetricFamily(
            "isard_hypervisor_memory_free_bytes",
            "The host's free memory at its last sample.",
            labels=labels,
        )
        guests = GaugeMetricFamily(
            "isard_hypervisor_running_guests",
            "Guests running on the host at its last sample.",
            labels=labels,
        )
        state = GaugeMetricFamily(
            "isard_hypervisor_state",
            "1 for the host's current state (online, offline...).",
            labels=["hypervisor", "state"],
        )
        seen = GaugeMetricFamily(
            "isard_hypervisor_last_seen_timestamp_seconds",
            "When the host last answered (seconds since the epoch).",
            labels=labels,
        )
        for host in Hypervisor.objects.order_by("name"):
            name = [host.name]
            cpu.add_metric(name, host.cpu_load)
            cpus.add_metric(name, host.cpus)
            memory.add_metric(name, host.memory_mib * MIB)
            free.add_metric(name, host.free_memory_mib * MIB)
            guests.add_metric(name, host.running_domains)
            state.add_metric([host.name, host.state], 1)
            if host.last_seen_at is not None:
                seen.add_metric(name, host.last_seen_at.timestamp())
        yield from (cpu, cpus, memory, free, guests, state, seen)

    def _redis_side(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "isard_metrics_redis_up",
            "1 if the counters below could be read from Redis at this scrape.",
        )
        client = metrics.metrics_redis()
        queues = task_queues()
        try:
            counters = metrics.read_counters(client)
            histograms = metrics.read_histograms(client)
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
            depths = pipe.execute()
        except RedisError as error:
            logger.warning("metrics: Redis could not be read: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "isard_task_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"]
        )
        for queue, waiting in zip(queues, depths, strict=True):
            depth.add_metric([queue], waiting)
        yield depth
        for counter in metrics.COUNTERS:
            counter_family = CounterMetricFamily(
                counter.name, counter.help, labels=list(counter.labels)
            )
            for sample in counters[counter.name]:
                counter_family.add_metric(list(sample.labels), sample.value)
            yield counter_family
        for histogram in metrics.HISTOGRAMS:
            histogram_family = HistogramMetricFamily(
                histogram.name, histogram.help, labels=list(histogram.labels)
            )
            for observed in histograms[histogram.name]:
                histogram_family.add_metric(
                    list(observed.labels), observed.buckets, sum_value=observed.sum
                )
            yield histogram_family


def render_metrics() -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector())
    return generate_latest(registry)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not may_scrape(request):
        raise Http404
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
