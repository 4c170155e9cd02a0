"""Services: frontend lookup, Maglev backend choice, conntrack, DNAT/SNAT, ICMP error translation,
and masquerade (pods' traffic to the outside network leaves as the node, cluster.masquerade).

Every packet's conntrack lookup happens here; what it found is left in M_FLOW for the policy
stage (a packet of a tracked connection passes policy; the first one is judged).

Tables: the Services group (rebuilt by vrouter.node.servicetables on reload)
  fe_keys / fe_vals[:, FE_*]   (address, protocol, port) -> frontend: Maglev row (-1: no
                               endpoints), affinity timeout, SNAT flag, id, what to do when empty
  maglev[row, M]               Maglev lookup table of a backend set -> backend index
  be_ip, be_port               backend addresses
and the Conntrack group (fastpath.conntrack), which persists across reloads.
"""
import numpy as np

from fastpath import hashtable
from fastpath.checksum import (
    partial_update32, read16, read32, update16, update32, write16, write32,
)
from fastpath.conntrack import (
    AFF_EXPIRES, AFF_IP, AFF_PORT, C_FLAGS, DROP_RST, ENDED, F_MASQUERADE, F_PLAIN, FRAG_DST,
    FRAG_EXPIRES, FRAG_NAT_TAG, FRAG_SRC, T_FRAGMENT, echo_ports, lookup, mix, open_connection,
    opens, release, restarts, target, track, tuple_key, wclaim, wfind,
)
from fastpath.jit import compiled, inlined, internal
from fastpath.layout import (
    ACT_DROP, ACT_SLOW, ETH_LEN, FLOW_ENDED, FLOW_ESTABLISHED, FLOW_NEW, M_CT_SLOT, M_FLOW,
    M_IN_PORT, M_ROW,
    M_START, M_VFLAGS, P_GW_IP, P_MASQUERADE, P_NODE_IP, P_OUTSIDE_GW, P_OUTSIDE_MASK,
    P_OUTSIDE_NET,
    P_LOCAL_NET, P_UPLINK_PORT, VNET_F_NEEDS_CSUM,
)
from fastpath.reasons import (
    R_AFF_EVICTED, R_CT_FULL_REFUSED, R_CT_ICMP_TRANSLATED, R_CT_TRANSLATED,
    R_DROP_SERVICE_INVALID, R_DROP_SERVICE_NO_LOCAL_ENDPOINT, R_DROP_SERVICE_NO_SNAT_PORT,
    R_DROP_TCP_RST_OUT_OF_WINDOW,
    R_FRAG_EVICTED, R_MASQUERADED_FLOWS, R_SLOW_SERVICE_REJECT, R_SVC_NEW_FLOWS,
)
from fastpath.stages import NEXT, finish
from fastpath.stages.route import in_cluster, martian

# frontend columns
FE_ROW = 0
FE_AFFINITY = 1     # seconds, 0 = none
FE_SNAT = 2         # 1: always SNAT to the gateway (external traffic, policy Cluster)
FE_ID = 3           # the Service port's stable id (affinity, conntrack flushes): never 0
FE_EMPTY = 4        # with no endpoints: NAT_REJECT (0) or NAT_DROP_NO_LOCAL (1)
FE_COLS = 5

# nat() results
NAT_PASS = 0          # not service traffic: forward unchanged
NAT_DONE = 1          # translated in place
NAT_REJECT = 2        # a frontend with no endpoints: the slow path answers RST / port unreachable
NAT_DROP_NO_LOCAL = 3 # externalTrafficPolicy Local and no endpoint on this node
NAT_DROP_NO_PORT = 4  # no free SNAT source port
NAT_DROP_CT_FULL = 5  # no room to track a new connection (counted where it was refused)
NAT_DROP_RST = 6      # a TCP reset outside the receiver's window
NAT_DROP_INVALID = 7  # a TCP segment for a Service that cannot start a connection

SNAT_TRIES = 32
SNAT_PORT_LOW = 1024
SNAT_PORT_SPAN = 64512   # 1024-65535, as Linux's NAT maps a source port of 1024 and up


