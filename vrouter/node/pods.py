"""A node's pods while it runs: attaching and detaching them under live traffic.

The node serves the pods of the live model (vrouter.model.live: the cluster file plus what the
store holds: pods attached at runtime anywhere in the cluster, Pods applied to the store). `apply` makes the node match a
new live model: the host side of a pod (its TAP moved into its netns, addressed) is made or
removed in a worker thread, its port is added to or taken from the data path between two batches,
and the Service tables follow. It runs when the file is reloaded, when a pod is attached or
detached here (`vrouter attach`, vrouter-cni), when the store changes (vrouter.node.sync: its
watch), and when a pod's netns vanishes under the node.

A node that starts again after a crash (kill -9, a failed data path) rebuilds from what is on
the machine: the namespaces its earlier run created for the file's pods are reused (`adoptable`,
from its record), and its runtime attachments whose namespace still exists are attached again
(`restore`), so the pods' processes keep their sockets and their flows resume on new TAPs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os

import trio

from vrouter.host import netns as host_netns
from vrouter.host.tap import InterfaceExists, attach_pod, describe, remove_netns
from vrouter.model import addressing, attachments
from vrouter.model.attachments import Attachment
from vrouter.model.config import Cluster, ContainerPort, Pod, mac_from_ip
from vrouter.model.names import cni_name_problem, dns_label_problem, interface_problem
from vrouter.node.dataplane import PodsFull
from vrouter.store.base import attachment_key

log = logging.getLogger("vrouter.node.pods")

MAX_PORT_MAPPINGS = 64   # one pod's host ports at most (a request is bounded)


class PodError(Exception):
    """An attach or detach request that cannot be done; `kind` says why and `field` which
    request field was wrong, if one was (vrouter-cni turns both into CNI's codes)."""

    def __init__(self, kind: str, message: str, field: str | None = None):
        super().__init__(message)
        self.kind = kind   # "invalid", "taken", "exhausted", "no-netns", "unknown", "host"
        self.field = field


def same_interface(a: Pod, b: Pod) -> bool:
    """Whether two versions of a pod can keep one interface (labels and ports may differ)."""
    return (a.ip, a.mac, a.netns, a.ifname, a.owns_netns) == (b.ip, b.mac, b.netns, b.ifname,
                                                              b.owns_netns)


class LocalPods:
    def __init__(self, node):
        self.node = node                 # vrouter.node.process.Node
        self.ports: dict = {}            # port -> PodPort (its TAP), for status and cleanup
        self.stacks: dict = {}           # port -> ExitStack undoing that pod's host side
        self.lock = trio.Lock()          # one change at a time
        self.down_nodes: set[str] = set()   # peers silent for too long (their pods are out)
        self.seen: tuple = ()            # the records the last apply saw
        # namespaces an earlier (crashed) run of this node created: its pods reuse them
        self.adoptable: set[str] = set()
        # file pods whose netns vanished under the node: left out until a reload or a restart
        self.lost: set[str] = set()
        # at start, this node's runtime attachments wait until the data path runs (restore)
        self.restoring = True

    # --- after the start ---------------------------------------------------------------------

    async def restore(self) -> dict:
        """Attach this node's runtime pods again (the data path runs): those whose host side
        fails are released, the others serve as before the restart."""
        node = self.node
        self.restoring = False
        summary = await node.sync.resync()
        failed = [f["pod"] for f in summary.get("failed", [])]
        for a in node.attachments():
            if a.pod.node == node.name and a.pod.name in failed:
                await node.store.delete(attachment_key(a.pod.name))
                log.warning("node %s: pod %s attached at runtime cannot be attached again: "
                            "released", node.name, a.pod.name)
        if failed:
            summary = await node.sync.resync()
        return summary

    # --- at start: synchronous, on the node's ExitStack ----------------------------------------

    def attach_at_start(self, port: int, pod: Pod) -> None:
        stack = contextlib.ExitStack()
        try:
            self.ports[port] = self._host_attach(pod, stack)
        except BaseException:
            stack.close()
            raise
        self.stacks[port] = stack

    def close_all(self) -> None:
        for port in sorted(self.stacks, reverse=True):
            self.stacks.pop(port).close()
            self.ports.pop(port, None)

    # --- while running -----------------------------------------------------------------------

    async def apply(self, live: Cluster) -> dict:
        """Make the node serve `live`: check it (ValueError changes nothing), detach pods that
        left or changed address, attach new ones, then swap the tables. Returns a summary;
        pods whose host side failed are listed under "failed" (the rest is applied)."""
        node, dp = self.node, self.node.dp
        async with self.lock:
            dp.check_reload(live)
            desired = {p.name: p for p in live.local_pods(node.name)}
            current = {pod.name: port for port, pod in dp.ports.items()}
            gone = [port for name, port in current.items()
                    if name not in desired or not same_interface(dp.ports[port], desired[name])]
            for port in gone:
                await self._detach(port)
            added, failed = [], []
            for name, pod in desired.items():
                if name in current and current[name] not in gone:
                    continue
                try:
                    await self._attach(pod)
                    added.append(name)
                except PodError as exc:
                    log.warning("node %s: cannot attach pod %s: %s", node.name, name, exc)
                    failed.append({"pod": name, "kind": exc.kind, "field": exc.field,
                                   "error": str(exc)})
            summary = await node.datapath.run(lambda: node.swap(live))
            node.cluster = live
        await node.model_changed()
        return {**summary, "attached": added, "detached": len(gone), "failed": failed}

    async def _attach(self, pod: Pod) -> int:
        """The pod's host side and its port, or PodError with everything made undone: whatever
        the host throws (NetlinkError, pytun's errors, OSError, ...) is the pod's failure,
        never the node's."""
        stack = contextlib.ExitStack()
        try:
            try:
                tap = await trio.to_thread.run_sync(self._host_attach, pod, stack)
                port = await self.node.datapath.run(lambda: self._serve(pod, tap))
            except InterfaceExists as exc:
                raise PodError("taken", str(exc), "ifname") from exc
            except PodsFull as exc:
                raise PodError("exhausted", str(exc)) from exc
            except Exception as exc:
                raise PodError("host", f"pod {pod.name!r}: {describe(exc)}") from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, stack, pod.name)
            raise
        self.ports[port] = tap
        self.stacks[port] = stack
        return port

    def _serve(self, pod: Pod, tap) -> int:
        """In the data-path thread: a port for the pod, its TAP served from the next batch."""
        port = self.node.dp.attach(pod)
        self.node.datapath.add_tap(port, tap)
        return port

    async def _detach(self, port: int) -> None:
        node = self.node

        def unserve():
            node.datapath.remove_tap(port)
            node.dp.detach(port)
        await node.datapath.run(unserve)
        self.ports.pop(port, None)
        stack = self.stacks.pop(port)
        with trio.CancelScope(shield=True):   # the TAP closes: the interface goes
            await trio.to_thread.run_sync(_close, stack, f"port {port}")

    def _host_attach(self, pod: Pod, stack: contextlib.ExitStack):
        """The pod's TAP in its netns, addressed; its namespace made when the node owns it (or
        reused when an earlier run of this node made it), and recorded for `vrouter down`."""
        node = self.node
        created: list[str] = []
        tap = attach_pod(node.cluster, pod, stack, created, reuse=pod.netns in self.adoptable,
                         remove=self._remove_owned)
        if created:
            self.adoptable -= set(created)   # reused: recorded as made by this run now
            node.created_netns += created
            node.write_record()

            def unrecord():
                if node.preserve:
                    return   # a failed node keeps its record for its restart
                for name in created:
                    if name in node.created_netns:
                        node.created_netns.remove(name)
                node.write_record()
            stack.callback(unrecord)
        return tap

    def _remove_owned(self, name: str) -> None:
        """A namespace of ours goes with its pod, unless the node failed: then its restart
        reuses it (and the pod's processes keep their sockets)."""
        if not self.node.preserve:
            remove_netns(name)

    def remove_unadopted(self) -> None:
        """After the start: namespaces of the earlier run that no pod reused (a pod the file
        no longer has) are ours to remove."""
        for name in sorted(self.adoptable):
            log.info("node %s: removing network namespace %s of an earlier run", self.node.name,
                     name)
            remove_netns(name)
        self.adoptable.clear()

    # --- requests: attach, detach, check, gc ---------------------------------------------------

    def new_attachment(self, request: dict) -> Attachment:
        """The pod a request describes, checked against the live model and the host before
        anything is made (PodError if it cannot be attached)."""
        node, live = self.node, self.node.cluster
        name = request.get("name")
        _check(dns_label_problem(name), "name", f"pod name {name!r}")
        namespace = request.get("namespace") or "default"
        _check(dns_label_problem(namespace), "namespace", f"namespace {namespace!r}")
        container_id = request.get("container_id") or ""
        if container_id:
            _check(cni_name_problem(container_id), "container_id", f"container id {container_id!r}")
        network = request.get("network") or ""
        if network:
            _check(cni_name_problem(network), "network", f"network name {network!r}")
        ifname = request.get("ifname") or "eth0"
        _check(interface_problem(ifname), "ifname", f"interface name {ifname!r}")
        labels = request.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise PodError("invalid", "labels must map strings to strings", "labels")
        netns = request.get("netns")
        if not isinstance(netns, str) or not netns or "\0" in netns:
            raise PodError("invalid", "a network namespace (name or path) is required", "netns")
        path = netns if netns.startswith("/") else os.path.join("/run/netns", netns)
        self._check_netns(netns, path)
        if len(node.dp.ports) >= node.dp.capacity:
            raise PodError("exhausted", f"node {node.name!r} has all {node.dp.capacity} pod "
                                        "ports in use (cluster.maxPodsPerNode)")
        try:
            declared = live.pod(name)
        except KeyError:
            declared = None
        if declared is not None:
            if not declared.awaiting_cni:
                raise PodError("taken", f"pod name {name!r} is taken (by the pod on node "
                                        f"{declared.node!r}, netns {declared.netns})", "name")
            if declared.node != node.name:
                raise PodError("taken", f"pod {name!r} of the cluster file belongs to node "
                                        f"{declared.node!r}, not {node.name!r}", "name")
            pod = dataclasses.replace(declared, netns=path, ifname=ifname)
        else:
            ip = self._address(request.get("ip"))
            pod = Pod(name=name, namespace=namespace, node=node.name, ip=ip,
                      mac=mac_from_ip("0a:58", ip), netns=path, owns_netns=False,
                      labels=tuple(sorted(labels.items())), ifname=ifname)
        published = self._host_ports(request.get("port_mappings") or [], pod)
        if published:
            pod = dataclasses.replace(pod, ports=pod.ports + published)
        return Attachment(pod, container_id, network, attachments.netns_id(path))

    def _host_ports(self, mappings, pod: Pod) -> tuple[ContainerPort, ...]:
        """A runtime's port mappings (CNI portMappings) as the pod's host ports, each free on
        this node: no other pod's, no Service's nodePort or health-check port."""
        node, live = self.node, self.node.cluster
        if not isinstance(mappings, list) or len(mappings) > MAX_PORT_MAPPINGS:
            raise PodError("invalid", f"port mappings must be a list of at most "
                                      f"{MAX_PORT_MAPPINGS}", "port_mappings")
        # the live model, and the records claimed but not yet in it (an attach in flight)
        others = [p for p in live.pods if p.node == node.name and p.name != pod.name]
        if mappings:
            others += [a.pod for a in node.attachments()
                       if a.pod.node == node.name and a.pod.name != pod.name]
        taken = {(cp.protocol, cp.host_port): f"pod {p.name!r}" for p in others
                 for cp in p.ports if cp.host_port}
        taken.update({(cp.protocol, cp.host_port): "this pod's own declaration"
                      for cp in pod.ports if cp.host_port})
        for service in live.services:
            for sp in service.ports:
                if sp.node_port:
                    taken[(sp.protocol, sp.node_port)] = f"Service {service.key}'s nodePort"
            if service.health_check_node_port:
                taken[("TCP", service.health_check_node_port)] = \
                    f"Service {service.key}'s healthCheckNodePort"
        published = []
        for n, m in enumerate(mappings):
            where = f"port mapping {n}"
            if not isinstance(m, dict) or set(m) - {"host_port", "container_port", "protocol",
                                                    "host_ip"}:
                raise PodError("invalid", f"{where} must be {{host_port, container_port, "
                                          "protocol, host_ip}", "port_mappings")
            address = str(node.node.address)
            if m.get("host_ip", "") not in ("", "0.0.0.0", address):
                raise PodError("invalid", f"{where}: host address {m['host_ip']!r} is not node "
                                          f"{node.name!r}'s ({address})", "port_mappings")
            numbers = [m.get("host_port"), m.get("container_port")]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535
                       for v in numbers):
                raise PodError("invalid", f"{where}: ports must be numbers 1..65535",
                               "port_mappings")
            protocol = str(m.get("protocol") or "TCP").upper()
            if protocol not in ("TCP", "UDP"):
                raise PodError("invalid", f"{where}: protocol {m.get('protocol')!r} is not "
                                          "TCP or UDP (vrouter translates no SCTP)",
                               "port_mappings")
            slot = (protocol, numbers[0])
            if slot in taken:
                raise PodError("taken", f"host port {numbers[0]}/{protocol} of node "
                                        f"{node.name!r} is taken by {taken[slot]}",
                               "port_mappings")
            taken[slot] = "an earlier mapping of this request"
            published.append(ContainerPort("", numbers[1], protocol, numbers[0]))
        return tuple(published)

    def _check_netns(self, netns: str, path: str) -> None:
        """`path` is a network namespace, and none vrouter uses already: not the node's own
        (a pod's default route would become the host's), not the outside network's, not a
        pod's (one pod, one namespace)."""
        try:
            wanted = host_netns.identity(path)
        except FileNotFoundError:
            raise PodError("no-netns", f"network namespace {netns!r} does not exist ({path})",
                           "netns") from None
        except host_netns.NotANamespace as exc:
            raise PodError("invalid", str(exc), "netns") from None
        except OSError as exc:   # not ours to read, say
            raise PodError("invalid", f"network namespace {netns!r}: {describe(exc)}",
                           "netns") from None
        live = self.node.cluster
        if wanted == _identity("/proc/self/ns/net"):
            raise PodError("invalid", f"{netns} is the network namespace of node "
                                      f"{self.node.name!r} itself, not a container's", "netns")
        if wanted == _identity(os.path.join("/run/netns", live.outside_netns)):
            raise PodError("invalid", f"{netns} is the cluster's outside network "
                                      f"({live.outside_netns}), not a container's", "netns")
        for pod in live.pods:
            if not pod.awaiting_cni and _identity(pod.netns_path) == wanted:
                raise PodError("taken", f"network namespace {netns} is pod {pod.name!r}'s "
                                        f"already (on node {pod.node!r})", "netns")

    def _address(self, wanted) -> ipaddress.IPv4Address:
        """`wanted` (from a delegated IPAM plugin) if it is free here, else the lowest free
        address of the node's podCIDR after the gateway."""
        node, live = self.node, self.node.cluster
        cidr = node.node.pod_cidr
        # the records too: one attached a moment ago may not be in the live model yet
        taken = {p.ip for p in live.pods} | {node.node.gateway} | {
            a.pod.ip for a in node.attachments()}
        if wanted:
            try:
                ip = ipaddress.IPv4Address(str(wanted).split("/")[0])
            except ValueError:
                raise PodError("invalid", f"{wanted!r} is not an IPv4 address", "ip") from None
            if addressing.pod_address_problem(ip, cidr, node.name):
                raise PodError("invalid", f"{ip} is not a pod address of node {node.name!r}'s "
                                          f"podCIDR {cidr}", "ip")
            if ip in taken:
                raise PodError("taken", f"address {ip} is taken", "ip")
            return ip
        ip = addressing.lowest_free(cidr, taken)
        if ip is None:
            raise PodError("exhausted", f"node {node.name!r}'s podCIDR {cidr} has no free address")
        return ip

    def record_of(self, name: str | None = None, container_id: str | None = None,
                  ifname: str | None = None) -> Attachment | None:
        for a in self.node.attachments():
            if a.pod.node != self.node.name:
                continue
            if name and a.pod.name == name:
                return a
            if container_id and a.container_id == container_id \
                    and (not ifname or a.pod.ifname == ifname):
                return a
        return None


def _check(problem: str | None, field: str, what: str) -> None:
    if problem:
        raise PodError("invalid", f"{what} {problem}", field)


def _identity(path: str) -> tuple[int, int] | None:
    """A namespace's identity, None when there is none at `path` (a pod not started yet)."""
    try:
        return host_netns.identity(path)
    except (OSError, ValueError):
        return None


def _close(stack: contextlib.ExitStack, what: str) -> None:
    """Undo a pod's host side; a step that fails is logged, never raised over the error that
    made us undo it."""
    try:
        stack.close()
    except Exception as exc:
        log.error("undoing the host side of %s failed: %s", what, describe(exc))

