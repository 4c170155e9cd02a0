"""`vrouter run | kernel-node | up | down | reload | status | check | attach | detach |
cni-conf`, and the observing commands of vrouter.ops.observe (capture, trace, metrics)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vrouter.host import state
from vrouter.model import addressing
from vrouter.ops import control, kubectl, logs, observe
from vrouter.ops.common import (
    EXIT_CONFIG, EXIT_HOST, ask, cluster_arg, default_config, load_cluster,
    store_items, unknown_node,
)


def cmd_attach(args) -> int:
    cluster = cluster_arg(args.cluster)
    if unknown_node(args, cluster):
        return EXIT_CONFIG
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"vrouter: --label {item!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_CONFIG
        labels[key] = value
    mappings = []
    for item in args.publish:
        ports, _, protocol = item.partition("/")
        host, sep, container = ports.partition(":")
        if not (sep and host.isdigit() and container.isdigit()):
            print(f"vrouter: --publish {item!r}: expected HOSTPORT:CONTAINERPORT[/tcp|udp]",
                  file=sys.stderr)
            return EXIT_CONFIG
        mappings.append({"host_port": int(host), "container_port": int(container),
                         "protocol": protocol or "tcp"})
    name = args.name or Path(args.netns).name
    answer = ask(cluster, args.node, "attach", name=name, namespace=args.namespace,
                  netns=args.netns, labels=labels, ifname=args.ifname, ip=args.ip,
                  port_mappings=mappings)
    if not answer.get("ok"):
        print(f"vrouter: attach refused: {answer.get('error')}", file=sys.stderr)
        return EXIT_HOST if answer.get("kind") == "host" else EXIT_CONFIG
    print(f"attached pod {answer['namespace']}/{answer['pod']} to {args.node} port "
          f"{answer['port']}: {answer['ifname']} {answer['ip']} {answer['mac']} via "
          f"{answer['gateway']} in {answer['netns']}")
    return 0


def cmd_detach(args) -> int:
    from vrouter.model import attachments
    from vrouter.store.base import StoreError, attachment_key
    cluster = cluster_arg(args.cluster)
    try:
        value = store_items(cluster).get(attachment_key(args.name))
    except StoreError as exc:
        print(f"vrouter: the datastore does not answer: {exc}", file=sys.stderr)
        return EXIT_HOST
    record = attachments.Attachment.from_json(json.loads(value)) if value else None
    if record is None:
        print(f"vrouter: no pod {args.name!r} is attached at runtime in cluster "
              f"{cluster.name!r} (pods of the cluster file leave through a reload)",
              file=sys.stderr)
        return EXIT_CONFIG
    answer = ask(cluster, record.pod.node, "detach", name=args.name)
    if not answer.get("ok"):
        print(f"vrouter: detach failed: {answer.get('error')}", file=sys.stderr)
        return EXIT_HOST
    print(f"detached pod {args.name} from {record.pod.node}")
    return 0


def cmd_cni_conf(args) -> int:
    """A node's CNI network configuration (a conflist), printed or installed; optionally the
    plugin itself, for runtimes that look in a plugin directory."""
    import os
    cluster = cluster_arg(args.cluster)
    if unknown_node(args, cluster):
        return EXIT_CONFIG
    node = cluster.node(args.node)
    plugin = {"type": "vrouter-cni", "cluster": cluster.name, "node": node.name}
    if args.ipam:
        first, last = addressing.ipam_range(node.pod_cidr, cluster.dns.enabled)
        plugin["ipam"] = {"type": args.ipam, "ranges": [[{
            "subnet": str(node.pod_cidr), "rangeStart": str(first),
            "rangeEnd": str(last), "gateway": str(node.gateway)}]]}
        if args.ipam_data_dir:
            plugin["ipam"]["dataDir"] = args.ipam_data_dir
    plugin["capabilities"] = {"portMappings": True}   # host ports, in vrouter's data path
    plugins = [plugin]
    for chained in filter(None, (args.chain or "").split(",")):
        if chained == "portmap":
            print("vrouter: --chain portmap: vrouter-cni publishes host ports itself "
                  "(portMappings); portmap's iptables rules never see traffic to a node "
                  "address", file=sys.stderr)
            return EXIT_CONFIG
        if "/" in chained:
            print(f"vrouter: --chain {chained!r}: a plugin's file name", file=sys.stderr)
            return EXIT_CONFIG
        plugins.append({"type": chained, **CHAINED_CAPABILITIES.get(chained, {})})
    name = args.name or f"vrouter-{node.name}"
    conflist = json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, indent=2)
    if args.plugin_dir:
        target = Path(args.plugin_dir) / "vrouter-cni"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(plugin_wrapper())
        target.chmod(0o755)
        print(f"installed {target}", file=sys.stderr)
    if not args.install:
        print(conflist)
        return 0
    path = Path(args.install) / f"{name}.conflist"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(conflist + "\n")
    print(f"installed {path}: `podman run --network {name} ...` attaches containers to "
          f"{node.name}", file=sys.stderr)
    if not os.access(Path(args.plugin_dir or "/opt/cni/bin") / "vrouter-cni", os.X_OK):
        print("vrouter: the runtime also needs the plugin in one of its plugin directories: "
              "add --plugin-dir DIR (podman looks in /opt/cni/bin and /usr/lib/cni, "
              "among others)", file=sys.stderr)
    return 0


# plugins chained after vrouter-cni, with the capabilities a runtime fills in for them
CHAINED_CAPABILITIES = {"bandwidth": {"capabilities": {"bandwidth": True}}}


def plugin_wrapper() -> str:
    """The vrouter-cni executable for a runtime's plugin directory: this Python, isolated (-I:
    neither the runtime's working directory nor PYTHON* variables reach sys.path, so a
    vrouter/ planted where the runtime runs cannot be imported by this root process), with
    the vrouter that writes it, by absolute path (an editable install or a checkout works
    the same)."""
    import shlex
    import vrouter
    root = str(Path(vrouter.__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            "from vrouter.ops.cni import main; sys.exit(main())")
    return ("#!/bin/sh\n# vrouter-cni, written by `vrouter cni-conf --plugin-dir`\n"
            f"exec {shlex.quote(sys.executable)} -I -c {shlex.quote(code)} \"$@\"\n")


def cmd_check(args) -> int:
    from vrouter.model.services import endpoints
    cluster = load_cluster(args.config, manifests=args.manifests)
    print(f"{args.config}: ok: cluster {cluster.name}, {len(cluster.nodes)} nodes, "
          f"{len(cluster.pods)} pods, {len(cluster.services)} services")
    print(f"  outside network {cluster.node_network} in netns {cluster.outside_netns} "
          f"(host {cluster.outside_host})")
    for node in cluster.nodes:
        print(f"  node {node.name:<11} address {str(node.address):<15} podCIDR {node.pod_cidr}  "
              f"underlay {node.underlay}")
    for pod in cluster.pods:
        print(f"  {pod.name:<16} {pod.node:<10} {str(pod.ip):<15} {pod.mac}  netns {pod.netns}")
    for svc in cluster.services:
        address = (f"-> {svc.external_name} (DNS CNAME)" if svc.external_name
                   else svc.cluster_ip or "None (headless)")
        print(f"  service {svc.key} {svc.type} {address}"
              + "".join(f" {ip}" for ip in svc.external_ips))
        for sp in svc.ports:
            eps = ", ".join(f"{e.pod.ip}:{e.port}" for e in endpoints(svc, sp, cluster.pods))
            node_port = f" nodePort {sp.node_port}" if sp.node_port else ""
            print(f"    {sp.name or '-'} {sp.port}/{sp.protocol}{node_port} -> {eps or 'no endpoints'}")
    return 0


def cmd_reload(args) -> int:
    cluster = (load_cluster(args.config, manifests=args.manifests) if args.manifests
               else cluster_arg(args.config or default_config()))   # a bad file fails here, early
    failed = 0
    for node in cluster.nodes:
        try:
            answer = control.request(state.socket_path(cluster.name, node.name), "reload")
        except OSError:
            print(f"vrouter: node {node.name!r} of cluster {cluster.name!r} is not running",
                  file=sys.stderr)
            failed = 1
            continue
        if answer.get("ok"):
            pods = ""
            if answer.get("attached") or answer.get("detached"):
                pods = (f"; pods attached: {', '.join(answer['attached']) or 'none'}, "
                        f"{answer['detached']} detached")
            print(f"{node.name}: reloaded: {answer['frontends']} frontends, {answer['backends']} "
                  f"backends, {answer['removed_backends']} removed, "
                  f"{answer['flushed_udp_flows']} UDP flows flushed, "
                  f"{answer.get('policies', 0)} network policies{pods}")
            for hidden in answer.get("shadowed_host_ports", []):
                print(f"vrouter: {node.name}: host port {hidden} is hidden by a Service "
                      "frontend on the same address and port", file=sys.stderr)
            for failure in answer.get("failed", []):
                print(f"vrouter: {node.name}: pod {failure['pod']} not attached: "
                      f"{failure['error']}", file=sys.stderr)
                failed = 1
        else:
            print(f"vrouter: {node.name}: reload refused, still running the old state: "
                  f"{answer.get('error')}", file=sys.stderr)
            failed = 1
    return failed


def cmd_run(args) -> int:
    from vrouter.node import process as node
    from vrouter.host.tap import HostError
    cluster = load_cluster(args.config, manifests=args.manifests)
    listed = any(n.name == args.node for n in cluster.nodes)
    if listed and (args.underlay or args.address):
        print(f"vrouter: {cluster.source}: node {args.node!r} is listed there: its underlay and "
              "address come from the file (--underlay and --address are for nodes that "
              "register themselves)", file=sys.stderr)
        return EXIT_CONFIG
    if not listed:
        if cluster.datastore.type != "etcd":
            unknown_node(args, cluster)
            print("vrouter: (with cluster.datastore {type: etcd} a node the file does not list "
                  "registers itself: --underlay ADDRESS)", file=sys.stderr)
            return EXIT_CONFIG
        if not args.underlay:
            print(f"vrouter: node {args.node!r} is not in {cluster.source}: give --underlay "
                  "ADDRESS (its address on the network between the hosts) to register it",
                  file=sys.stderr)
            return EXIT_CONFIG
        from vrouter.model.names import dns_label_problem
        if dns_label_problem(args.node):
            print(f"vrouter: --node {args.node!r} {dns_label_problem(args.node)}",
                  file=sys.stderr)
            return EXIT_CONFIG
    try:
        node.run(cluster, args.node, args.underlay, args.address)
    except HostError as exc:
        print(f"vrouter: {exc}", file=sys.stderr)
        return EXIT_HOST
    except node.DatapathFailed as exc:
        print(f"vrouter: {exc}; its pods' namespaces are kept for its restart", file=sys.stderr)
        return node.EXIT_DATAPATH
    return 0


def cmd_kernel_node(args) -> int:
    from vrouter.host import kernelnode
    from vrouter.host.tap import HostError
    cluster = load_cluster(args.config, check_host=not args.down)
    if unknown_node(args, cluster):
        return EXIT_CONFIG
    if not cluster.node(args.node).kernel:
        print(f"vrouter: {cluster.source}: node {args.node!r} is not marked `kernel: true`: the "
              "other nodes must know that a Linux VXLAN device serves it (it hands over partial "
              "checksums)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.down:
            kernelnode.down(cluster, args.node)
            print(f"kernel node {args.node}: removed")
        else:
            kernelnode.up(cluster, args.node)
            node = cluster.node(args.node)
            print(f"kernel node {args.node}: {kernelnode.BRIDGE} {node.gateway}/"
                  f"{node.pod_cidr.prefixlen}, {kernelnode.VXLAN} vni {cluster.overlay.vni} "
                  f"port {cluster.overlay.port} local {node.underlay}, "
                  f"{len(cluster.pods_of(args.node))} pods")
    except HostError as exc:
        print(f"vrouter: {exc}", file=sys.stderr)
        return EXIT_HOST
    return 0


def cmd_up(args) -> int:
    from vrouter.ops import launcher
    if args.max_restarts < 0:
        print("vrouter: --max-restarts must be 0 or more", file=sys.stderr)
        return EXIT_CONFIG
    return launcher.up(load_cluster(args.config or default_config(), manifests=args.manifests),
                       args.timeout, launcher.RestartPolicy(max_restarts=args.max_restarts))


def cmd_down(args) -> int:
    from vrouter.ops import launcher
    return launcher.down(cluster_arg(args.config or default_config()))


def cmd_status(args) -> int:
    from vrouter.ops.status import render
    cluster = cluster_arg(args.config or default_config())
    names = [args.node] if args.node else [n.name for n in cluster.nodes]
    results, missing = [], []
    for name in names:
        try:
            results.append(control.request(state.socket_path(cluster.name, name), "status"))
        except OSError:
            missing.append(name)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(render(s, args.all) for s in results))
    for name in missing:
        print(f"vrouter: node {name!r} of cluster {cluster.name!r} is not running", file=sys.stderr)
    return 1 if missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vrouter", description=__doc__)
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info")
    parser.add_argument("-v", "--verbose", action="store_true", help="--log-level debug")
    parser.add_argument("--log-format", choices=logs.FORMATS, default="auto",
                        help="auto: text on a terminal, JSON lines when stdout is not one")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one node in the foreground")
    p.add_argument("config")
    p.add_argument("--node", required=True, help="which node of the config this process is")
    p.add_argument("--underlay", metavar="IP", help="a node the file does not list registers "
                   "itself (cluster.datastore etcd) with this overlay address, and gets a "
                   "podCIDR from cluster.podCIDR")
    p.add_argument("--address", metavar="IP", help="its address on cluster.nodeNetwork "
                   "(default: one after the file's nodes, by its podCIDR)")
    p.add_argument("--manifests", metavar="DIR", help="also read Service manifests from DIR")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("kernel-node", help="serve one node with the Linux kernel (bridge + "
                       "vxlan, as flannel programs it), in the current network namespace")
    p.add_argument("config")
    p.add_argument("--node", required=True)
    p.add_argument("--down", action="store_true", help="remove what an earlier run set up")
    p.set_defaults(func=cmd_kernel_node)

    p = sub.add_parser("up", help="start every node of a config on this machine (the demo)")
    p.add_argument("config", nargs="?", help="cluster file (default: configs/demo.yaml)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    p.add_argument("--max-restarts", type=int, default=5, metavar="N",
                   help="restart a node that exits at most N times a minute, then give up on "
                        "it (default 5; 0: never restart)")
    p.add_argument("--manifests", metavar="DIR", help="also read Service manifests from DIR")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("reload", help="re-read the cluster file into the running nodes: "
                       "Services, pods added, removed or relabelled (as SIGHUP does); a bad "
                       "config changes nothing")
    p.add_argument("config", nargs="?", help="a cluster file or a running cluster's name")
    p.add_argument("--manifests", metavar="DIR")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("down", help="stop a cluster's nodes and remove what they left behind")
    p.add_argument("config", nargs="?", help="a cluster file or a running cluster's name")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="ports, MAC table, ARP entries and counters of running nodes")
    p.add_argument("config", nargs="?", help="a cluster file or a running cluster's name")
    p.add_argument("--node")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also show counters that are zero")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("attach", help="attach a network namespace to a running node as a pod")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--node", required=True)
    p.add_argument("--netns", required=True, help="a name under /run/netns, or a path such as "
                   "/proc/PID/ns/net")
    p.add_argument("--name", help="the pod's name (default: the netns name)")
    p.add_argument("--namespace", default="default", help="its Kubernetes namespace")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ifname", default="eth0", help="its interface inside the netns")
    p.add_argument("--ip", help="its address (default: the lowest free one of the node)")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="HOSTPORT:CONTAINERPORT[/PROTO]", help="a host port: the node's "
                   "address:HOSTPORT leads to the pod's CONTAINERPORT (as podman -p)")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("detach", help="take a pod attached at runtime off its node")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--name", required=True, help="the pod")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("cni-conf", help="a node's CNI network configuration for container "
                       "runtimes (vrouter-cni)")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--node", required=True)
    p.add_argument("--name", help="the network's name (default: vrouter-NODE)")
    p.add_argument("--ipam", metavar="PLUGIN", help="delegate addresses to this IPAM plugin "
                   "(e.g. host-local), in the upper half of the node's podCIDR")
    p.add_argument("--ipam-data-dir", metavar="DIR", help="host-local's dataDir")
    p.add_argument("--chain", metavar="PLUGIN,...", help="plugins to run after vrouter-cni "
                   "in the conflist (e.g. tuning,bandwidth: the runtime runs them in order "
                   "with vrouter's result as prevResult)")
    p.add_argument("--install", metavar="DIR", help="write NAME.conflist into DIR "
                   "(e.g. /etc/cni/net.d) instead of printing it")
    p.add_argument("--plugin-dir", metavar="DIR", help="also install the vrouter-cni plugin "
                   "there (e.g. /opt/cni/bin)")
    p.set_defaults(func=cmd_cni_conf)

    observe.add_parsers(sub)
    kubectl.add_parsers(sub)

    p = sub.add_parser("check", help="validate a cluster file and show the pods' addresses")
    p.add_argument("config")
    p.add_argument("--manifests", metavar="DIR", help="also read Service manifests from DIR")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("debug" if args.verbose else args.log_level, args.log_format)
    try:
        return args.func(args)
    except BrokenPipeError:   # `vrouter status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
