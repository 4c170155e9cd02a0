"""NetworkPolicy: may this new connection leave its pod, and enter the pod it is for?

Runs after the services stage, so a connection to a Service is judged against the backend it
was translated to. Only a connection's first packet is judged: a packet conntrack knows
(M_FLOW: either direction of a tracked connection, or an ICMP error about one) passes, and an
allowed first packet of a pod that any policy selects is followed by conntrack (a plain
connection, F_PLAIN), so the replies pass however the pods are isolated. A refused first packet
is dropped and counted for every policy isolating its pod in that direction; a Service or
masquerade translation it opened is forgotten, with the translation of its later fragments.

Tables: the Policy group (vrouter.node.policytables compiles it per node from the live model):
  port_rules[port, PR_*]     per local pod port: selected by any policy; per direction
                             (PR_INGRESS / PR_EGRESS + D_*): isolated, its rules, its policies
  rules[r, RU_*]             peer set (-1: any peer), protocol (0: any), port range, or a
                             named-port set (egress: the port's number on each destination pod)
  peer_sets[s, PS_*]         pods (members hash) or an ipBlock (network, mask; excepts rows)
"""
import numpy as np

from fastpath import hashtable
from fastpath.checksum import read16, read32
from fastpath.conntrack import (
    C_O_DST, C_O_SRC, F_PLAIN, FRAG_DST, FRAG_EXPIRES, FRAG_NAT_TAG, FRAG_POLICY_TAG, FRAG_SRC,
    T_FRAGMENT, echo_ports, open_connection, opens, release, track, tuple_key, wclaim, wfind,
)
from fastpath.jit import compiled, inlined, internal
from fastpath.layout import (
    ACT_DROP, ETH_LEN, FLOW_ESTABLISHED, FLOW_NEW, FLOW_NONE, M_CT_SLOT, M_FLOW, M_IN_PORT,
    M_OWN, M_ROW, M_START, P_UPLINK_PORT,
)
from fastpath.reasons import (
    R_CT_FULL_REFUSED, R_DROP_POLICY_EGRESS, R_DROP_POLICY_INGRESS, R_FRAG_EVICTED,
    R_POLICY_FLOWS_TRACKED,
)
from fastpath.stages import NEXT, finish

# port_rules columns
PR_SELECTED = 0        # some policy selects the pod (in any direction): follow its connections
PR_INGRESS = 1         # the ingress direction's columns start here
PR_EGRESS = 6          # the egress direction's
D_ISOLATED = 0
D_FIRST_RULE = 1
D_RULES = 2
D_FIRST_POLICY = 3     # into policy_ids
D_POLICIES = 4
PR_COLS = 11

# rules columns
RU_SET = 0             # peer set, -1: any peer
RU_PROTO = 1           # 6, 17, or 0: any protocol and port
RU_LOW = 2
RU_HIGH = 3
RU_NAMED = 4           # named-port set (egress), -1: the range above
RU_COLS = 5

# peer_sets columns
PS_KIND = 0
PS_NET = 1
PS_MASK = 2
PS_COLS = 3
SET_PODS = 0
SET_BLOCK = 1



@inlined
def member_key(peer_set, ip):
    return (np.uint64(peer_set + 1) << np.uint64(32)) | np.uint64(ip)


@inlined
def named_key(named_set, ip, port):
    return (np.uint64(named_set + 1) << np.uint64(48)) | (np.uint64(ip) << np.uint64(16)) \
        | np.uint64(port)


@internal
def in_peer_set(policy, s, ip):
    sets = policy.peer_sets
    if sets[s, PS_KIND] == SET_PODS:
        return hashtable.find(policy.members, member_key(s, ip)) >= 0
    if (ip & sets[s, PS_MASK]) != sets[s, PS_NET]:
        return False
    excepts = policy.excepts
    for e in range(excepts.shape[0]):
        if excepts[e, 0] == s and (ip & excepts[e, 2]) == excepts[e, 1]:
            return False
    return True


@compiled
def allowed(policy, port, direction, peer, proto, dport):
    """Does a rule of `port`'s pod in `direction` allow a connection with `peer` to `dport`
    (-1: unknown, a fragment's) over `proto`?"""
    rules = policy.rules
    first = policy.port_rules[port, direction + D_FIRST_RULE]
    for r in range(first, first + policy.port_rules[port, direction + D_RULES]):
        s = rules[r, RU_SET]
        if s >= 0 and not in_peer_set(policy, s, peer):
            continue
        p = rules[r, RU_PROTO]
        if p == 0:
            return True
        if p != proto or dport < 0:
            continue
        named = rules[r, RU_NAMED]
        if named >= 0:
            if hashtable.find(policy.named, named_key(named, peer, dport)) >= 0:
                return True
        elif rules[r, RU_LOW] <= dport <= rules[r, RU_HIGH]:
            return True
    return False