@internal
def services_stage(buf, meta, i, now, params, counters, services, conntrack):
    """Translate the frame if it belongs to a Service (or masqueraded) connection; then on to
    the policy stage."""
    result = nat(buf, meta, i, now, params, counters, services, conntrack)
    if result == NAT_REJECT:
        return finish(meta, i, ACT_SLOW, 0, R_SLOW_SERVICE_REJECT)
    if result == NAT_DROP_NO_LOCAL:
        return finish(meta, i, ACT_DROP, 0, R_DROP_SERVICE_NO_LOCAL_ENDPOINT)
    if result == NAT_DROP_NO_PORT:
        return finish(meta, i, ACT_DROP, 0, R_DROP_SERVICE_NO_SNAT_PORT)
    if result == NAT_DROP_CT_FULL:
        return finish(meta, i, ACT_DROP, 0, R_CT_FULL_REFUSED)
    if result == NAT_DROP_RST:
        return finish(meta, i, ACT_DROP, 0, R_DROP_TCP_RST_OUT_OF_WINDOW)
    if result == NAT_DROP_INVALID:
        return finish(meta, i, ACT_DROP, 0, R_DROP_SERVICE_INVALID)
    return NEXT


@internal
def rewrite_addresses(buf, row, ip, new_src, new_dst):
    """Set the IPv4 addresses, updating the header checksum (RFC 1624)."""
    check = read16(buf, row, ip + 10)
    check = update32(check, read32(buf, row, ip + 12), new_src)
    check = update32(check, read32(buf, row, ip + 16), new_dst)
    write16(buf, row, ip + 10, check)
    write32(buf, row, ip + 12, new_src)
    write32(buf, row, ip + 16, new_dst)


@compiled
def rewrite(buf, row, ip, new_src, new_sport, new_dst, new_dport, partial):
    """Set addresses and ports, updating checksums (RFC 1624).
    `partial`: the L4 checksum field holds a pseudo-header sum (see fastpath.checksum)."""
    old_src = read32(buf, row, ip + 12)
    old_dst = read32(buf, row, ip + 16)
    rewrite_addresses(buf, row, ip, new_src, new_dst)
    proto = buf[row, ip + 9]
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    off = l4 + 16 if proto == 6 else l4 + 6
    old_sport = read16(buf, row, l4)
    old_dport = read16(buf, row, l4 + 2)
    c = read16(buf, row, off)
    if partial:   # only the pseudo-header's addresses are in it; the ports get summed later
        c = partial_update32(partial_update32(c, old_src, new_src), old_dst, new_dst)
    else:
        c = l4_checksum_update(c, proto, old_src, new_src, old_dst, new_dst, old_sport,
                               new_sport, old_dport, new_dport)
    write16(buf, row, off, c)
    write16(buf, row, l4, new_sport)
    write16(buf, row, l4 + 2, new_dport)


@internal
def l4_checksum_update(c, proto, old_src, new_src, old_dst, new_dst, old_sport, new_sport,
                       old_dport, new_dport):
    """A complete TCP or UDP checksum after its 5-tuple changed (RFC 1624; the pseudo-header
    holds the addresses). A UDP checksum of 0 means "none" and stays so."""
    if proto == 17 and c == 0:
        return c
    c = update32(update32(c, old_src, new_src), old_dst, new_dst)
    c = update16(update16(c, old_sport, new_sport), old_dport, new_dport)
    if proto == 17 and c == 0:
        c = 0xFFFF
    return c


@internal
def _choose_backend(fe, src, k0, k1, now, services, conntrack, counters):
    """(backend ip, port) for a new connection: affinity first, else Maglev on the 5-tuple
    (k0, k1: the connection's conntrack key, which is that 5-tuple)."""
    fe_vals = services.fe_vals
    aff_keys, aff_vals = conntrack.aff_keys, conntrack.aff_vals
    affinity = fe_vals[fe, FE_AFFINITY]
    client = np.uint64(src)
    frontend = np.uint64(fe_vals[fe, FE_ID])
    if affinity > 0:
        a = wfind(aff_keys, aff_vals, AFF_EXPIRES, client, frontend, now)
        if a >= 0:
            aff_vals[a, AFF_EXPIRES] = now + affinity
            return aff_vals[a, AFF_IP], aff_vals[a, AFF_PORT]
    maglev = services.maglev
    b = maglev[fe_vals[fe, FE_ROW], np.int64(mix(k0, k1) % np.uint64(maglev.shape[1]))]
    ip, port = services.be_ip[b], services.be_port[b]
    if affinity > 0:
        a = wclaim(aff_keys, aff_vals, np.int64(AFF_EXPIRES), client, frontend, now, counters,
                   np.int64(R_AFF_EVICTED))
        aff_vals[a, AFF_IP] = ip
        aff_vals[a, AFF_PORT] = port
        aff_vals[a, AFF_EXPIRES] = now + affinity
    return ip, port


