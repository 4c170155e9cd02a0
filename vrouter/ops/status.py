"""What `vrouter status` shows: a node's snapshot (vrouter.node.snapshot, read through its
control socket) rendered as text: ports, MAC table, ARP entries, peers, counters."""
from __future__ import annotations

import time


def _pod_lines(p: dict) -> list[str]:
    """A pod's owner, readiness and programs, under its port line."""
    lines = []
    programs = p.get("programs")
    if not p.get("owner") and not programs:
        return lines
    state = "leaving (draining)" if p.get("terminating") else \
        "ready" if p.get("ready") else "not ready"
    owner = f"owner {p['owner']}, " if p.get("owner") else ""
    lines.append(f"           {owner}{state}")
    for c in (programs or {}).get("containers", []):
        what = c["state"] + (f" ({c['reason']})" if c["reason"] not in ("Started",) else "")
        if c["pid"]:
            what += f" pid {c['pid']}"
        if c["next_start_in"] is not None:
            what += f", next start in {c['next_start_in']:g}s"
        what += f", {c['restarts']} restarts"
        last = c.get("last_exit")
        if last and last["reason"] != "StartError":
            what += f", last exit {last['signal'] or 'code ' + str(last['exit_code'])}"
        lines.append(f"           container {c['name']}: {what}"
                     + (", ready" if c["ready"] else ""))
        if c.get("error"):
            lines.append(f"             {c['error']}")
        if c.get("probe"):
            lines.append(f"             {c['probe']}")
    return lines


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
        lines += _pod_lines(p)
    w = status.get("workloads") or {}
    if w.get("progress"):
        lines.append("  workloads" + (" (their controllers run on this node):" if w["leader"]
                                      else ":"))
        for p in w["progress"]:
            desired = "" if p["desired"] is None else f"{p['desired']} desired, "
            lines.append(f"    {p['workload']:<32} {desired}{p['pods']} pods, {p['updated']} up "
                         f"to date, {p['available']} available")
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
        dropped = d.get("capture_dropped_ring_full", 0), d.get("capture_dropped_slow_reader", 0)
        if any(dropped) or d.get("captures_refused"):
            lines.append(f"    captures: {dropped[0]} frames dropped (ring full), {dropped[1]} "
                         f"(a slow reader), {d.get('captures_refused', 0)} sessions refused")
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
    f = status.get("flows")
    if f:
        verdicts: dict = {}
        for v in f["by_verdict"]:
            verdicts[v["verdict"]] = verdicts.get(v["verdict"], 0) + v["flows"]
        lines.append(f"  flow log: {f['events']} events ("
                     + (", ".join(f"{k} {n}" for k, n in sorted(verdicts.items())) or "none yet")
                     + f"), {f['kept']} kept of {f['capacity']}, ring {f['ring']}; lost: "
                     f"{f['lost_ring_full']} (ring full), {f['lost_slow_clients']} (slow "
                     f"clients); {f['followers']} following")
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
