"""A node's Prometheus metrics: its snapshot (vrouter.node.snapshot, read in the data-path
thread at most once a second) turned into metric families at every scrape.

Served on 127.0.0.1:cluster.metricsPort+k for node k when metricsPort is set, and always through
the control socket (`vrouter metrics`). What there is:

  vrouter_port_{rx,tx}_{packets,bytes}_total{interface, kind}   per pod port, outside, overlay
  vrouter_frames_total{verdict, kind}       every frame's verdict; kind forward | slow | drop
  vrouter_events_total{event}               everything else the data plane counts
  vrouter_conntrack_entries, _capacity, _high_water, vrouter_conntrack_evictions_total,
  vrouter_conntrack_refused_total
  vrouter_service_connections_total{service, port, frontend, scope}   new flows per frontend
  vrouter_batch_frames                      histogram: frames per read of a TAP or the overlay
  vrouter_pods, vrouter_peer_up{peer}, vrouter_ready, vrouter_captures, vrouter_node_info
  vrouter_store_up, _unreachable_since_seconds, _skipped_keys_total, _resyncs_total, _requests_total
  vrouter_faults_total{fault}               contained faults: pods lost, slow-path, request and
                                            beat errors, control connections refused or timed out
  vrouter_flows_total{verdict, event}, vrouter_flow_policy_drops_total{policy, direction},
  vrouter_flows_lost_total{why}             the flow log (vrouter observe)
  vrouter_capture_dropped_frames_total{why} captured frames lost: ring full, a slow reader
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily,
)

from fastpath.reasons import COUNTERS, EVENT


class NodeCollector:
    """A prometheus_client collector over `snapshot()`, a node status dict."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def collect(self):
        return families(self.snapshot())