@internal
def _snat_port(src_ip, want, b_ip, b_port, proto, now, ct, seed):
    """A source port on `src_ip` whose reply tuple is free: the client's own if possible, else
    one of SNAT_TRIES others drawn from 1024-65535 (as Linux's NAT maps them) by a hash of the
    whole original tuple (`seed`), so that clients of one port spread over the range; -1 when
    all of those are taken."""
    for k in range(SNAT_TRIES):
        port = want if k == 0 else SNAT_PORT_LOW + np.int64(mix(seed, k) % np.uint64(SNAT_PORT_SPAN))
        k0, k1 = tuple_key(b_ip, src_ip, proto, b_port, port)
        if lookup(ct, k0, k1, now)[0] < 0:
            return port
    return -1


@internal
def icmp_error(buf, meta, i, row, ip, now, counters, ct):
    """Translate an ICMP error (unreachable, time exceeded, ...) about a tracked connection.

    The error quotes a packet as it was on the wire after translation, travelling the other way
    than the error. Reversing the quoted 5-tuple gives the conntrack key of a packet going the
    error's way; that direction's rewrite, applied mirrored to the quote, restores the addresses
    the receiver knows (the service address instead of the backend's, the client's instead of
    the gateway's), and the error goes to the quoted packet's original sender. An error sent by
    the endpoint itself then also comes from the service address, as the client expects. ICMP
    checksums are never offloaded, so everything here is a complete checksum."""
    end = ip + read16(buf, row, ip + 2)
    icmp = ip + np.int64(buf[row, ip] & 0x0F) * 4
    q = icmp + 8
    if q + 28 > end:
        return NAT_PASS
    kind = buf[row, icmp]
    if not (kind == 3 or kind == 4 or kind == 5 or kind == 11 or kind == 12):
        return NAT_PASS
    q_ihl = np.int64(buf[row, q] & 0x0F) * 4
    q_proto = np.int64(buf[row, q + 9])
    if (buf[row, q] >> 4) != 4 or q_ihl < 20 or q + q_ihl + 8 > end \
            or (q_proto != 6 and q_proto != 17) or (read16(buf, row, q + 6) & 0x1FFF) != 0:
        return NAT_PASS
    q_src = read32(buf, row, q + 12)
    q_dst = read32(buf, row, q + 16)
    q_l4 = q + q_ihl
    q_sport = read16(buf, row, q_l4)
    q_dport = read16(buf, row, q_l4 + 2)
    k0, k1 = tuple_key(q_dst, q_src, q_proto, q_dport, q_sport)
    rec, direction = lookup(ct, k0, k1, now)
    if rec < 0:
        return NAT_PASS
    meta[i, M_FLOW] = FLOW_ESTABLISHED   # related to a tracked connection
    if ct.recs[rec, C_FLAGS] & F_PLAIN:
        return NAT_PASS
    t_src, t_sport, t_dst, t_dport = target(ct.recs, rec, direction)
    new_src, new_sport = t_dst, t_dport   # the quote, mirrored
    new_dst, new_dport = t_src, t_sport
    icmp_check = read16(buf, row, icmp + 2)
    # the quoted IPv4 header (its checksum is part of the ICMP payload too)
    old_q_check = read16(buf, row, q + 10)
    q_check = update32(update32(old_q_check, q_src, new_src), q_dst, new_dst)
    write16(buf, row, q + 10, q_check)
    write32(buf, row, q + 12, new_src)
    write32(buf, row, q + 16, new_dst)
    icmp_check = update32(update32(icmp_check, q_src, new_src), q_dst, new_dst)
    icmp_check = update16(icmp_check, old_q_check, q_check)
    # the quoted ports, and the quoted L4 checksum when the quote reaches it
    write16(buf, row, q_l4, new_sport)
    write16(buf, row, q_l4 + 2, new_dport)
    icmp_check = update16(update16(icmp_check, q_sport, new_sport), q_dport, new_dport)
    off = q_l4 + (16 if q_proto == 6 else 6)
    if off + 2 <= end and (q_proto == 6 or read16(buf, row, off) != 0):   # quoted and in use
        old_c = read16(buf, row, off)
        c = l4_checksum_update(old_c, q_proto, q_src, new_src, q_dst, new_dst, q_sport,
                               new_sport, q_dport, new_dport)
        write16(buf, row, off, c)
        icmp_check = update16(icmp_check, old_c, c)
    write16(buf, row, icmp + 2, icmp_check)
    outer_src = read32(buf, row, ip + 12)
    rewrite_addresses(buf, row, ip, new_dst if outer_src == q_dst else outer_src, new_src)
    counters[R_CT_ICMP_TRANSLATED] += 1
    return NAT_DONE


