"""L2: a pod's frame for another pod's MAC is bridged; one for the gateway MAC is routed."""
from numba import njit

from fastpath import hashtable
from fastpath.checksum import read48
from fastpath.layout import ACT_DROP, ACT_FLOOD, ACT_PORT, M_IN_PORT, M_ROW, M_START, P_FDB_AGE, P_GW_MAC
from fastpath.reasons import R_DROP_SAME_PORT, R_FLOODED, R_FORWARDED_L2
from fastpath.stages import S_BRIDGE, S_ROUTE, finish
from fastpath.stages.ingress import FDB_PORT, FDB_SEEN, FDB_STATIC


@njit(cache=True, _nrt=False)
def switch(buf, meta, i, params):
    """The gateway's MAC means "route me"; anything else is bridged."""
    if read48(buf, meta[i, M_ROW], meta[i, M_START]) == params[P_GW_MAC]:
        return S_ROUTE
    return S_BRIDGE


@njit(cache=True, _nrt=False)
def bridge_stage(buf, meta, i, now, params, bridge):
    """MAC table lookup: a known, unexpired MAC goes to its port; broadcast, multicast and
    unknown unicast are flooded, as a bridge does."""
    dst_mac = read48(buf, meta[i, M_ROW], meta[i, M_START])
    if (dst_mac >> 40) & 1:
        return finish(meta, i, ACT_FLOOD, 0, R_FLOODED)
    fdb_vals = bridge.fdb_vals
    j = hashtable.find(bridge.fdb_keys, dst_mac)
    if j >= 0 and (fdb_vals[j, FDB_STATIC] == 1 or now - fdb_vals[j, FDB_SEEN] <= params[P_FDB_AGE]):
        port = fdb_vals[j, FDB_PORT]
        if port == meta[i, M_IN_PORT]:
            return finish(meta, i, ACT_DROP, 0, R_DROP_SAME_PORT)
        return finish(meta, i, ACT_PORT, port, R_FORWARDED_L2)
    return finish(meta, i, ACT_FLOOD, 0, R_FLOODED)


def fdb_is_live(static: int, seen: int, now: int, age: int) -> bool:
    """The bridge's own rule, for readers outside the fast path (status)."""
    return bool(static) or now - seen <= age
