"""Pod attachment: network namespaces (pyroute2), TAP devices (pytun), pod-side addressing.

A pod port is a TAP created in the node's namespace, moved into the pod's namespace and renamed
eth0 there. Our process keeps the fd: closing it (also when the process dies) removes the device.
Everything created is registered on an ExitStack so that a failure half-way undoes it all.

Every TAP is opened with IFF_VNET_HDR and offloads (checksum, TSO, USO where the kernel has it):
the pod's kernel then hands us 64 KiB super-frames with partial checksums instead of 1450-byte
frames, and accepts super-frames from us; each read and write starts with a virtio-net header.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pytun import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TunTapDevice

from vrouter.host import netns
from fastpath.layout import VNET_HDR_LEN
from vrouter.model.config import Cluster, Pod

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"

TUNSETOFFLOAD = 0x400454D0          # _IOW('T', 208, unsigned int)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40  # Linux >= 6.2
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
NO_VNET_HEADER = bytes(VNET_HDR_LEN)


class HostError(Exception):
    """The host cannot do what was asked (privileges, missing device, name clash...)."""


class InterfaceExists(HostError):
    """The pod's namespace has an interface of the name the pod's needs already."""


def describe(exc: BaseException) -> str:
    """What went wrong, readably: pyroute2's NetlinkError says only "(22, 'Invalid argument')"."""
    if isinstance(exc, NetlinkError):
        detail = exc.args[1] if len(exc.args) > 1 else None
        return f"netlink error {exc.code} ({os.strerror(exc.code)})" + (
            f": {detail}" if detail and detail != os.strerror(exc.code) else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def check_host() -> None:
    """Root and a usable /dev/net/tun, or a clear error before anything is created."""
    if os.geteuid() != 0:
        raise HostError("vrouter needs root (it creates network namespaces and TAP devices); "
                        "run it as root or with sudo")
    try:
        os.close(os.open(TUN_PATH, os.O_RDWR))
    except OSError as exc:
        raise HostError(f"cannot open {TUN_PATH} ({exc.strerror}): load the tun module "
                        "(modprobe tun) or give the container access to /dev/net/tun") from None


ETC_NETNS = "/etc/netns"


def netns_exists(pod: Pod) -> bool:
    return os.path.exists(pod.netns_path)


def create_netns(name: str) -> None:
    try:
        netns.create(name)
    except OSError as exc:
        raise HostError(f"cannot create network namespace {name!r}: {exc}") from None


def remove_netns(name: str) -> None:
    """A namespace vrouter made, with the resolv.conf it wrote for it (also after a kill -9,
    from `vrouter down`)."""
    netns.remove(name)
    directory = os.path.join(ETC_NETNS, name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, "resolv.conf"))
    with contextlib.suppress(OSError):
        os.rmdir(directory)   # only when empty: what else is there is not ours


def open_tap(prefix: str) -> tuple[TunTapDevice, bool]:
    """A TAP with a virtio-net header and offloads, under a short random name (it is renamed
    where it goes); (device, whether the kernel took UDP segmentation offload too).

    Made here and moved, not made in the pod's namespace (which would save the move, 15-20 ms
    of the kernel's): the TAP's fd holds the namespace it was opened in, so a pod's namespace
    deleted under us (`ip netns del`, a runtime without a CNI DEL) would never go, and the node
    would never see its TAP fail."""
    tap = TunTapDevice(name=prefix + secrets.token_hex(5), flags=IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    try:
        fcntl.ioctl(tap.fileno(), TUNSETOFFLOAD, OFFLOADS | TUN_F_USO4 | TUN_F_USO6)
        return tap, True
    except OSError:   # an older kernel: no USO, everything else still
        try:
            fcntl.ioctl(tap.fileno(), TUNSETOFFLOAD, OFFLOADS)
        except OSError:
            tap.close()
            raise
        return tap, False


class TapPort:
    """A TAP device the node reads and writes: its fd, non-blocking. Closing the fd (also when the
    process dies) removes the device. The data path reads and writes it from compiled code;
    `write` is for the slow path's few frames."""

    def __init__(self, tap: TunTapDevice, uso: bool = False):
        self.tap = tap
        self.fd = tap.fileno()
        self.uso = uso
        os.set_blocking(self.fd, False)

    def write(self, frame: bytes) -> None:
        os.write(self.fd, NO_VNET_HEADER + frame)

    def close(self) -> None:
        self.tap.close()


class PodPort(TapPort):
    """One attached pod: its TAP and what `vrouter status` shows of it."""

    def __init__(self, pod: Pod, tap: TunTapDevice, uso: bool, ifindex: int):
        super().__init__(tap, uso)
        self.pod = pod
        self.ifindex = ifindex


def write_resolv_conf(netns_name: str, text: str) -> None:
    """/etc/netns/NAME/resolv.conf: `ip netns exec NAME` mounts it over /etc/resolv.conf, so
    programs in the pod resolve cluster names as in a Kubernetes pod (dnsPolicy ClusterFirst).
    remove_netns removes it with the namespace."""
    directory = os.path.join(ETC_NETNS, netns_name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "resolv.conf"), "w") as f:
        f.write(text)