@inlined
def masquerades(dst, params):
    """Does a pod's new connection to `dst` leave as the node (cluster.masquerade)? Anything
    outside the cluster does, as flannel's ip-masq makes it: the outside network, and what lies
    beyond its gateway (cluster.outsideGateway)."""
    if params[P_MASQUERADE] != 1 or dst == params[P_NODE_IP]:
        return False
    if (dst & params[P_OUTSIDE_MASK]) == params[P_OUTSIDE_NET]:
        return True
    return params[P_OUTSIDE_GW] != 0 and not in_cluster(dst, params) and not martian(dst)


@internal
def open_masquerade(ct, src, dst, proto, sport, dport, now, params, counters):
    """Track a pod's new connection to the outside as coming from the node address (the pod's
    own source port, or ICMP identifier, if its reply tuple is free). Returns its record, or a
    NAT_DROP_* result negated: -NAT_DROP_NO_PORT, -NAT_DROP_CT_FULL."""
    node = params[P_NODE_IP]
    k0, k1 = tuple_key(src, dst, proto, sport, dport)
    new_sport = _snat_port(node, sport, dst, dport, proto, now, ct, mix(k0, k1))
    if new_sport < 0:
        return -NAT_DROP_NO_PORT
    rec = open_connection(ct, src, dst, proto, sport, dport, node, new_sport, dst, dport,
                          np.int64(F_MASQUERADE), np.int64(-1), now, counters)
    if rec < 0:
        return -NAT_DROP_CT_FULL
    counters[R_MASQUERADED_FLOWS] += 1
    return rec


@internal
def open_plain(ct, src, dst, proto, sport, dport, now, params, counters):
    """Track a new connection that nothing rewrites (pod to pod, outside to a pod), so that the
    flow log (fastpath.flows) sees it start and end, with its packets and bytes, as Cilium's
    conntrack tracks every connection. Not those to the node's own addresses (the gateway
    answers them itself). -1 when it is not tracked (also when the table has no room: it
    passes untracked, as before, and only a NetworkPolicy that must follow it refuses it)."""
    if dst == params[P_GW_IP] or dst == params[P_NODE_IP] or dst == params[P_LOCAL_NET]:
        return -1
    return open_connection(ct, src, dst, proto, sport, dport, src, sport, dst, dport,
                           np.int64(F_PLAIN), np.int64(-1), now, counters)


@internal
def _apply(buf, meta, i, row, ip, rec, direction, partial, ct, counters):
    """Rewrite the packet to its direction's tuple (nothing for a plain, policy-only
    connection); NAT_DONE or NAT_PASS."""
    if ct.recs[rec, C_FLAGS] & F_PLAIN:
        return NAT_PASS
    new_src, new_sport, new_dst, new_dport = target(ct.recs, rec, direction)
    rewrite(buf, row, ip, new_src, new_sport, new_dst, new_dport, partial)
    counters[R_CT_TRANSLATED] += 1
    return NAT_DONE


