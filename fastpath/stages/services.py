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
from numba import njit

from fastpath import hashtable
from fastpath.checksum import (
    partial_update32, read16, read32, update16, update32, write16, write32,
)
from fastpath.conntrack import (
    AFF_EXPIRES, AFF_IP, AFF_PORT, CT_DPORT, CT_DST, CT_EXPIRES, CT_SPORT, CT_SRC, CT_STATE,
    FRAG_DST, FRAG_EXPIRES, FRAG_SRC, ST_CLOSED, ST_PLAIN, T_FRAGMENT, echo_ports,
    forget_pair, mix, open_pair, track, tuple_key, wclaim, wfind,
)
from fastpath.layout import (
    ACT_DROP, ACT_SLOW, ETH_LEN, FLOW_ESTABLISHED, FLOW_NEW, M_CT_SLOT, M_FLOW, M_IN_PORT, M_ROW,
    M_START, M_VFLAGS, P_GW_IP, P_MASQUERADE, P_NODE_IP, P_OUTSIDE_MASK, P_OUTSIDE_NET,
    P_UPLINK_PORT, VNET_F_NEEDS_CSUM,
)
from fastpath.reasons import (
    R_CT_ICMP_TRANSLATED, R_CT_TRANSLATED, R_DROP_SERVICE_NO_LOCAL_ENDPOINT,
    R_DROP_SERVICE_NO_SNAT_PORT, R_MASQUERADED_FLOWS, R_SLOW_SERVICE_REJECT, R_SVC_NEW_FLOWS,
)
from fastpath.stages import S_POLICY, finish

# frontend columns
FE_ROW = 0
FE_AFFINITY = 1     # seconds, 0 = none
FE_SNAT = 2         # 1: always SNAT to the gateway (external traffic, policy Cluster)
FE_ID = 3
FE_EMPTY = 4        # with no endpoints: NAT_REJECT (0) or NAT_DROP_NO_LOCAL (1)
FE_COLS = 5

# nat() results
NAT_PASS = 0          # not service traffic: forward unchanged
NAT_DONE = 1          # translated in place
NAT_REJECT = 2        # a frontend with no endpoints: the slow path answers RST / port unreachable
NAT_DROP_NO_LOCAL = 3 # externalTrafficPolicy Local and no endpoint on this node
NAT_DROP_NO_PORT = 4  # no free SNAT source port

SNAT_PORT_LOW = 32768
SNAT_PORT_SPAN = 28232   # 32768-60999, as Linux's default ephemeral range


@njit(cache=True, _nrt=False)
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
    return S_POLICY


@njit(cache=True, _nrt=False)
def rewrite(buf, row, ip, new_src, new_sport, new_dst, new_dport, has_l4, partial):
    """Set addresses (and ports when the L4 header is here), updating checksums (RFC 1624).
    `partial`: the L4 checksum field holds a pseudo-header sum (see fastpath.checksum)."""
    old_src = read32(buf, row, ip + 12)
    old_dst = read32(buf, row, ip + 16)
    check = read16(buf, row, ip + 10)
    check = update32(check, old_src, new_src)
    check = update32(check, old_dst, new_dst)
    write16(buf, row, ip + 10, check)
    write32(buf, row, ip + 12, new_src)
    write32(buf, row, ip + 16, new_dst)
    if not has_l4:
        return
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


@njit(cache=True, inline="always", _nrt=False)
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


@njit(cache=True, _nrt=False)
def _choose_backend(fe, src, k0, k1, now, services, conntrack, counters):
    """(backend ip, port) for a new connection: affinity first, else Maglev on the 5-tuple
    (k0, k1: the connection's conntrack key, which is that 5-tuple)."""
    fe_vals = services.fe_vals
    aff_keys, aff_vals = conntrack.aff_keys, conntrack.aff_vals
    affinity = fe_vals[fe, FE_AFFINITY]
    client = np.uint64(src)
    frontend = np.uint64(fe_vals[fe, FE_ID] + 1)
    if affinity > 0:
        a = wfind(aff_keys, aff_vals, AFF_EXPIRES, client, frontend, now)
        if a >= 0:
            aff_vals[a, AFF_EXPIRES] = now + affinity
            return aff_vals[a, AFF_IP], aff_vals[a, AFF_PORT]
    maglev = services.maglev
    b = maglev[fe_vals[fe, FE_ROW], np.int64(mix(k0, k1) % np.uint64(maglev.shape[1]))]
    ip, port = services.be_ip[b], services.be_port[b]
    if affinity > 0:
        a = wclaim(aff_keys, aff_vals, AFF_EXPIRES, client, frontend, now, counters)
        aff_vals[a, AFF_IP] = ip
        aff_vals[a, AFF_PORT] = port
        aff_vals[a, AFF_EXPIRES] = now + affinity
    return ip, port


@njit(cache=True, _nrt=False)
def _snat_port(src_ip, want, b_ip, b_port, proto, now, ct_keys, ct_vals):
    """A source port on `src_ip` whose reply tuple is free: the client's own if possible."""
    for k in range(16):
        port = want if k == 0 else SNAT_PORT_LOW + np.int64((mix(want, k) % np.uint64(SNAT_PORT_SPAN)))
        k0, k1 = tuple_key(b_ip, src_ip, proto, b_port, port)
        if wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now) < 0:
            return port
    return -1