def move_tap(tap: TunTapDevice, netns_path: str, ifname: str, taken: str) -> None:
    """Move a TAP's kernel end into a network namespace, named `ifname` there;
    InterfaceExists(taken) when the namespace has an interface of that name already."""
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=tap.name)[0]
            try:
                ipr.link("set", index=index, net_ns_fd=nsfd, ifname=ifname)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise InterfaceExists(taken) from None
                raise
    finally:
        os.close(nsfd)


def attach_pod(cluster: Cluster, pod: Pod, stack: contextlib.ExitStack,
               created_netns: list[str], reuse: bool = False,
               remove: Callable[[str], None] = remove_netns) -> PodPort:
    """`reuse`: the pod's own namespace may exist already (made by an earlier run of this node,
    which crashed: the pod's processes are still in it). `remove` removes an own namespace when
    the pod goes."""
    if pod.owns_netns:
        make = not (reuse and netns_exists(pod))
        if make and netns_exists(pod):
            raise HostError(f"network namespace {pod.netns!r} for pod {pod.name!r} already "
                            f"exists; if it is left over from an earlier run, `vrouter down "
                            f"{cluster.source}` or `ip netns del {pod.netns}` removes it")
        # owned (recorded, and undone by the stack) before it is made: a signal between making
        # it and owning it would leave it to nobody (removing a missing one is a no-op)
        created_netns.append(pod.netns)
        stack.callback(remove, pod.netns)
        if make:
            create_netns(pod.netns)
        if cluster.dns.enabled and not pod.dns_server:
            write_resolv_conf(pod.netns, cluster.dns.resolv_conf(pod.namespace))
    elif not netns_exists(pod):
        raise HostError(f"network namespace {pod.netns!r} of pod {pod.name!r} does not exist")

    # every step names itself when it fails; closing the TAP (the stack) undoes them all: the
    # device, in whichever namespace it is by then, goes with its address and route
    with _step(f"cannot open a TAP device ({TUN_PATH})"):
        # a short random name for the moment the TAP lives in the node's namespace
        tap, uso = open_tap("vrt")
    port = PodPort(pod, tap, uso, ifindex=0)
    stack.callback(port.close)
    with _step(f"cannot move the TAP into {pod.netns} as {pod.ifname}"):
        move_tap(tap, pod.netns_path, pod.ifname,
                 taken=f"network namespace {pod.netns!r} already has an {pod.ifname}; vrouter "
                       "needs that name for the pod's interface")
    node = cluster.node(pod.node)
    with _step(f"cannot configure {pod.ifname} in {pod.netns} ({pod.ip}/"
               f"{node.pod_cidr.prefixlen}, default route via {node.gateway})"):
        port.ifindex = configure_pod_side(pod, cluster.overlay.pod_mtu, node.gateway,
                                          node.pod_cidr.prefixlen)
    return port


@contextlib.contextmanager
def _step(what: str):
    """Any failure of the block (NetlinkError, pytun's errors, OSError, a lookup that found
    nothing) as a HostError saying which step failed and why."""
    try:
        yield
    except HostError:
        raise
    except Exception as exc:
        raise HostError(f"{what}: {describe(exc)}") from exc


def configure_pod_side(pod: Pod, mtu: int, gateway, prefixlen: int) -> int:
    """Inside the pod: its interface (eth0) with MAC, MTU, address/prefix and a default route;
    lo up. lo comes last: it is the only change that would outlive the interface if a step
    failed."""
    with netns.route_socket(pod.netns_path) as ipr:
        index = ipr.link_lookup(ifname=pod.ifname)[0]
        ipr.link("set", index=index, address=pod.mac, mtu=mtu)
        _disable_ipv6(pod)
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address=str(pod.ip), prefixlen=prefixlen)
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=index)
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        return index


def interface_problem(pod: Pod, prefixlen: int) -> str | None:
    """None if the pod's interface is in its netns as it was made (up, its MAC, its address),
    else what is wrong."""
    if not os.path.exists(pod.netns_path):
        return f"network namespace {pod.netns} is gone"
    with netns.route_socket(pod.netns_path) as ipr:
        found = ipr.link_lookup(ifname=pod.ifname)
        if not found:
            return f"{pod.ifname} is missing in {pod.netns}"
        link = ipr.get_links(found[0])[0]
        if link.get_attr("IFLA_ADDRESS") != pod.mac:
            return f"{pod.ifname} has MAC {link.get_attr('IFLA_ADDRESS')}, not {pod.mac}"
        if not link["flags"] & 1:
            return f"{pod.ifname} is down"
        addresses = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=found[0])}
        if (str(pod.ip), prefixlen) not in addresses:
            return f"{pod.ifname} lacks {pod.ip}/{prefixlen}"
    return None


def _disable_ipv6(pod: Pod) -> None:
    """vrouter pods are IPv4-only: keep the interface quiet instead of dropping its IPv6
    chatter."""
    with netns.entered(pod.netns_path), contextlib.suppress(OSError):   # OSError: no IPv6
        with open(f"/proc/sys/net/ipv6/conf/{pod.ifname}/disable_ipv6", "w") as f:
            f.write("1")