@compiled
def icmp(buf, meta, i, row, ip, from_pod, now, params, counters, ct):
    """ICMP: errors about tracked connections are translated (icmp_error); echo is tracked by
    its identifier, and masqueraded like TCP and UDP (the identifier standing in for the port)."""
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    if l4 + 8 > ip + read16(buf, row, ip + 2):
        return NAT_PASS
    kind = buf[row, l4]
    if kind != 0 and kind != 8:
        return icmp_error(buf, meta, i, row, ip, now, counters, ct)
    src = read32(buf, row, ip + 12)
    dst = read32(buf, row, ip + 16)
    ident = read16(buf, row, l4 + 4)
    sport, dport = echo_ports(kind, ident)
    k0, k1 = tuple_key(src, dst, 1, sport, dport)
    rec, direction = lookup(ct, k0, k1, now)
    if rec < 0:
        if kind != 8 or meta[i, M_IN_PORT] < 0:   # from the overlay: its sender's node tracks it
            return NAT_PASS
        if from_pod and masquerades(dst, params):
            rec = open_masquerade(ct, src, dst, np.int64(1), sport, dport, now, params, counters)
            if rec < 0:
                return -rec
        else:
            rec = open_plain(ct, src, dst, np.int64(1), sport, dport, now, params,
                             counters)   # for the flow log
            if rec < 0:
                return NAT_PASS
        direction = 0
        meta[i, M_FLOW] = FLOW_NEW
        meta[i, M_CT_SLOT] = rec
    else:
        meta[i, M_FLOW] = FLOW_ESTABLISHED
    track(ct, rec, direction, buf, row, ip, now)
    if ct.recs[rec, C_FLAGS] & F_PLAIN:
        return NAT_PASS
    new_src, new_sport, new_dst, new_dport = target(ct.recs, rec, direction)
    new_ident = new_sport if kind == 8 else new_dport
    # the ICMP checksum covers no pseudo-header: only the identifier changes it
    rewrite_addresses(buf, row, ip, new_src, new_dst)
    if new_ident != ident:
        write16(buf, row, l4 + 2, update16(read16(buf, row, l4 + 2), ident, new_ident))
        write16(buf, row, l4 + 4, new_ident)
    counters[R_CT_TRANSLATED] += 1
    return NAT_DONE


@internal
def _sctp(buf, meta, i, row, ip, frag, now, ct):
    """An SCTP packet of a connection NetworkPolicy follows: tracked (its replies pass), never
    rewritten: vrouter's Services carry TCP and UDP."""
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    if (frag & 0x1FFF) != 0 or l4 + 4 > ip + read16(buf, row, ip + 2):
        return NAT_PASS
    k0, k1 = tuple_key(read32(buf, row, ip + 12), read32(buf, row, ip + 16), 132,
                       read16(buf, row, l4), read16(buf, row, l4 + 2))
    rec, direction = lookup(ct, k0, k1, now)
    if rec >= 0:
        track(ct, rec, direction, buf, row, ip, now)
        meta[i, M_FLOW] = FLOW_ESTABLISHED
    return NAT_PASS


