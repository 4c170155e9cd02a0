"""What `vrouter status` shows: a node's ports, MAC table, ARP entries, peers and counters."""
from __future__ import annotations

import ipaddress
import os
import sys
import time

import fastpath
import vrouter
from vrouter.node.tables import ip_to_int


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
            "capture_frames_dropped": int(datapath.io.capture.fill[2])
            + sum(s.dropped for s in datapath.captures.sessions.values()),
            "outside": datapath.traffic(node.dp.uplink),
            "overlay": datapath.traffic(datapath.overlay_port),
            "batch_sizes": datapath.batch_sizes()}


def node_status(node) -> dict:
    """Everything the node shows (status, metrics): read in the data-path thread, so one
    consistent snapshot."""
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
        "underlay": f"{node.node.underlay}:{node.cluster.overlay.port}",
        "podCIDR": str(node.node.pod_cidr),
        "gateway": {"ip": str(node.node.gateway), "mac": node.node.gateway_mac},
        "vtepMAC": node.node.vtep_mac,
        "ports": [{"port": k, "pod": pod.name, "namespace": pod.namespace, "netns": pod.netns,
                   "tap": f"{pod.ifname} (ifindex {node.pods.ports[k].ifindex} in {pod.netns})",
                   "mac": pod.mac, "ip": str(pod.ip),
                   **(node.datapath.traffic(k) if node.datapath else {})}
                  for k, pod in sorted(dp.ports.items()) if k in node.pods.ports],
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


def _store(st: dict | None) -> list[str]:
    if not st:
        return []
    where = ", ".join(st.get("endpoints") or []) or st.get("root", "")
    if st["reachable"]:
        health = f"reachable, revision {st['revision']}, {st['keys']} keys"
        if st.get("watching"):
            health += f", watching through {st['watching']}"
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["unreachable_since"]))
        health = (f"UNREACHABLE since {since} ({time.time() - st['unreachable_since']:.0f} s; "
                  f"forwarding with the last state): {st['last_error']}")
    lines = [f"  store: {st['type']} {where}: {health}"]
    facts = [f"{k.replace('_', ' ')} {st[k]}" for k in ("events", "resyncs", "compactions",
                                                        "lost_streams", "rewatches", "apply_errors",
                                                        "skipped_total", "lease_lost")
             if st.get(k)]
    if facts:
        lines.append("    " + ", ".join(facts))
    for key in st.get("skipped_keys") or []:
        lines.append(f"    skipped key {key}")
    for held in st.get("held") or []:
        lines.append(f"    held: {held}")
    return lines


def _frames(t: dict) -> str:
    return (f"rx {t['rx_frames']} frames {t['rx_bytes']} B, "
            f"tx {t['tx_frames']} frames {t['tx_bytes']} B")


