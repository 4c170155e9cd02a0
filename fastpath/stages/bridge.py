"""L2: a pod's frame for another pod's MAC is bridged; one for the gateway MAC is routed."""

from fastpath import learning
from fastpath.checksum import read48
from fastpath.jit import internal
from fastpath.layout import (
    ACT_DROP, ACT_FLOOD, ACT_PORT, M_IN_PORT, M_ROW, M_START, P_FDB_AGE, P_GW_MAC, P_UPLINK_PORT,
)
from fastpath.reasons import R_DROP_SAME_PORT, R_FLOODED, R_FORWARDED_L2
from fastpath.stages import BRANCH, NEXT, finish


@internal
def switch(buf, meta, i, params):
    """A pod's frame is bridged (NEXT), unless it is for the gateway's MAC: "route me"
    (BRANCH). Frames from the outside network, the overlay or the gateway are always routed."""
    in_port = meta[i, M_IN_PORT]
    if not 0 <= in_port < params[P_UPLINK_PORT]:
        return BRANCH
    if read48(buf, meta[i, M_ROW], meta[i, M_START]) == params[P_GW_MAC]:
        return BRANCH
    return NEXT


@internal
def bridge_stage(buf, meta, i, now, params, bridge):
    """MAC table lookup: a known, unexpired MAC goes to its port; broadcast, multicast and
    unknown unicast are flooded, as a bridge does."""
    dst_mac = read48(buf, meta[i, M_ROW], meta[i, M_START])
    if (dst_mac >> 40) & 1:
        return finish(meta, i, ACT_FLOOD, 0, R_FLOODED)
    j = learning.find(bridge.fdb_keys, bridge.fdb_vals, dst_mac, now, params[P_FDB_AGE])
    if j >= 0:
        port = bridge.fdb_vals[j, learning.L_VALUE]
        if port == meta[i, M_IN_PORT]:
            return finish(meta, i, ACT_DROP, 0, R_DROP_SAME_PORT)
        return finish(meta, i, ACT_PORT, port, R_FORWARDED_L2)
    return finish(meta, i, ACT_FLOOD, 0, R_FLOODED)