@internal
def nat(buf, meta, i, now, params, counters, services, ct):
    """Translate frame i's IPv4 packet if it belongs to a Service or masqueraded connection (see
    NAT_*), and note in M_FLOW what conntrack knows of its connection.

    New connections are opened by packets from local pods and from outside, not from the
    overlay, where the sender's node has translated them already."""
    row, ip = meta[i, M_ROW], meta[i, M_START] + ETH_LEN
    in_port = meta[i, M_IN_PORT]
    from_pod = 0 <= in_port < params[P_UPLINK_PORT]
    may_open = in_port >= 0
    partial = (meta[i, M_VFLAGS] & VNET_F_NEEDS_CSUM) != 0
    proto = np.int64(buf[row, ip + 9])
    frag = read16(buf, row, ip + 6)
    if proto == 1:
        if (frag & 0x3FFF) != 0:
            return NAT_PASS
        return icmp(buf, meta, i, row, ip, from_pod, now, params, counters, ct)
    if proto == 132:   # SCTP: never translated, but followed for NetworkPolicy
        return _sctp(buf, meta, i, row, ip, frag, now, ct)
    if proto != 6 and proto != 17:
        return NAT_PASS
    offset = frag & 0x1FFF
    more = (frag & 0x2000) != 0
    src = read32(buf, row, ip + 12)
    dst = read32(buf, row, ip + 16)
    frag_keys, frag_vals = ct.frag_keys, ct.frag_vals
    if offset != 0:   # a later fragment: translate as its first fragment was
        ipid = read16(buf, row, ip + 4)
        k0, k1 = tuple_key(src, dst, proto, ipid, FRAG_NAT_TAG)
        f = wfind(frag_keys, frag_vals, FRAG_EXPIRES, k0, k1, now)
        if f < 0:
            return NAT_PASS
        meta[i, M_FLOW] = FLOW_ESTABLISHED
        rewrite_addresses(buf, row, ip, frag_vals[f, FRAG_SRC], frag_vals[f, FRAG_DST])
        counters[R_CT_TRANSLATED] += 1
        return NAT_DONE
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    total = read16(buf, row, ip + 2)
    if l4 + (20 if proto == 6 else 8) > ip + total:
        return NAT_PASS
    sport = read16(buf, row, l4)
    dport = read16(buf, row, l4 + 2)
    k0, k1 = tuple_key(src, dst, proto, sport, dport)
    rec, direction = lookup(ct, k0, k1, now)
    if rec >= 0 and restarts(ct.recs, rec, direction, buf, row, l4):
        release(ct, rec)
        rec = -1
    if rec < 0:
        if not may_open:
            return NAT_PASS
        fe_vals = services.fe_vals
        fe = hashtable.find(services.fe_keys, (np.int64(dst) << 24) | (proto << 16) | dport)
        if not opens(buf, row, l4, proto):
            # kube-proxy drops what conntrack calls INVALID: a stray RST or FIN for a Service
            return NAT_DROP_INVALID if fe >= 0 else NAT_PASS
        if fe < 0:
            if from_pod and masquerades(dst, params):
                rec = open_masquerade(ct, src, dst, proto, sport, dport, now, params, counters)
                if rec < 0:
                    return -rec
            else:
                rec = open_plain(ct, src, dst, proto, sport, dport, now, params, counters)
                if rec < 0:
                    return NAT_PASS
        else:
            if fe_vals[fe, FE_ROW] < 0:
                return NAT_DROP_NO_LOCAL if fe_vals[fe, FE_EMPTY] == 1 else NAT_REJECT
            b_ip, b_port = _choose_backend(fe, src, k0, k1, now, services, ct, counters)
            new_src = src
            if fe_vals[fe, FE_SNAT] == 1 or b_ip == src:   # external (policy Cluster), or hairpin
                new_src = params[P_GW_IP]
            # the client's own port unless its reply tuple is another connection's (the client
            # reached two ports of the Service that lead to one backend port from one source
            # port): then another, as Linux's NAT resolves such a clash
            new_sport = _snat_port(new_src, sport, b_ip, b_port, proto, now, ct, mix(k0, k1))
            if new_sport < 0:
                return NAT_DROP_NO_PORT
            rec = open_connection(ct, src, dst, proto, sport, dport, new_src, new_sport, b_ip,
                                  b_port, np.int64(0), fe_vals[fe, FE_ID], now, counters)
            if rec < 0:
                return NAT_DROP_CT_FULL
            counters[R_SVC_NEW_FLOWS] += 1
            services.fe_new[fe] += 1
        direction = 0
        meta[i, M_FLOW] = FLOW_NEW
        meta[i, M_CT_SLOT] = rec
    else:
        meta[i, M_FLOW] = FLOW_ESTABLISHED
    tracked = track(ct, rec, direction, buf, row, ip, now)
    if tracked == DROP_RST:
        return NAT_DROP_RST
    if tracked == ENDED:   # a FIN or RST closed it: the flow log reports its end
        meta[i, M_FLOW] = FLOW_ENDED
        meta[i, M_CT_SLOT] = rec
    result = _apply(buf, meta, i, row, ip, rec, direction, partial, ct, counters)
    if result == NAT_DONE and more:   # first of several fragments: its translation for the rest
        f0, f1 = tuple_key(src, dst, proto, read16(buf, row, ip + 4), FRAG_NAT_TAG)
        f = wclaim(frag_keys, frag_vals, np.int64(FRAG_EXPIRES), f0, f1, now, counters,
                   np.int64(R_FRAG_EVICTED))
        frag_vals[f, FRAG_SRC] = read32(buf, row, ip + 12)
        frag_vals[f, FRAG_DST] = read32(buf, row, ip + 16)
        frag_vals[f, FRAG_EXPIRES] = now + T_FRAGMENT
    return result