def families(status: dict) -> list:
    port_families = {
        (direction, unit): CounterMetricFamily(
            f"vrouter_port_{direction}_{unit}",
            f"{unit} {'read from' if direction == 'rx' else 'written to'} a port (pod TAP, "
            "outside port) or received from / sent to the overlay", labels=["interface", "kind"])
        for direction in ("rx", "tx") for unit in ("packets", "bytes")}

    def add_port(name: str, kind: str, traffic: dict) -> None:
        for (direction, unit), family in port_families.items():
            field = f"{direction}_{'frames' if unit == 'packets' else 'bytes'}"
            family.add_metric([name, kind], traffic[field])

    for port in status["ports"]:
        add_port(port["pod"], "pod", port)
    datapath = status.get("datapath") or {}
    if datapath:
        add_port("outside", "outside", datapath["outside"])
        add_port("overlay", "overlay", datapath["overlay"])

    frames = CounterMetricFamily("vrouter_frames", "frames by the verdict the fast path gave "
                                 "them (kind: forward, slow = handed to the slow path, drop)",
                                 labels=["verdict", "kind"])
    events = CounterMetricFamily("vrouter_events", "what else the data plane counts",
                                 labels=["event"])
    counters = status["counters"]
    for counter in COUNTERS:
        if counter.kind == EVENT:
            events.add_metric([counter.name], counters[counter.name])
        else:
            frames.add_metric([counter.name, counter.kind], counters[counter.name])

    ct = status["conntrack"]
    conntrack = [GaugeMetricFamily("vrouter_conntrack_entries", "live tracked connections",
                                   value=ct["entries"]),
                 GaugeMetricFamily("vrouter_conntrack_capacity", "connections the table holds "
                                   "at most (cluster.conntrack.maxEntries)", value=ct["capacity"]),
                 GaugeMetricFamily("vrouter_conntrack_high_water", "most connections tracked at "
                                   "once since the node started", value=ct["high_water"]),
                 CounterMetricFamily("vrouter_conntrack_evictions", "unassured connections "
                                     "evicted to make room (early drop)",
                                     value=counters["ct_evicted"]),
                 CounterMetricFamily("vrouter_conntrack_refused", "new connections refused: the "
                                     "table was full of assured connections",
                                     value=counters["ct_full_refused"])]

    connections = CounterMetricFamily("vrouter_service_connections", "connections (flows) each "
                                      "Service frontend gave a backend",
                                      labels=["service", "port", "frontend", "scope"])
    for f in status["services"]:
        connections.add_metric([f["service"], f["port"] or "", f["frontend"], f["scope"]],
                               f["new_connections"])

    refused = CounterMetricFamily("vrouter_policy_dropped", "first packets of new connections "
                                  "a NetworkPolicy refused (a retransmitted SYN counts again; "
                                  "counted for each policy isolating the pod)",
                                  labels=["policy"])
    for p in status.get("policies", []):
        refused.add_metric([p["policy"]], p["dropped"])

    result = [*port_families.values(), frames, events, *conntrack, connections, refused,
              *flow_families(status.get("flows"))]
    if datapath:
        sizes = datapath["batch_sizes"]
        cumulative, buckets = 0, []
        for bound, count in sizes["buckets"].items():
            cumulative += count
            buckets.append((bound, cumulative))
        batch = HistogramMetricFamily("vrouter_batch_frames", "frames per read of a TAP or of "
                                      "the overlay sockets (the fast path's batches)")
        batch.add_metric([], buckets, sum_value=sizes["frames"])
        dropped = CounterMetricFamily("vrouter_capture_dropped_frames", "captured frames that "
                                      "never reached a client", labels=["why"])
        dropped.add_metric(["ring_full"], datapath.get("capture_dropped_ring_full", 0))
        dropped.add_metric(["slow_reader"], datapath.get("capture_dropped_slow_reader", 0))
        result += [batch, GaugeMetricFamily("vrouter_captures", "vrouter capture sessions",
                                            value=datapath["captures"]), dropped]

    if status.get("faults"):
        faults = CounterMetricFamily("vrouter_faults", "faults the node contained: pods whose "
                                     "netns vanished, slow-path frames, requests and beats "
                                     "that raised, control connections refused (over the cap) or "
                                     "timed out", labels=["fault"])
        for name, value in sorted(status["faults"].items()):
            faults.add_metric([name], value)
        result.append(faults)

    store = status.get("store")
    if store:
        result += [
            GaugeMetricFamily("vrouter_store_up", "1 while the datastore answers (the node "
                              "forwards with its last state when it does not)",
                              value=1 if store["reachable"] else 0),
            GaugeMetricFamily("vrouter_store_unreachable_since_seconds", "when the datastore "
                              "stopped answering (Unix time; 0 while it answers)",
                              value=store["unreachable_since"] or 0),
            CounterMetricFamily("vrouter_store_skipped_keys", "corrupt, foreign or refused "
                                "store keys left out of the model", value=store["skipped_total"]),
            CounterMetricFamily("vrouter_store_resyncs", "lists of the whole store after a "
                                "compaction or a lost watch", value=store["resyncs"]),
            CounterMetricFamily("vrouter_store_requests", "requests sent to the datastore",
                                value=store["requests"]),
        ]
    peers = GaugeMetricFamily("vrouter_peer_up", "1 while an overlay peer answers",
                              labels=["peer"])
    for p in status["peers"]:
        peers.add_metric([p["node"]], 1 if p["up"] else 0)
    info = InfoMetricFamily("vrouter_node", "the node",
                            value={"cluster": status["cluster"], "node": status["node"],
                                   "pod_cidr": status["podCIDR"], "underlay": status["underlay"]})
    result += [peers, info,
               GaugeMetricFamily("vrouter_pods", "pods attached", value=len(status["ports"])),
               GaugeMetricFamily("vrouter_ready", "1 when every pod answered ARP",
                                 value=1 if status["ready"] else 0)]
    return result


class Metrics:
    """A node's registry; `serve` adds the HTTP endpoint. `snapshot` runs in the caller's
    thread (the HTTP server's, or a trio worker's) and must itself get the data-path thread to
    read the node."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(snapshot))
        self.server = None

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, address: tuple[str, int]) -> None:
        self.server, _thread = start_http_server(address[1], addr=address[0],
                                                 registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def flow_families(flows: dict | None) -> list:
    """The flow log (vrouter.node.flowlog): flows by verdict and event, policy drops by policy,
    and what was lost."""
    if not flows:
        return []
    by_verdict = CounterMetricFamily("vrouter_flows", "connection events the flow log recorded "
                                     "(vrouter observe): starts, ends and refusals",
                                     labels=["verdict", "event"])
    for v in flows["by_verdict"]:
        by_verdict.add_metric([v["verdict"], v["event"]], v["flows"])
    by_policy = CounterMetricFamily("vrouter_flow_policy_drops", "refused packets the flow log "
                                    "recorded, per NetworkPolicy isolating the pod",
                                    labels=["policy", "direction"])
    for p in flows["policy_drops"]:
        by_policy.add_metric([p["policy"], p["direction"]], p["flows"])
    lost = CounterMetricFamily("vrouter_flows_lost", "flow events lost: the fast path's ring "
                               "was full before the node read it, or a follower read too slowly",
                               labels=["why"])
    lost.add_metric(["ring_full"], flows["lost_ring_full"])
    lost.add_metric(["slow_client"], flows["lost_slow_clients"])
    return [by_verdict, by_policy, lost]
