"""A node's data plane, sans-IO: batches of frames in, (target, frame) pairs out.

The I/O layer reads frames straight into `buf` slots (see `rx_view`), fills the meta columns with
`load_received`/`load_datagrams`, calls `run(n)` and writes what it returns. Targets are pod port
numbers (0..P-1) or OVERLAY_TARGET + peer index. Returned frames may be views into `buf`: write
them before the next batch is read.
"""
from __future__ import annotations

import time

import numpy as np
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from fastpath.forward import forward_batch
from fastpath.layout import (
    ACT_FLOOD, ACT_OVERLAY, ACT_PORT, ACT_SLOW, BATCH, COUNTER_COUNT, COUNTER_NAMES, HEADROOM,
    IN_GATEWAY, IN_OVERLAY, M_IN_PORT, M_LEN, M_SRC_IP, M_START, META_COLS, P_PEER_DEAD_AFTER,
    VXLAN_HEADER_LEN,
)
from fastpath.nat import flush_backends
from vrouter import servicetables
from vrouter import tables as tables_mod
from vrouter.config import Cluster
from vrouter.slowpath import SlowPath

OVERLAY_TARGET = 1 << 20
DEFAULT_SLOT = HEADROOM + 65536   # room for any frame a TAP can deliver


class Batch:
    """One preallocated batch: frames in rows of `buf`, per-frame facts in `meta`."""

    def __init__(self, rows: int, slot: int):
        self.buf = np.zeros((rows, slot), dtype=np.uint8)
        self.meta = np.zeros((rows, META_COLS), dtype=np.int64)
        self.rows = [memoryview(self.buf[i]) for i in range(rows)]
        # where a TAP read lands (the frame) and where a VXLAN datagram lands (8 bytes earlier)
        self.rx_views = [row[HEADROOM:] for row in self.rows]
        self.overlay_views = [row[HEADROOM - VXLAN_HEADER_LEN:] for row in self.rows]

    def frame(self, i: int, start: int, length: int) -> memoryview:
        return self.rows[i][start:start + length]


