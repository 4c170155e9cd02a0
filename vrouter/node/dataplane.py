"""A node's data plane, sans-IO: its tables, batch buffers and slow path.

The node's I/O (vrouter.node.datapath with fastpath.io) reads into `rx`, calls the fast path and writes
the output batch itself; `load_into` / `load_datagrams` fill a batch as a TAP read or a recvmmsg
would (vrouter trace, the tests' harness in tests/harness.py).
"""
from __future__ import annotations

import struct
import time

import numpy as np
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from fastpath.beat import housekeeping
from fastpath.conntrack import (
    AFF_EXPIRES, CTS_FREE, CTS_HIGH_WATER, FRAG_EXPIRES, flush_udp, live_entries, live_mask,
)
from fastpath.dispatch import forward
from fastpath.flows import FS_NOW
from fastpath.groups import Frames, Output, Tables
from fastpath.layout import (
    BATCH, F_ROWS, FILL_COLS, FRAMES_MAX, HEADROOM, IN_GATEWAY, IN_OVERLAY, M_CSUM_OFFSET,
    M_CSUM_START, M_GSO_SIZE, M_GSO_TYPE, M_HDR_LEN, M_IN_PORT, M_LEN, M_ROW, M_SRC_IP, M_START,
    M_VFLAGS, META_COLS, O_IN_PORT, O_KIND, O_LEN, O_REASON, O_START, OUT_COLS, OUT_DATA,
    OUT_ROWS, OUT_SLOW, P_MASQUERADE, P_PEER_DEAD_AFTER, SLOT, SLOW_DATA, TRACE_COLS, VNET_HDR_LEN,
    VXLAN_HEADER_LEN,
)
from fastpath.reasons import COUNTER_COUNT, COUNTER_NAMES
from fastpath.stages.link import link
from fastpath.stages.local import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST
from fastpath.learning import L_SEEN, L_STATIC, L_VALUE
from vrouter.node import policytables, servicetables
from vrouter.node import tables as tables_mod
from vrouter.node.tables import NEIGHBOUR_AGE
from vrouter.model.config import Cluster, Pod
from vrouter.node.slowpath import SlowPath

VNET_HEADER = struct.Struct("<BBHHHH")   # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_COLUMNS = (M_VFLAGS, M_GSO_TYPE, M_HDR_LEN, M_GSO_SIZE, M_CSUM_START, M_CSUM_OFFSET)
NO_VNET = bytes(VNET_HDR_LEN)


def new_frames(rows: int = BATCH, slot: int = SLOT) -> Frames:
    return Frames(np.zeros((rows, slot), dtype=np.uint8),
                  np.zeros((FRAMES_MAX, META_COLS), dtype=np.int64))


def new_output(trace_steps: int = 0) -> Output:
    """An output batch; with `trace_steps`, room to record that many stage steps."""
    return Output(np.zeros((OUT_ROWS, OUT_COLS), dtype=np.int64),
                  np.zeros((1, OUT_DATA), dtype=np.uint8),
                  np.zeros((1, SLOW_DATA), dtype=np.uint8),
                  np.zeros(FILL_COLS, dtype=np.int64),
                  np.zeros((trace_steps, TRACE_COLS), dtype=np.int64))


def load_into(frames: Frames, items) -> int:
    """(in_port, frame, virtio-net header) triples into a batch, one row each, as a read of a
    TAP puts them (the frame at HEADROOM)."""
    meta = frames.meta
    n = len(items)
    meta[:n] = 0
    meta[:n, M_ROW] = np.arange(n)
    meta[:n, M_START] = HEADROOM
    for k, (in_port, frame, vnet) in enumerate(items):
        frames.buf[k, HEADROOM:HEADROOM + len(frame)] = np.frombuffer(frame, np.uint8)
        meta[k, M_LEN] = len(frame)
        meta[k, M_IN_PORT] = in_port
        if vnet != NO_VNET:   # the node's own frames (keepalives) have none: all zero
            for column, value in zip(VNET_COLUMNS, VNET_HEADER.unpack(vnet)):
                meta[k, column] = value
    return n


def load_datagrams(frames: Frames, rows: list[tuple[int, list[bytes]]]) -> int:
    """(outer source IPv4 as int, [VXLAN datagrams]) per row of `frames`, the datagrams back to
    back as a UDP GRO train lies in a receive buffer; returns the frame count."""
    meta, buf = frames.meta, frames.buf
    n = 0
    for row, (source, datagrams) in enumerate(rows):
        position = HEADROOM - VXLAN_HEADER_LEN
        for datagram in datagrams:
            buf[row, position:position + len(datagram)] = np.frombuffer(datagram, np.uint8)
            meta[n, :] = 0
            meta[n, M_ROW] = row
            meta[n, M_START] = position + VXLAN_HEADER_LEN
            meta[n, M_LEN] = len(datagram) - VXLAN_HEADER_LEN
            meta[n, M_IN_PORT] = IN_OVERLAY
            meta[n, M_SRC_IP] = source
            position += len(datagram)
            n += 1
    return n