@njit(cache=True, _nrt=False)
def icmp_error(buf, meta, i, row, ip, now, counters, ct_keys, ct_vals):
    """Translate an ICMP error (unreachable, time exceeded, ...) about a tracked connection.

    The error quotes a packet as it was on the wire after translation, travelling the other way
    than the error. Reversing the quoted 5-tuple gives the conntrack key of a packet going the
    error's way; that entry's rewrite, applied mirrored to the quote, restores the addresses the
    receiver knows (the service address instead of the backend's, the client's instead of the
    gateway's), and the error goes to the quoted packet's original sender. An error sent by the
    endpoint itself then also comes from the service address, as the client expects. ICMP
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
    j = wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)
    if j < 0:
        return NAT_PASS
    meta[i, M_FLOW] = FLOW_ESTABLISHED   # related to a tracked connection
    if ct_vals[j, CT_STATE] & ST_PLAIN:
        return NAT_PASS
    new_src, new_sport = ct_vals[j, CT_DST], ct_vals[j, CT_DPORT]   # the quote, mirrored
    new_dst, new_dport = ct_vals[j, CT_SRC], ct_vals[j, CT_SPORT]
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
    rewrite(buf, row, ip, new_dst if outer_src == q_dst else outer_src, 0, new_src, 0, False,
            False)
    counters[R_CT_ICMP_TRANSLATED] += 1
    return NAT_DONE


@njit(cache=True, inline="always", _nrt=False)
def masquerades(dst, params):
    """Does a pod's new connection to `dst` leave as the node (cluster.masquerade)?"""
    return params[P_MASQUERADE] == 1 and (dst & params[P_OUTSIDE_MASK]) == params[P_OUTSIDE_NET] \
        and dst != params[P_NODE_IP]


@njit(cache=True, _nrt=False)
def open_masquerade(ct_keys, ct_vals, src, dst, proto, sport, dport, now, params, counters):
    """Track a pod's new connection to the outside as coming from the node address (the pod's
    own source port, or ICMP identifier, if its reply tuple is free); -1: no port is free."""
    node = params[P_NODE_IP]
    new_sport = _snat_port(node, sport, dst, dport, proto, now, ct_keys, ct_vals)
    if new_sport < 0:
        return -1
    counters[R_MASQUERADED_FLOWS] += 1
    return open_pair(ct_keys, ct_vals, src, dst, proto, sport, dport, node, new_sport, dst,
                     dport, 0, now, counters)


@njit(cache=True, _nrt=False)
def icmp(buf, meta, i, row, ip, from_pod, now, params, counters, conntrack):
    """ICMP: errors about tracked connections are translated (icmp_error); echo is tracked by
    its identifier, and masqueraded like TCP and UDP (the identifier standing in for the port)."""
    ct_keys, ct_vals = conntrack.ct_keys, conntrack.ct_vals
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    if l4 + 8 > ip + read16(buf, row, ip + 2):
        return NAT_PASS
    kind = buf[row, l4]
    if kind != 0 and kind != 8:
        return icmp_error(buf, meta, i, row, ip, now, counters, ct_keys, ct_vals)
    src = read32(buf, row, ip + 12)
    dst = read32(buf, row, ip + 16)
    ident = read16(buf, row, l4 + 4)
    sport, dport = echo_ports(kind, ident)
    k0, k1 = tuple_key(src, dst, 1, sport, dport)
    j = wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)
    if j < 0:
        if not (kind == 8 and from_pod and masquerades(dst, params)):
            return NAT_PASS
        j = open_masquerade(ct_keys, ct_vals, src, dst, 1, sport, dport, now, params, counters)
        if j < 0:
            return NAT_DROP_NO_PORT
        meta[i, M_FLOW] = FLOW_NEW
        meta[i, M_CT_SLOT] = j
    else:
        track(buf, row, l4, 1, j, ct_keys, ct_vals, now)
        meta[i, M_FLOW] = FLOW_ESTABLISHED
        if ct_vals[j, CT_STATE] & ST_PLAIN:
            return NAT_PASS
    new_ident = ct_vals[j, CT_SPORT] if kind == 8 else ct_vals[j, CT_DPORT]
    # the ICMP checksum covers no pseudo-header: only the identifier changes it
    rewrite(buf, row, ip, ct_vals[j, CT_SRC], 0, ct_vals[j, CT_DST], 0, False, False)
    if new_ident != ident:
        write16(buf, row, l4 + 2, update16(read16(buf, row, l4 + 2), ident, new_ident))
        write16(buf, row, l4 + 4, new_ident)
    counters[R_CT_TRANSLATED] += 1
    return NAT_DONE


