"""Where the targets are: a static list, or the EndpointSlices of a Kubernetes Service.

Kubernetes: the gateway lists and then watches the EndpointSlices labelled
``kubernetes.io/service-name=<service>`` in its namespace (in-cluster config; RBAC: get, list
and watch on ``endpointslices`` in the ``discovery.k8s.io`` group, see docs/gateway.md). Ready,
non-terminating endpoints become targets at ``<address>:<target_port>``; pods appear and
disappear without a restart.

The event handling is pure (``apply_slice_event``: slices + one watch event -> slices), so it is
tested with real ``kubernetes.client.V1EndpointSlice`` objects; the watch loop around it is
thin: list, publish, watch from the list's resourceVersion, relist when the watch expires or
fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Slices = Mapping[str, frozenset[str]]  # EndpointSlice name -> its ready target addresses


def slice_addresses(endpoint_slice: Any, port: int) -> frozenset[str]:
    """Ready, non-terminating endpoints of one ``V1EndpointSlice`` as ``host:port``."""
    out = set()
    for endpoint in endpoint_slice.endpoints or ():
        conditions = endpoint.conditions
        ready = conditions is None or conditions.ready is None or conditions.ready  # nil means ready
        terminating = conditions is not None and bool(conditions.terminating)
        if not ready or terminating or not endpoint.addresses:
            continue
        address = endpoint.addresses[0]  # all addresses of an endpoint are the same pod
        out.add(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    return frozenset(out)


def apply_slice_event(slices: Slices, event_type: str, endpoint_slice: Any, port: int) -> dict[str, frozenset[str]]:
    """The slices after one watch event (ADDED, MODIFIED, DELETED; others change nothing)."""
    out = dict(slices)
    name = endpoint_slice.metadata.name
    if event_type == "DELETED":
        out.pop(name, None)
    elif event_type in ("ADDED", "MODIFIED"):
        out[name] = slice_addresses(endpoint_slice, port)
    return out


def target_addresses(slices: Slices) -> frozenset[str]:
    return frozenset().union(*slices.values()) if slices else frozenset()


class KubernetesDiscovery:
    """Watches the target Service's EndpointSlices on a thread; ``publish`` gets every change."""

    def __init__(self, namespace: str, service: str, port: int, publish: Callable[[frozenset[str]], None],
                 retry_s: float = 2.0):
        self.namespace = namespace
        self.selector = f"kubernetes.io/service-name={service}"
        self.port = port
        self.publish = publish
        self.retry_s = retry_s
        self.slices: dict[str, frozenset[str]] = {}
        self._published: frozenset[str] | None = None
        self._stop = threading.Event()
        self._watch = None
        self._thread = threading.Thread(target=self._run, name="endpointslice-watch", daemon=True)

    def start(self) -> None:
        from kubernetes import config

        config.load_incluster_config()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def consume(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Apply watch events (``{"type": ..., "object": V1EndpointSlice}``) and publish changes;
        returns when the stream ends or says ERROR (the caller relists)."""
        for event in events:
            if event["type"] == "ERROR":
                return
            self.slices = apply_slice_event(self.slices, event["type"], event["object"], self.port)
            self._publish()

    def _publish(self) -> None:
        addresses = target_addresses(self.slices)
        if addresses != self._published:
            self._published = addresses
            log.info("kubernetes discovery: %d ready targets", len(addresses))
            self.publish(addresses)

    def _run(self) -> None:
        from kubernetes import client, watch

        api = client.DiscoveryV1Api()
        while not self._stop.is_set():
            try:
                listing = api.list_namespaced_endpoint_slice(self.namespace, label_selector=self.selector)
                self.slices = {}
                self.consume({"type": "ADDED", "object": s} for s in listing.items)
                self._publish()  # also when the Service has no slices at all
                self._watch = watch.Watch()
                self.consume(self._watch.stream(api.list_namespaced_endpoint_slice, self.namespace,
                                                label_selector=self.selector,
                                                resource_version=listing.metadata.resource_version))
            except Exception as exc:  # ApiException (410 Gone: resourceVersion too old), network errors
                log.warning("kubernetes discovery: %s; relisting in %.0f s", exc, self.retry_s)
                self._stop.wait(self.retry_s)