class Dataplane:
    def __init__(self, cluster: Cluster, node_name: str, batch_size: int = BATCH,
                 slot: int = DEFAULT_SLOT, clock=time.monotonic):
        self.cluster = cluster
        self.node = cluster.node(node_name)
        self.pods = cluster.pods_of(node_name)
        self.peers = [n for n in cluster.nodes if n.name != node_name]
        self.clock = clock
        self.counters = np.zeros(COUNTER_COUNT, dtype=np.uint64)
        self.services = servicetables.build(cluster, node_name)   # also what status shows
        self.tables = tables_mod.build(cluster, node_name, self.counters, self.services)
        self.slow = SlowPath(cluster, node_name, self.counters, clock=clock)
        self.rx = Batch(batch_size, slot)
        self.gw = Batch(batch_size, slot)   # frames the gateway itself originates
        self.all_ports = list(range(len(self.pods)))
        self.keepalive_frames = self._build_keepalives()
        self.mark_peers_seen_now()   # peers start up, as the node assumes until they fall silent

    # --- loading a batch --------------------------------------------------------------------

    def load_received(self, lengths: list[int], in_port: int) -> int:
        """Frames read from pod port `in_port` into rx.rx_views[0..n-1]."""
        n = len(lengths)
        meta = self.rx.meta
        meta[:n, M_START] = HEADROOM
        meta[:n, M_LEN] = lengths
        meta[:n, M_IN_PORT] = in_port
        return n

    def load_datagrams(self, lengths: list[int], sources: list[int]) -> int:
        """VXLAN datagrams read into rx.overlay_views[0..n-1], with their outer source addresses."""
        n = len(lengths)
        meta = self.rx.meta
        meta[:n, M_START] = HEADROOM - VXLAN_HEADER_LEN
        meta[:n, M_LEN] = lengths
        meta[:n, M_IN_PORT] = IN_OVERLAY
        meta[:n, M_SRC_IP] = sources
        return n

    # --- running it -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile the fast path (or load it from numba's cache) before the node reports ready."""
        self._forward(self.rx, 0)

    def run(self, n: int) -> list:
        out: list = []
        if n:
            self._forward(self.rx, n)
            routed = self._collect(self.rx, n, out)
            while routed:   # the gateway's own packets, routed like any other
                chunk, routed = routed[:len(self.gw.rows)], routed[len(self.gw.rows):]
                self._collect(self.gw, self._load_gateway(chunk), out)
        return out

    def _forward(self, batch: Batch, n: int) -> None:
        forward_batch(batch.buf, batch.meta, n, int(self.clock()), *self.tables.as_args())

    def _load_gateway(self, frames: list[bytes]) -> int:
        batch = self.gw
        for i, frame in enumerate(frames):
            batch.rx_views[i][:len(frame)] = frame
            batch.meta[i, M_START] = HEADROOM
            batch.meta[i, M_LEN] = len(frame)
            batch.meta[i, M_IN_PORT] = IN_GATEWAY
        self._forward(batch, len(frames))
        return len(frames)

    def _collect(self, batch: Batch, n: int, out: list) -> list[bytes]:
        """Turn the fast path's decisions into output; returns frames the slow path wants routed."""
        routed: list[bytes] = []
        for i, (start, length, in_port, action, target, reason, _src) in enumerate(
                batch.meta[:n].tolist()):
            if action == ACT_PORT:
                out.append((target, batch.frame(i, start, length)))
            elif action == ACT_OVERLAY:
                out.append((OVERLAY_TARGET + target, batch.frame(i, start, length)))
            elif action == ACT_FLOOD:
                frame = batch.frame(i, start, length)
                out.extend((port, frame) for port in self.all_ports if port != in_port)
            elif action == ACT_SLOW:
                l2, more = self.slow.handle(bytes(batch.frame(i, start, length)), in_port, reason)
                out.extend(l2)
                routed.extend(more)
        return routed

    # --- reload ------------------------------------------------------------------------------

    def reload(self, cluster: Cluster) -> dict:
        """Swap in the Services of `cluster` (between batches, so atomically for the fast path).

        Only Services and endpoints may change; anything else raises ValueError and the running
        tables stay as they are. Established TCP connections keep their backends; UDP flows and
        affinity entries to a removed backend are flushed, so the next packet of such a flow
        chooses a live backend."""
        def wiring(c):   # what the ports and tables are made of (labels and ports may change)
            return ([(p.name, p.node, p.ip, p.mac, p.netns) for p in c.pods], c.nodes, c.overlay,
                    c.service_options, c.fdb_age)
        same = wiring(cluster) == wiring(self.cluster)
        if not same:
            raise ValueError("only Services and pod labels can change in a reload; nodes, pods, "
                             "addresses, overlay and service options need a restart")
        new = servicetables.build(cluster, self.node.name)
        t = self.tables
        old = set(zip(t.be_ip.tolist(), t.be_port.tolist()))
        removed = old - set(zip(new.be_ip.tolist(), new.be_port.tolist()))
        flushed = flush_backends(t.ct_keys, t.ct_vals, t.aff_keys, t.aff_vals, removed)
        for name, array in tables_mod.service_arrays(new).items():
            setattr(t, name, array)
        self.cluster = cluster
        self.services = new
        return {"frontends": len(new.frontends), "backends": len(new.backend_names),
                "removed_backends": len(removed), "flushed_udp_flows": flushed}

    def announce(self) -> list:
        """Gratuitous ARPs for the node address and any load-balancer address newly ours (the
        slow path answers ARP for exactly the announced ones from now on)."""
        return self.slow.announce(self.services.announced)

    # --- overlay peer liveness ---------------------------------------------------------------

    def _build_keepalives(self) -> list[bytes]:
        """An ICMP echo from our VTEP address (podCIDR .0) to every peer's, over the overlay.
        vrouter peers and kernel (flannel-style) VTEPs both answer it; any answer marks the peer up."""
        mine = str(self.node.pod_cidr.network_address)
        mac = self.node.gateway_mac
        return [bytes(Ether(dst=mac, src=mac) / IP(src=mine, dst=str(p.pod_cidr.network_address))
                      / ICMP(id=0x7672, seq=k)) for k, p in enumerate(self.peers)]

    def keepalives(self) -> list:
        out: list = []
        if self.keepalive_frames:
            self._collect(self.gw, self._load_gateway(self.keepalive_frames), out)
        return out

    def mark_peers_seen_now(self) -> None:
        """Give every peer a full grace period, e.g. when the node starts serving."""
        self.tables.peer_seen[:] = int(self.clock())

    def peer_is_up(self, k: int) -> bool:
        """The fast path's own rule: heard from within the last P_PEER_DEAD_AFTER seconds."""
        t = self.tables
        return int(self.clock()) - int(t.peer_seen[k]) <= int(t.params[P_PEER_DEAD_AFTER])

    # --- test and tool convenience ------------------------------------------------------------

    def process(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Run (in_port, frame) pairs through the data plane; in_port IN_OVERLAY takes
        (source_ip_int, datagram) tuples via `process_datagrams` instead. Returns copies."""
        out = []
        for first in range(0, len(frames), len(self.rx.rows)):
            chunk = frames[first:first + len(self.rx.rows)]
            meta = self.rx.meta
            for i, (in_port, frame) in enumerate(chunk):
                self.rx.rx_views[i][:len(frame)] = frame
                meta[i, M_START] = HEADROOM
                meta[i, M_LEN] = len(frame)
                meta[i, M_IN_PORT] = in_port
            out.extend((t, bytes(f)) for t, f in self.run(len(chunk)))
        return out

    def process_datagrams(self, datagrams: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Run (outer_source_ip_int, vxlan_payload) pairs through the data plane."""
        for i, (_src, payload) in enumerate(datagrams):
            self.rx.overlay_views[i][:len(payload)] = payload
        n = self.load_datagrams([len(p) for _s, p in datagrams], [s for s, _p in datagrams])
        return [(t, bytes(f)) for t, f in self.run(n)]

    def counter_dict(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(COUNTER_NAMES, self.counters.tolist())}