@njit(cache=True, _nrt=False)
def nat(buf, meta, i, now, params, counters, services, conntrack):
    """Translate frame i's IPv4 packet if it belongs to a Service or masqueraded connection (see
    NAT_*), and note in M_FLOW what conntrack knows of its connection.

    New connections are opened by packets from local pods and from outside, not from the
    overlay, where the sender's node has translated them already."""
    row, ip = meta[i, M_ROW], meta[i, M_START] + ETH_LEN
    in_port = meta[i, M_IN_PORT]
    from_pod = 0 <= in_port < params[P_UPLINK_PORT]
    may_open = in_port >= 0
    partial = (meta[i, M_VFLAGS] & VNET_F_NEEDS_CSUM) != 0
    ct_keys, ct_vals = conntrack.ct_keys, conntrack.ct_vals
    proto = np.int64(buf[row, ip + 9])
    frag = read16(buf, row, ip + 6)
    if proto == 1:
        if (frag & 0x3FFF) != 0:
            return NAT_PASS
        return icmp(buf, meta, i, row, ip, from_pod, now, params, counters, conntrack)
    if proto != 6 and proto != 17:
        return NAT_PASS
    offset = frag & 0x1FFF
    more = (frag & 0x2000) != 0
    src = read32(buf, row, ip + 12)
    dst = read32(buf, row, ip + 16)
    frag_keys, frag_vals = conntrack.frag_keys, conntrack.frag_vals
    if offset != 0:   # a later fragment: translate as its first fragment was
        ipid = read16(buf, row, ip + 4)
        k0, k1 = tuple_key(src, dst, proto, ipid, 1)
        f = wfind(frag_keys, frag_vals, FRAG_EXPIRES, k0, k1, now)
        if f < 0:
            return NAT_PASS
        meta[i, M_FLOW] = FLOW_ESTABLISHED
        rewrite(buf, row, ip, frag_vals[f, FRAG_SRC], 0, frag_vals[f, FRAG_DST], 0, False, False)
        counters[R_CT_TRANSLATED] += 1
        return NAT_DONE
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    total = read16(buf, row, ip + 2)
    if l4 + (20 if proto == 6 else 8) > ip + total:
        return NAT_PASS
    sport = read16(buf, row, l4)
    dport = read16(buf, row, l4 + 2)
    k0, k1 = tuple_key(src, dst, proto, sport, dport)
    j = wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)
    if j >= 0 and proto == 6 and (ct_vals[j, CT_STATE] & ST_CLOSED) and (buf[row, l4 + 13] & 0x02):
        # a SYN on a closed connection's tuple starts a new connection (as Linux conntrack
        # does): forget the old one, or its reply entry would rewrite a direct connection that
        # happens to reuse the backend's 4-tuple
        forget_pair(ct_keys, ct_vals, j, proto, now)
        j = -1
    if j < 0:
        if not may_open:
            return NAT_PASS
        fe_vals = services.fe_vals
        fe = hashtable.find(services.fe_keys, (np.int64(dst) << 24) | (proto << 16) | dport)
        if fe < 0:
            if not (from_pod and masquerades(dst, params)):
                return NAT_PASS
            j = open_masquerade(ct_keys, ct_vals, src, dst, proto, sport, dport, now, params,
                                counters)
            if j < 0:
                return NAT_DROP_NO_PORT
        else:
            if fe_vals[fe, FE_ROW] < 0:
                return NAT_DROP_NO_LOCAL if fe_vals[fe, FE_EMPTY] == 1 else NAT_REJECT
            b_ip, b_port = _choose_backend(fe, src, k0, k1, now, services, conntrack, counters)
            new_src, new_sport = src, sport
            if fe_vals[fe, FE_SNAT] == 1 or b_ip == src:   # external (policy Cluster), or hairpin
                new_src = params[P_GW_IP]
                new_sport = _snat_port(new_src, sport, b_ip, b_port, proto, now, ct_keys, ct_vals)
                if new_sport < 0:
                    return NAT_DROP_NO_PORT
            j = open_pair(ct_keys, ct_vals, src, dst, proto, sport, dport, new_src, new_sport,
                          b_ip, b_port, 0, now, counters)
            counters[R_SVC_NEW_FLOWS] += 1
            services.fe_new[fe] += 1
        meta[i, M_FLOW] = FLOW_NEW
        meta[i, M_CT_SLOT] = j
    else:
        track(buf, row, l4, proto, j, ct_keys, ct_vals, now)
        meta[i, M_FLOW] = FLOW_ESTABLISHED
        if ct_vals[j, CT_STATE] & ST_PLAIN:
            return NAT_PASS
    new_src, new_dst = ct_vals[j, CT_SRC], ct_vals[j, CT_DST]
    rewrite(buf, row, ip, new_src, ct_vals[j, CT_SPORT], new_dst, ct_vals[j, CT_DPORT], True,
            partial)
    if more:   # first of several fragments: remember its translation for the rest
        f0, f1 = tuple_key(src, dst, proto, read16(buf, row, ip + 4), 1)
        f = wclaim(frag_keys, frag_vals, FRAG_EXPIRES, f0, f1, now, counters)
        frag_vals[f, FRAG_SRC] = new_src
        frag_vals[f, FRAG_DST] = new_dst
        frag_vals[f, FRAG_EXPIRES] = now + T_FRAGMENT
    counters[R_CT_TRANSLATED] += 1
    return NAT_DONE
