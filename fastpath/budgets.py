"""Budgets for the slow path, enforced before a frame leaves compiled code.

The slow path (scapy, in the data-path thread) costs ~100 us a frame, so what may reach it is
limited here, per second:
  - per ingress port (each pod, the uplink, the overlay): one pod flooding ARP or SYNs to its
    gateway spends its own budget, never another pod's (`drop_slow_path_budget`);
  - ICMP errors and refusals (time exceeded, unreachable, fragmentation needed, a Service's RST
    or port unreachable) per destination, as Linux's icmp_ratelimit does per peer, and for the
    node as a whole, as icmp_msgs_per_sec does (`drop_icmp_ratelimited`): a flood of packets
    with unroutable sources costs a table lookup each, not a scapy call.
The packet itself is dropped in either case: only the node's answer is not made.

Tables: the Budgets group (vrouter.node.tables).
  port_used[ports + 2, 2]       per ingress port (pods, the uplink, the overlay): second, used
  dest_keys / dest_vals         per destination (windowed, fastpath.conntrack): second, used
  node_used[2]                  all ICMP errors of the node: second, used
"""

from fastpath.conntrack import wclaim, wfind
from fastpath.jit import compiled, inlined, internal

B_SECOND = 0
B_USED = 1

PORT_BUDGET = 1000      # slow-path frames per second per ingress port
DEST_BUDGET = 6         # ICMP errors per second per destination (Linux: a burst of 6, 1/s)
NODE_BUDGET = 1000      # ICMP errors per second per node (Linux: net.ipv4.icmp_msgs_per_sec)


@inlined
def _spend(used, now, budget):
    """One unit of a per-second budget kept in used[B_SECOND], used[B_USED]."""
    if used[B_SECOND] != now:
        used[B_SECOND] = now
        used[B_USED] = 0
    if used[B_USED] >= budget:
        return False
    used[B_USED] += 1
    return True


@internal
def port_allows(budgets, port, now):
    return _spend(budgets.port_used[port], now, PORT_BUDGET)


@compiled
def icmp_allows(budgets, dst, now, counters, evicted):
    """May the node send an ICMP error (or a refusal) to `dst` now?"""
    keys, vals = budgets.dest_keys, budgets.dest_vals
    j = wfind(keys, vals, B_SECOND, dst, 1, now)
    if j < 0:
        j = wclaim(keys, vals, B_SECOND, dst, 1, now, counters, evicted)
        vals[j, B_SECOND] = now
        vals[j, B_USED] = 0
    if vals[j, B_USED] >= DEST_BUDGET:
        return False
    if not _spend(budgets.node_used, now, NODE_BUDGET):
        return False
    vals[j, B_USED] += 1
    return True