def render(status: dict, show_zero: bool = False) -> str:
    lines = [f"node {status['node']} (cluster {status['cluster']}, pid {status['pid']}, "
             f"{'ready' if status['ready'] else 'NOT READY'}, up {status['uptime']}s)",
             f"  podCIDR {status['podCIDR']}  gateway {status['gateway']['ip']} "
             f"{status['gateway']['mac']}  underlay {status['underlay']}  vtep {status['vtepMAC']}",
             "  ports:"]
    for p in status["ports"]:
        lines.append(f"    {p['port']:>3}  {p['pod']:<16} {p['ip']:<15} {p['mac']}  {p['tap']}"
                     + (f"  {_frames(p)}" if "rx_frames" in p else ""))
    lines.append("  mac table:")
    for e in status["fdb"]:
        kind = "static" if e["static"] else f"learned {e['age']}s ago"
        lines.append(f"    {e['mac']}  port {e['port']} ({e['pod']})  {kind}")
    lines.append("  arp:")
    for e in status["arp"]:
        lines.append(f"    {e['ip']:<15} {e['mac']}  {e['what']}")
    o = status["outside"]
    lines.append(f"  outside: {o['address']} {o['mac']} on {o['interface']} in {o['netns']}"
                 + (f", announcing {', '.join(o['announced'])}" if o["announced"] else "")
                 + (", masquerading pods' traffic" if status.get("masquerade") else ""))
    for e in o["neighbours"]:
        lines.append(f"    {e['ip']:<15} {e['mac']}")
    if status["peers"]:
        lines.append("  overlay peers:")
        for p in status["peers"]:
            lines.append(f"    {p['node']:<12} {p['underlay']:<15} {p['podCIDR']:<18} "
                         f"vtep {p['vtepMAC']}  {'up' if p['up'] else 'DOWN'}")
    if status.get("services"):
        lines.append("  services:")
        for f in status["services"]:
            backends = ", ".join(f["backends"]) or "no endpoints"
            extra = (" snat" if f["snat"] else "") + (" local" if f["scope"] != "cluster" else "")
            lines.append(f"    {f['frontend']:<24} {f['service']}{'/' + f['port'] if f['port'] else ''}"
                         f"{extra} -> {backends}  ({f['new_connections']} connections)")
        ct = status["conntrack"]
        lines.append(f"  conntrack: {ct['entries']} connections of {ct['capacity']} (at most "
                     f"{ct['high_water']} so far); affinity {ct['affinity']} of "
                     f"{ct['affinity_capacity']}, fragments {ct['fragments']} of "
                     f"{ct['fragment_capacity']}")
    if status.get("policies"):
        lines.append("  network policies:")
        for p in status["policies"]:
            isolates = "; ".join(f"{d.lower()}: {', '.join(pods)}"
                                 for d, pods in p["isolates"].items()) or "no pod of this node"
            lines.append(f"    {p['policy']:<28} {'+'.join(p['types']):<15} isolates {isolates}"
                         f"  ({p['dropped']} refused)")
    d = status.get("datapath")
    if d:
        lines.append(f"  data path: busy-poll {d['busy_poll_us']} us after traffic, TAP offloads "
                     f"{d['tap_offloads']}, overlay source ports "
                     f"{', '.join(map(str, d['overlay_source_ports']))}")
        lines.append(f"    overlay {_frames(d['overlay'])}; outside {_frames(d['outside'])}"
                     + (f"; {d['captures']} captures running" if d["captures"] else ""))
        sizes = d["batch_sizes"]
        reads = sum(sizes["buckets"].values())
        if reads:
            lines.append(f"    {reads} reads, {sizes['frames'] / reads:.1f} frames per read")
        if d.get("requests"):
            lines.append(f"    {d['requests']} control requests run between batches, the "
                         f"longest {d['longest_request_us'] / 1000:.1f} ms")
    if status.get("dns"):
        d = status["dns"]
        answers = ", ".join(f"{k} {v}" for k, v in sorted(d["answers"].items())) or "no queries yet"
        lines.append(f"  dns: {d['address']} ({d['domain']}) served by {d['server']}: {answers}")
    if status.get("metrics"):
        lines.append(f"  metrics: {status['metrics']}")
    lines += _store(status.get("store"))
    faults = {k: v for k, v in (status.get("faults") or {}).items() if v}
    if faults:
        lines.append("  faults contained: " + ", ".join(f"{k} {v}" for k, v in faults.items()))
    r = status.get("reloads", {})
    if r.get("ok") or r.get("refused"):
        lines.append(f"  reloads: {r['ok']} applied, {r['refused']} refused"
                     + (f" (last: {r['last_error']})" if r.get("last_error") else ""))
    a = status.get("attaches", {})
    if a.get("ok") or a.get("refused"):
        lines.append(f"  attach requests: {a['ok']} attached, {a['refused']} refused"
                     + (f" (last: {a['last_error']})" if a.get("last_error") else ""))
    c = {k: v for k, v in (status.get("control") or {}).items() if v}
    if c:
        lines.append("  control socket: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                       for k, v in sorted(c.items())))
    lines.append("  counters:")
    for name, value in status["counters"].items():
        if value or show_zero:
            lines.append(f"    {name:<32} {value}")
    return "\n".join(lines)