def vnet_header(meta_row) -> bytes:
    return VNET_HEADER.pack(*(int(meta_row[c]) for c in VNET_COLUMNS))


class PodsFull(Exception):
    """Every pod port of the node is taken (cluster.maxPodsPerNode)."""


class Dataplane:
    """`link`: put the compiled code of the stages the tables need into them whenever they
    change (fastpath.stages.link: compiled or loaded then); vrouter.node.compiling builds one
    without, to compile the stages itself."""

    def __init__(self, cluster: Cluster, node_name: str, clock=time.monotonic, link=True):
        self.cluster = cluster
        self.node = cluster.node(node_name)
        self.peers = [n for n in cluster.nodes if n.name != node_name]
        self.clock = clock
        self.capacity = cluster.max_pods       # pod ports 0..capacity-1
        self.uplink = cluster.max_pods         # the port on the outside network
        # the pods with an interface here, by port: the file's at start, then as they come and go
        self.ports: dict[int, Pod] = dict(enumerate(cluster.local_pods(node_name)))
        self.counters = np.zeros(COUNTER_COUNT, dtype=np.uint64)
        self.services = servicetables.build(cluster, node_name)   # also what status shows
        self.policy = policytables.build(cluster, self.ports, self.capacity)
        self.rx = new_frames()
        self.linking = link
        self.tables = tables_mod.build(cluster, node_name, self.counters, self.ports,
                                       self.services, self.policy)
        self.slow = SlowPath(cluster, node_name, self.counters, self.ports, clock=clock)
        self.gw = new_frames()   # frames the gateway itself originates
        self.out = new_output()
        self.keepalive_frames = self._build_keepalives()
        self.mark_peers_seen_now()   # peers start up, as the node assumes until they fall silent

    @property
    def tables(self) -> Tables:
        return self._tables

    @tables.setter
    def tables(self, tables: Tables) -> None:
        """New tables are linked first (between batches): a stage they need for the first time
        (the policy stage, once a policy selects a pod here) is compiled or loaded now. If that
        fails, the old tables stay."""
        if self.linking:
            link(tables, self.rx)
        self._tables = tables

    @property
    def now(self) -> int:
        return int(self.clock())

    def warm_up(self) -> None:
        """Compile forward() (or load it from numba's cache): tests and tools call it before
        timing anything. A node compiles its data path in vrouter.node.datapath instead."""
        forward(self.rx, 0, 0, self.now, self.tables, self.out)

    # --- the slow path and the gateway's own packets -------------------------------------------

    def slow_items(self, out: Output) -> list[tuple[bytes, int, int]]:
        """(frame, in_port, reason) of the output batch's rows for the slow path."""
        rows = out.rows[:out.fill[F_ROWS]]
        items = []
        for r in np.nonzero(rows[:, O_KIND] == OUT_SLOW)[0].tolist():
            start, length = int(rows[r, O_START]), int(rows[r, O_LEN])
            items.append((out.slow[0, start:start + length].tobytes(), int(rows[r, O_IN_PORT]),
                          int(rows[r, O_REASON])))
        return items

    def handle_slow(self, items) -> tuple[list, list[bytes]]:
        """Run the slow path: ([(port, frame)] to write as they are, [frames to route])."""
        l2: list = []
        routed: list[bytes] = []
        for frame, in_port, reason in items:
            answer, more = self.slow.handle(frame, in_port, reason)
            l2.extend(answer)
            routed.extend(more)
        return l2, routed

    def load_gateway(self, frames: list[bytes]) -> int:
        """Put frames the gateway originates into the `gw` batch (at most BATCH)."""
        return load_into(self.gw, [(IN_GATEWAY, frame, NO_VNET) for frame in frames])

    # --- pods coming and going; reload ----------------------------------------------------------

    @property
    def pods(self) -> tuple[Pod, ...]:
        """The attached local pods, in port order."""
        return tuple(self.ports[port] for port in sorted(self.ports))

    def port_of(self, pod_name: str) -> int | None:
        return next((port for port, pod in self.ports.items() if pod.name == pod_name), None)

    def attach(self, pod: Pod) -> int:
        """A local pod got its interface: the lowest free port, and the tables that follow."""
        port = next((p for p in range(self.capacity) if p not in self.ports), None)
        if port is None:
            raise PodsFull(f"node {self.node.name!r} has all {self.capacity} pod ports in use "
                           "(cluster.maxPodsPerNode)")
        self.ports[port] = pod
        self._pods_changed()
        return port

    def detach(self, port: int) -> Pod:
        pod = self.ports.pop(port)
        self._pods_changed()
        return pod

    def _pods_changed(self) -> None:
        self.tables = self.tables._replace(**tables_mod.pod_groups(
            self.ports, self.capacity, self.peers, self.tables.bridge))
        self._rebuild_policy()
        self.slow.set_ports(self.ports)

    def _rebuild_policy(self) -> None:
        """The policies of the attached pods, from the live model (between batches)."""
        new = policytables.build(self.cluster, self.ports, self.capacity)
        policytables.carry_drops(self.policy, new)
        self.policy = new
        self.tables = self.tables._replace(policy=new.group)

    def check_reload(self, cluster: Cluster) -> None:
        """ValueError when `cluster` differs from the running one in what needs a restart.
        Other nodes may come and go (they register in the store, their lease expires)."""
        try:
            cluster.node(self.node.name)
        except KeyError:
            raise ValueError(f"node {self.node.name!r} itself is not in the new model") from None

        def wiring(c):   # what the node is made of
            return (c.name, c.node(self.node.name), c.overlay, c.service_options, c.conntrack,
                    c.fdb_age,
                    c.fdb_max_per_port, c.busy_poll_us, c.max_pods, c.node_network,
                    c.outside_gateway, c.metrics_port, c.flow_log_events)
        if wiring(cluster) != wiring(self.cluster):
            raise ValueError("this node, the overlay, the outside network (and its gateway) "
                             "and the node options "
                             "(fdbAgeSeconds, fdbMaxPerPort, busyPollMicroseconds, maxPodsPerNode, "
                             "metricsPort, flowLogEvents, "
                             "services, conntrack) need a restart; pods and Services can change")

    def reload(self, cluster: Cluster) -> dict:
        """Swap in the Services and NetworkPolicies of `cluster`, the live model (between batches, so atomically
        for the fast path): the cluster file re-read, or pods attached or detached anywhere.

        Nodes, the overlay and the node's options cannot change (ValueError; the running tables
        stay as they are); this node's attached pods are the node process's to reconcile.
        Established TCP connections keep their backends; UDP flows and affinity entries to a
        removed backend are flushed, so the next packet of such a flow chooses a live one."""
        self.check_reload(cluster)
        peers_changed = self.set_peers(cluster)
        new = servicetables.build(cluster, self.node.name)
        t = self.tables
        # every way a backend leaves a Service port (pod gone, relabelled, detached, its node
        # gone, the port changed): its UDP flows and affinity entries go, so the next datagram
        # of a fixed-source-port client picks a live backend (Kubernetes' conntrack e2e tests)
        removed = servicetables.backend_pairs(self.services) - servicetables.backend_pairs(new)
        t.conntrack.flows.state[FS_NOW] = self.now
        flushed = flush_udp(t.conntrack, removed, self.now)
        servicetables.carry_counts(self.services, new)
        self.tables = t._replace(services=new.group)
        self.tables.params[P_MASQUERADE] = int(cluster.masquerade)
        self.cluster = cluster
        self.services = new
        live = {pod.name: pod for pod in cluster.local_pods(self.node.name)}
        for port, pod in list(self.ports.items()):   # new labels and named ports of kept pods
            self.ports[port] = live.get(pod.name, pod)
        self._rebuild_policy()
        self.slow.set_ports(self.ports)
        return {"frontends": len(new.frontends), "backends": len(new.backend_names),
                "removed_backends": len({(ip, port) for _, ip, port in removed}),
                "flushed_udp_flows": flushed,
                "policies": len(cluster.policies), "shadowed_host_ports": new.shadowed,
                "peers_changed": peers_changed}

    def set_peers(self, cluster: Cluster) -> bool:
        """The other nodes of `cluster` as overlay peers (between batches): their tables, routes
        and keepalives; a peer that stays keeps when it was last heard from. False if they are
        the same nodes as before."""
        peers = [n for n in cluster.nodes if n.name != self.node.name]
        if peers == self.peers:
            return False
        seen = {p.name: int(self.tables.peers.peer_seen[k]) for k, p in enumerate(self.peers)}
        self.peers = peers
        group = tables_mod._peers(peers)
        for k, p in enumerate(peers):   # a new peer gets a full grace period from now
            group.peer_seen[k] = seen.get(p.name, self.now)
        self.tables = self.tables._replace(
            peers=group, outside=tables_mod._outside(cluster, peers),
            **tables_mod.pod_groups(self.ports, self.capacity, peers, self.tables.bridge))
        self.keepalive_frames = self._build_keepalives()
        return True

    def announce(self) -> list:
        """Gratuitous ARPs for the node address and any load-balancer address newly ours (the
        slow path answers ARP for exactly the announced ones from now on)."""
        return self.slow.announce(self.services.announced)

    # --- overlay peer liveness ---------------------------------------------------------------

    def _build_keepalives(self) -> list[bytes]:
        """A keepalive from our VTEP address (podCIDR .0) to every peer's, over the overlay
        (also into the peers' table, where the beat sends it from, fastpath.io._beat);
        any datagram from a peer marks it up. A vrouter peer sends its own every second, so
        it gets a one-way heartbeat, an ICMP echo *reply*, which it takes in and does not
        answer (as BFD's asynchronous mode: half the datagrams, and half the wake-ups, of an
        echo and its answer; a full mesh of 32 nodes exchanges ~1000 a second). A kernel
        (flannel-style) VTEP sends nothing by itself: it gets an echo request and answers."""
        mine = str(self.node.pod_cidr.network_address)
        mac = self.node.gateway_mac
        frames = [bytes(Ether(dst=mac, src=mac) / IP(src=mine, dst=str(p.pod_cidr.network_address))
                        / ICMP(type=ICMP_ECHO_REQUEST if p.kernel else ICMP_ECHO_REPLY,
                               id=0x7672, seq=k)) for k, p in enumerate(self.peers)]
        for k, frame in enumerate(frames):
            self.tables.peers.peer_keepalive[k] = np.frombuffer(frame, dtype=np.uint8)
        return frames

    def mark_peers_seen_now(self) -> None:
        """Give every peer a full grace period, e.g. when the node starts serving."""
        self.tables.peers.peer_seen[:] = self.now

    def peer_is_up(self, k: int) -> bool:
        """The fast path's own rule: heard from within the last P_PEER_DEAD_AFTER seconds."""
        t = self.tables
        return self.now - int(t.peers.peer_seen[k]) <= int(t.params[P_PEER_DEAD_AFTER])

    # --- reading the tables (status) -----------------------------------------------------------

    def fdb_entries(self) -> list[dict]:
        """Live MAC table entries: mac, port, static, age (None for static)."""
        b, now, age = self.tables.bridge, self.now, self.cluster.fdb_age
        entries = []
        for j in np.nonzero(b.fdb_keys)[0].tolist():
            static, seen = int(b.fdb_vals[j, L_STATIC]), int(b.fdb_vals[j, L_SEEN])
            if static or now - seen <= age:
                entries.append({"mac": tables_mod.int_to_mac(int(b.fdb_keys[j])),
                                "port": int(b.fdb_vals[j, L_VALUE]), "static": bool(static),
                                "age": None if static else now - seen})
        return entries

    def frontends(self) -> list[dict]:
        """The Service frontends, with the connections each has opened."""
        fe_new = self.services.fe_new
        return [{"service": f.service, "port": f.port_name,
                 "frontend": f"{f.address}:{f.port}/{f.protocol}", "backends": f.backends,
                 "snat": f.snat, "scope": f.scope, "new_connections": int(fe_new[f.slot])}
                for f in self.services.frontends]

    def conntrack_fill(self) -> dict:
        """How full the state tables are: connections (live, most at once, bound), affinity
        and fragment entries."""
        ct, now = self.tables.conntrack, self.now
        return {"entries": int(np.count_nonzero(live_mask(ct.recs, now))),
                "capacity": int(ct.recs.shape[0]),
                "high_water": int(ct.stats[CTS_HIGH_WATER]),
                "affinity": live_entries(ct.aff_keys, ct.aff_vals, AFF_EXPIRES, now),
                "affinity_capacity": int(ct.aff_keys.shape[0]),
                "fragments": live_entries(ct.frag_keys, ct.frag_vals, FRAG_EXPIRES, now),
                "fragment_capacity": int(ct.frag_keys.shape[0])}

    def sweep(self) -> dict:
        """What the beat's housekeeping does (fastpath.beat, run by serve once a second), now,
        between batches: free expired connections no packet has met, and MACs and outside
        neighbours that aged out (recounting what each port has learned). Returns how many of
        each it freed."""
        t = self.tables

        def counts():
            return (int(t.conntrack.stats[CTS_FREE]), int(np.count_nonzero(t.bridge.fdb_keys)),
                    int(np.count_nonzero(t.outside.nb_keys)))
        before = counts()
        housekeeping(t, self.now)
        after = counts()
        return {"connections": after[0] - before[0], "macs": before[1] - after[1],
                "neighbours": before[2] - after[2]}

    def outside_neighbours(self) -> list[tuple[int, str]]:
        o, now = self.tables.outside, self.now
        return sorted((int(o.nb_keys[j]), tables_mod.int_to_mac(int(o.nb_vals[j, L_VALUE])))
                      for j in np.nonzero(o.nb_keys)[0].tolist()
                      if o.nb_vals[j, L_STATIC] or now - o.nb_vals[j, L_SEEN] <= NEIGHBOUR_AGE)

    def counter_dict(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(COUNTER_NAMES, self.counters.tolist())}