@compiled
def deny(buf, meta, i, now, policy, port, direction, proto, conntrack, reason):
    pr = policy.port_rules
    first = pr[port, direction + D_FIRST_POLICY]
    for k in range(first, first + pr[port, direction + D_POLICIES]):
        policy.drops[policy.policy_ids[k]] += 1
    if meta[i, M_FLOW] == FLOW_NEW:   # forget the Service / masquerade translation it opened...
        rec = meta[i, M_CT_SLOT]
        row, ip = meta[i, M_ROW], meta[i, M_START] + ETH_LEN
        frag = read16(buf, row, ip + 6)
        if frag & 0x2000:   # ...and what its later fragments would have been translated by
            recs = conntrack.recs
            k0, k1 = tuple_key(recs[rec, C_O_SRC], recs[rec, C_O_DST], proto,
                               read16(buf, row, ip + 4), FRAG_NAT_TAG)
            f = wfind(conntrack.frag_keys, conntrack.frag_vals, FRAG_EXPIRES, k0, k1, now)
            if f >= 0:
                conntrack.frag_vals[f, FRAG_EXPIRES] = now - 1
        release(conntrack, rec)
    return finish(meta, i, ACT_DROP, port, reason)   # the pod's port: the flow log names policies


@internal
def policy_stage(buf, meta, i, now, params, counters, policy, routes, conntrack):
    """(The dispatch loop skips the call on a node where no policy selects a pod.)"""
    in_port = meta[i, M_IN_PORT]
    from_pod = 0 <= in_port < params[P_UPLINK_PORT]
    if meta[i, M_OWN] != 0 or meta[i, M_FLOW] >= FLOW_ESTABLISHED:   # also FLOW_ENDED
        return NEXT
    pr = policy.port_rules
    row, ip = meta[i, M_ROW], meta[i, M_START] + ETH_LEN
    src, dst = read32(buf, row, ip + 12), read32(buf, row, ip + 16)
    sender = in_port if from_pod and pr[in_port, PR_SELECTED] else -1
    receiver = -1
    j = hashtable.find(routes.pod_keys, dst)
    if j >= 0 and pr[routes.pod_port[j], PR_SELECTED]:
        receiver = routes.pod_port[j]
    if sender < 0 and receiver < 0:
        return NEXT
    proto = np.int64(buf[row, ip + 9])
    frag = read16(buf, row, ip + 6)
    first_fragment = (frag & 0x1FFF) == 0
    sport, dport = -1, -1
    frag_keys, frag_vals = conntrack.frag_keys, conntrack.frag_vals
    if not first_fragment:   # a later fragment: as its first fragment was, else portless
        k0, k1 = tuple_key(src, dst, proto, read16(buf, row, ip + 4), FRAG_POLICY_TAG)
        if wfind(frag_keys, frag_vals, FRAG_EXPIRES, k0, k1, now) >= 0:
            return NEXT
    else:
        l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
        end = ip + read16(buf, row, ip + 2)
        if (proto == 6 or proto == 17 or proto == 132) and l4 + 4 <= end:   # SCTP: same ports
            sport, dport = read16(buf, row, l4), read16(buf, row, l4 + 2)
        elif proto == 1 and l4 + 8 <= end and (buf[row, l4] == 8 or buf[row, l4] == 0):
            sport, dport = echo_ports(buf[row, l4], read16(buf, row, l4 + 4))
    if sender >= 0 and pr[sender, PR_EGRESS + D_ISOLATED] \
            and not allowed(policy, sender, np.int64(PR_EGRESS), dst, proto, dport):
        return deny(buf, meta, i, now, policy, sender, np.int64(PR_EGRESS), proto, conntrack,
                    np.int64(R_DROP_POLICY_EGRESS))
    if receiver >= 0 and pr[receiver, PR_INGRESS + D_ISOLATED] \
            and not allowed(policy, receiver, np.int64(PR_INGRESS), src, proto, dport):
        return deny(buf, meta, i, now, policy, receiver, np.int64(PR_INGRESS), proto, conntrack,
                    np.int64(R_DROP_POLICY_INGRESS))
    # allowed: follow the connection, so that its replies pass
    if meta[i, M_FLOW] == FLOW_NONE and first_fragment and sport >= 0 \
            and opens(buf, row, ip + np.int64(buf[row, ip] & 0x0F) * 4, proto):
        rec = open_connection(conntrack, src, dst, proto, sport, dport, src, sport, dst, dport,
                              np.int64(F_PLAIN), np.int64(-1), now, counters)
        if rec < 0:
            return finish(meta, i, ACT_DROP, 0, R_CT_FULL_REFUSED)
        track(conntrack, rec, np.int64(0), buf, row, ip, now)
        counters[R_POLICY_FLOWS_TRACKED] += 1
        meta[i, M_FLOW] = FLOW_NEW   # the flow log reports its start (fastpath.flows)
        meta[i, M_CT_SLOT] = rec
    if first_fragment and (frag & 0x2000):
        k0, k1 = tuple_key(src, dst, proto, read16(buf, row, ip + 4), FRAG_POLICY_TAG)
        f = wclaim(frag_keys, frag_vals, np.int64(FRAG_EXPIRES), k0, k1, now, counters,
                   np.int64(R_FRAG_EVICTED))
        frag_vals[f, FRAG_SRC] = src
        frag_vals[f, FRAG_DST] = dst
        frag_vals[f, FRAG_EXPIRES] = now + T_FRAGMENT
    return NEXT
