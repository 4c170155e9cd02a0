"""A node's registration in the store, as flannel's subnet lease.

At start a node takes a lease (cluster.datastore.leaseTTL) and writes its key nodes/NAME (a
Kubernetes Node: podCIDR, underlay, VTEP MAC, outside address) with it; keepalives renew the
lease, and a node whose lease expires disappears from every other node's model (peers, routes,
Service endpoints). A node the cluster file lists keeps the file's podCIDR. One it does not
list (`vrouter run CONFIG --node NAME --underlay IP [--address IP]`) takes a podCIDR of
cluster.nodeCIDRMaskSize from cluster.podCIDR by one transaction that succeeds only if neither
nodes/NAME nor subnets/CIDR exists (another node that won the race makes it look for the next
one), the podCIDR it held before first while that is still free (remembered in a local file:
vrouter.host.state.write_memory). Two nodes of one name: the second is refused with the reason,
unless it is the same node started again on the same host (same underlay, its earlier process
gone), which takes its registration over.

A lease lost while the store was unreachable (longer than its TTL) is taken again, with the same
podCIDR, when the store answers. Unreachable is never fatal after the start: the node keeps
forwarding with what it knows; `status` says since when the store has not answered.

With the file store the lease is the node process itself and the registration is written into
its record; the code path is the same.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import logging

import trio

from vrouter.host import state
from vrouter.host.tap import HostError
from vrouter.model import addressing, live
from vrouter.model.types import Cluster, Node, mac_from_ip
from vrouter.store.base import NODES, SUBNETS, LeaseLost, Store, StoreError, Unreachable

log = logging.getLogger("vrouter.node.registration")

CLAIM_ATTEMPTS = 16          # lost races before a registering node gives up
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0   # reconnecting to an unreachable store


class Refused(HostError):
    """This node cannot register (its name is another node's, no podCIDR is left, ...)."""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat() \
        .replace("+00:00", "Z")


class Registration:
    def __init__(self, file: Cluster, name: str, underlay: str | None = None,
                 address: str | None = None):
        self.file = file
        self.name = name
        self.underlay = underlay
        self.address = address
        self.lease = 0
        self.node: Node | None = None       # as registered
        self.lost_pods: tuple = ()
        self.ready_pods: tuple = ()          # workloads.ready_key()s (vrouter.node.programs)
        self.failing_pods: tuple = ()
        self.created = now_rfc3339()
        self.lease_lost = 0                 # times the lease had to be taken again
        self.revoked = False
        self.last_error: str | None = None

    @property
    def listed(self) -> bool:
        return any(n.name == self.name for n in self.file.nodes)

    def document(self) -> dict:
        return live.node_document(self.node, self.lost_pods, self.created, self.ready_pods,
                                  self.failing_pods)

    def value(self) -> bytes:
        return json.dumps(self.document(), sort_keys=True).encode()

    # --- at start -----------------------------------------------------------------------------

    async def register(self, store: Store) -> Node:
        """Take the lease and the node's key (and podCIDR); Refused or Unreachable if not."""
        ttl = self.file.datastore.lease_ttl
        self.lease = await store.grant(ttl)
        if self.listed:
            self.node = self.file.node(self.name)
            await self._claim(store, None)
        else:
            await self._claim_subnet(store)
        memory = {"podCIDR": str(self.node.pod_cidr), "lease": self.lease,
                  "underlay": str(self.node.underlay)}
        if not self.listed and store.kind != "file":
            state.write_memory(self.file.name, self.name, memory)
        log.info("node %s: registered with podCIDR %s (lease %x, TTL %d s)", self.name,
                 self.node.pod_cidr, self.lease, ttl)
        return self.node

    async def _claim(self, store: Store, subnet: ipaddress.IPv4Network | None) -> bool:
        """nodes/NAME (and subnets/CIDR) for us, if nobody else holds them. True when done;
        False when the subnet went to another node meanwhile; Refused for the name."""
        key = NODES + self.name
        if store.kind == "file":   # the record is the registration; the process, the lease
            await store.put(key, self.value(), self.lease)
            return True
        existing = await store.get(key)
        expect = {key: 0}
        if existing is not None:
            self._check_takeover(existing)
            expect[key] = existing.revision
        puts = {key: self.value()}
        if subnet is not None:
            skey = SUBNETS + addressing.subnet_key(subnet)
            held = await store.get(skey)
            if held is not None:
                if _holder(held.value) != self.name:
                    return False
                expect[skey] = held.revision
            else:
                expect[skey] = 0
            puts[skey] = json.dumps({"node": self.name}).encode()
        if not await store.commit(puts, expect=expect, lease=self.lease):
            return False
        if existing is not None and existing.lease and existing.lease != self.lease:
            try:   # our earlier run's lease: its keys are ours now, the lease can go
                await store.revoke(existing.lease)
            except StoreError:
                pass
        return True

    def _check_takeover(self, existing) -> None:
        """Someone holds nodes/NAME: ourselves from an earlier run on this host (taken over),
        or another node (Refused)."""
        try:
            doc = json.loads(existing.value)
            theirs = doc["metadata"]["annotations"][live.ANNOTATION_UNDERLAY]
        except (ValueError, KeyError, TypeError):
            theirs = None
        ours = str(self.node.underlay) if self.node else self.underlay
        record = state.read_record(self.file.name, self.name)
        earlier_here = state.is_running(record) and record.get("pid") != state.identity()["pid"]
        if theirs != ours or earlier_here:
            raise Refused(f"node name {self.name!r} is taken: node {self.name!r} is registered "
                          f"already with underlay {theirs or 'unknown'}"
                          + (" and runs on this host" if earlier_here else "")
                          + f" (key {NODES}{self.name}); two nodes cannot share a name")

    async def _claim_subnet(self, store: Store) -> None:
        file = self.file
        if self.underlay is None:
            raise Refused(f"node {self.name!r} is not in {file.source}: give --underlay ADDRESS "
                          "to register it (and --address for its outside address)")
        try:
            underlay = ipaddress.IPv4Address(self.underlay)
        except ValueError:
            raise Refused(f"--underlay {self.underlay!r} is not an IPv4 address") from None
        memory = state.read_memory(file.name, self.name)
        for attempt in range(CLAIM_ATTEMPTS):
            taken = await self._taken_subnets(store)
            existing = await store.get(NODES + self.name)
            candidates = []
            if existing is not None:   # ours from an earlier run (else Refused in _claim)
                try:
                    candidates.append(ipaddress.IPv4Network(
                        json.loads(existing.value)["spec"]["podCIDR"]))
                except (ValueError, KeyError, TypeError):
                    pass
            if memory.get("podCIDR") and memory.get("underlay") == str(underlay):
                candidates.append(ipaddress.IPv4Network(memory["podCIDR"]))
            candidates += [s for s in addressing.node_subnets(file.pod_cidr, file.node_mask)]
            subnet = next((s for s in candidates if self._free(s, taken)), None)
            if subnet is None:
                raise Refused(f"no podCIDR of /{file.node_mask} is left in cluster.podCIDR "
                              f"{file.pod_cidr} for node {self.name!r}")
            self.node = self._node(underlay, subnet, taken)
            if await self._claim(store, subnet):
                return
            log.info("node %s: podCIDR %s went to another node; trying again", self.name,
                     subnet)
        raise Refused(f"node {self.name!r} lost the race for a podCIDR {CLAIM_ATTEMPTS} times")

    async def _taken_subnets(self, store: Store) -> dict:
        """podCIDR -> (holder, its outside address): the file's nodes and the registered."""
        taken = {n.pod_cidr: (n.name, n.address) for n in self.file.nodes}
        snapshot = await store.list(SUBNETS)
        for key, item in snapshot.items.items():
            try:
                subnet = addressing.subnet_from_key(key[len(SUBNETS):])
            except ValueError:
                continue
            taken[subnet] = (_holder(item.value), None)
        nodes = await store.list(NODES)
        for key, item in nodes.items.items():
            try:
                fields = live.node_fields(json.loads(item.value))
                taken[ipaddress.IPv4Network(fields["podCIDR"])] = (
                    fields["name"], ipaddress.IPv4Address(fields["address"]))
            except (ValueError, KeyError, TypeError):
                continue
        return taken

    def _free(self, subnet, taken: dict) -> bool:
        for other, (holder, _) in taken.items():
            if holder != self.name and other.overlaps(subnet):
                return False
        return subnet.subnet_of(self.file.pod_cidr)

    def _node(self, underlay, subnet, taken: dict) -> Node:
        """The node as it registers: its outside address given (--address) or the one after
        the file's nodes by its podCIDR's place in cluster.podCIDR."""
        network = self.file.node_network
        used = {a for _, (holder, a) in taken.items() if a is not None and holder != self.name}
        if self.address:
            try:
                address = ipaddress.IPv4Address(self.address)
            except ValueError:
                raise Refused(f"--address {self.address!r} is not an IPv4 address") from None
        else:
            index = (int(subnet.network_address) - int(self.file.pod_cidr.network_address)) \
                >> (32 - subnet.prefixlen)
            address = network.network_address + 2 + len(self.file.nodes) + index
            if address not in network or address >= network.broadcast_address:
                raise Refused(f"cluster.nodeNetwork {network} has no default address for node "
                              f"{self.name!r} (podCIDR {subnet}): give it --address")
        if address in used:
            raise Refused(f"address {address} is another node's: give node {self.name!r} "
                          "another --address")
        return Node(name=self.name, index=len(self.file.nodes), underlay=underlay,
                    pod_cidr=subnet, vtep_mac=mac_from_ip("0e:76", addressing.vtep_address(subnet)),
                    address=address)

    # --- while running ------------------------------------------------------------------------

    async def keep(self, store: Store, status) -> None:
        """Renew the lease every TTL/3 seconds; take it again if it was lost. `status` (the
        node's Sync) hears whether the store answers."""
        interval = max(0.5, self.file.datastore.lease_ttl / 3)
        backoff = BACKOFF_FIRST
        while True:
            try:
                try:
                    await store.keepalive(self.lease)
                except LeaseLost:
                    await self._again(store)
                status.reached()
                backoff = BACKOFF_FIRST
                await trio.sleep(interval)
            except Unreachable as exc:
                status.unreachable(exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except StoreError as exc:   # e.g. our podCIDR is another node's now
                self.last_error = str(exc)
                log.error("node %s: %s", self.name, exc)
                await trio.sleep(BACKOFF_MAX)

    async def _again(self, store: Store) -> None:
        """The lease expired (the store was unreachable for longer than its TTL): a new one,
        and the same key and podCIDR with it."""
        self.lease_lost += 1
        self.lease = await store.grant(self.file.datastore.lease_ttl)
        subnet = None if self.listed else self.node.pod_cidr
        if not await self._claim(store, subnet):
            raise StoreError(f"node {self.name!r} lost its lease and its podCIDR "
                             f"{self.node.pod_cidr} is another node's now: restart it to get "
                             "another one")
        log.warning("node %s: its lease had expired; registered again with podCIDR %s",
                    self.name, self.node.pod_cidr)
        self.last_error = None

    async def update(self, store: Store) -> None:
        """Write the registration again (its lost, ready or failing pods changed)."""
        await store.put(NODES + self.name, self.value(), self.lease)

    async def release(self, store: Store) -> None:
        """A clean stop: the lease goes, and the node's keys with it, at once."""
        if not self.revoked:
            await store.revoke(self.lease)
            self.revoked = True


def _holder(value: bytes) -> str | None:
    try:
        return json.loads(value)["node"]
    except (ValueError, KeyError, TypeError):
        return None
