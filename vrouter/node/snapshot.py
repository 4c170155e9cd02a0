"""What a node shows of itself, in one place: the snapshot that `vrouter status`, `vrouter
metrics`, `vrouter observe`'s summary and the page (vrouter ui) all read.

`build` reads the node (its data plane's tables and counters, the data path, the pods, DNS, the
flow log) in the data-path thread, between two batches, so one snapshot is consistent. Readers
get it through `Snapshots`, which builds one at most once per `max_age` (a scraper or a page in
a loop costs the data path one short pause a second, not one per request); `vrouter status`
asks for a fresh one. The rendering is the commands' (vrouter.ops.status, metrics.families).
"""
from __future__ import annotations

import ipaddress
import os
import sys
import threading
import time
from typing import Callable

import trio

import fastpath
import vrouter
from vrouter.model.workloads import ready_key
from vrouter.node.tables import ip_to_int

SNAPSHOT_MAX_AGE = 1.0   # seconds a scrape or a page may be served the last snapshot
READ_TIMEOUT = 5.0       # seconds a reader from another thread waits for the data path


def _outside(node) -> dict:
    neighbours = node.dp.outside_neighbours()
    return {"netns": node.cluster.outside_netns,
            "interface": node.uplink.ifname if node.uplink else None,
            "address": f"{node.node.address}/{node.cluster.node_network.prefixlen}",
            "mac": node.node.mac,
            "announced": sorted(node.dp.slow.announced, key=ip_to_int),
            "neighbours": [{"ip": str(ipaddress.IPv4Address(ip)), "mac": mac}
                           for ip, mac in neighbours]}


def _datapath(node) -> dict | None:
    """The I/O edge's view: traffic at the outside port and the overlay, batch sizes, captures."""
    datapath = node.datapath
    if datapath is None:
        return None
    return {**datapath.describe(),
            "captures": len(datapath.captures.sessions),
            "captures_refused": datapath.captures.refused,
            **datapath.captures.drops(),
            "outside": datapath.traffic(node.dp.uplink),
            "overlay": datapath.traffic(datapath.overlay_port),
            "batch_sizes": datapath.batch_sizes()}


def build(node) -> dict:
    """Everything the node shows (status, metrics, the page): read in the data-path thread, so
    one consistent snapshot."""
    dp = node.dp
    fdb = [{**e, "pod": dp.ports[e["port"]].name if e["port"] in dp.ports else None}
           for e in dp.fdb_entries()]
    neighbours = [{"ip": str(node.node.gateway), "mac": node.node.gateway_mac, "port": None,
                   "what": "gateway (this node)"}]
    for port, pod in sorted(dp.ports.items()):
        seen = dp.slow.neighbours.get(str(pod.ip))
        neighbours.append({"ip": str(pod.ip), "mac": pod.mac, "port": port,
                           "what": "pod, answered" if port in dp.slow.answered else "pod, waiting",
                           "last_arp": round(time.time() - seen[2], 1) if seen else None})
    return {
        "cluster": node.cluster.name,
        "node": node.name,
        "pid": os.getpid(),
        "uptime": round(time.time() - node.started, 1),
        "ready": node.ready,
        "pods_ready": node.pods_ready,
        "underlay": f"{node.node.underlay}:{node.cluster.overlay.port}",
        "podCIDR": str(node.node.pod_cidr),
        "gateway": {"ip": str(node.node.gateway), "mac": node.node.gateway_mac},
        "vtepMAC": node.node.vtep_mac,
        "ports": [{"port": k, "pod": pod.name, "namespace": pod.namespace, "netns": pod.netns,
                   "tap": f"{pod.ifname} (ifindex {node.pods.ports[k].ifindex} in {pod.netns})",
                   "mac": pod.mac, "ip": str(pod.ip), "owner": pod.owner or None,
                   "workload": pod.workload or None,
                   "ready": ready_key(pod.name, pod.revision) in node.ready_pods,
                   "terminating": k in node.pods.terminating,
                   "programs": node.programs.status(pod.name),
                   **(node.datapath.traffic(k) if node.datapath else {})}
                  for k, pod in sorted(dp.ports.items()) if k in node.pods.ports],
        "workloads": {"leader": node.controllers.leading,
                      "progress": node.controllers.progress()},
        "fdb": sorted(fdb, key=lambda e: (e["port"], e["mac"])),
        "arp": neighbours,
        "outside": _outside(node),
        "peers": [{"node": p.name, "underlay": str(p.underlay), "podCIDR": str(p.pod_cidr),
                   "vtepMAC": p.vtep_mac, "up": dp.peer_is_up(k)}
                  for k, p in enumerate(dp.peers)],
        "services": dp.frontends(),
        "conntrack": dp.conntrack_fill(),
        "policies": dp.policy.summary(),
        "masquerade": node.cluster.masquerade,
        "reloads": dict(node.reloads),
        "attaches": dict(node.attaches),
        "metrics": ("http://%s:%d/metrics" % address
                    if (address := node.cluster.metrics_address(node.name)) else None),
        "datapath": _datapath(node),
        "dns": _dns(node),
        "flows": node.flow_log.stats() if node.flow_log else None,
        "faults": node.faults() if node.datapath else {},
        "control": {**node.control_stats.as_dict(), "refresh_errors": node.refresh_errors},
        "store": node.sync.status() if node.store is not None else None,
        # the code this process runs: `vrouter up` starts nodes that import its own files
        "code": {"python": sys.executable, "vrouter": vrouter.__file__,
                 "fastpath": fastpath.__file__},
        "counters": dp.counter_dict(),
    }


def _dns(node) -> dict | None:
    pod = node.cluster.dns_pod(node.name)
    if pod is None:
        return None
    return {"address": str(node.cluster.dns.address), "domain": node.cluster.dns.domain,
            "server": f"{pod.name} {pod.ip}:53 (udp, tcp)",
            "answers": dict(node.dns.resolver.counts) if node.dns else {}}


class Snapshots:
    """A node's snapshot, built in the data-path thread at most once per `max_age` seconds:
    readers within that time get the last one, and readers that come while one is built wait
    for it instead of queueing their own. `get` is for trio, `get_blocking` for other threads
    (the metrics HTTP server's)."""

    def __init__(self, datapath, read: Callable[[], dict], max_age: float = SNAPSHOT_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic):
        self.datapath = datapath
        self.read = read
        self.max_age = max_age
        self.clock = clock
        self.lock = threading.Lock()
        self.value: dict | None = None
        self.taken = 0.0
        self.reads = 0   # how often the data path was asked

    def _fresh(self, max_age: float | None) -> dict | None:
        age = self.max_age if max_age is None else max_age
        if self.value is not None and self.clock() - self.taken < age:
            return self.value
        return None

    def _keep(self, value: dict) -> dict:
        self.value, self.taken = value, self.clock()
        self.reads += 1
        return value

    def get_blocking(self, max_age: float | None = None) -> dict:
        with self.lock:
            value = self._fresh(max_age)
            if value is None:
                value = self._keep(self.datapath.run_blocking(self.read, READ_TIMEOUT))
            return value

    __call__ = get_blocking

    async def get(self, max_age: float | None = None) -> dict:
        """From trio (in a worker thread, so that it shares the lock); max_age 0: a new
        snapshot now (`vrouter status`)."""
        return await trio.to_thread.run_sync(self.get_blocking, max_age)

