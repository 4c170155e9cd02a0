"""The node's once-a-second work, compiled: run by `serve` itself on the beat (fastpath.io), so
that an idle or busy node never goes back to Python for it.

    housekeeping(tables, now) -> entries freed

frees what expired and no packet met since: connections (the conntrack sweep, over the records
in use only), learned MACs (recounting what each pod port holds) and gleaned outside neighbours.
The keepalives and the peers' liveness are serve's own part of the beat (fastpath.io._beat).
"""
from fastpath import conntrack, learning
from fastpath.flows import FS_NOW
from fastpath.jit import compiled
from fastpath.layout import P_FDB_AGE, P_NEIGHBOUR_AGE


@compiled
def housekeeping(tables, now):
    """Free every expired connection, MAC and neighbour (see the module docstring); returns
    how many entries were freed in all."""
    params = tables.params
    tables.conntrack.flows.state[FS_NOW] = now   # the flow log dates the ends it logs
    freed = conntrack.sweep(tables.conntrack, now)
    bridge, outside = tables.bridge, tables.outside
    freed += learning.expire(bridge.fdb_keys, bridge.fdb_vals, bridge.fdb_owned, now,
                             params[P_FDB_AGE])
    freed += learning.expire(outside.nb_keys, outside.nb_vals, outside.nb_owned, now,
                             params[P_NEIGHBOUR_AGE])
    return freed
