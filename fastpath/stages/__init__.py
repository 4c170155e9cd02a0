"""The fast path's stages. Each looks at one frame, uses one group of tables, and either names
the next stage or finishes the frame with a verdict (an action and the counter that explains it).
fastpath.dispatch runs them; the order is:

  pod_in | outside_in | overlay_in | gateway_in      ingress checks, by where the frame came from
  -> services                                         Service NAT, masquerade and conntrack
  -> policy                                           NetworkPolicy, for new connections
  -> switch -> bridge                                 pods only: L2 by destination MAC...
            -> route                                  ...or L3 when addressed to the gateway
  -> to_overlay                                       a remote node: MTU, liveness, encapsulation
  -> local (-> route)                                  for the node itself: echo answered in place

Verdicts that deliver then become output rows; super-frames for the overlay are segmented
(fastpath.stages.gso) and overlay segments for pods coalesced (fastpath.stages.gro).
"""
from numba import njit

from fastpath.layout import M_ACTION, M_OUT, M_REASON

S_POD_IN = 0
S_OUTSIDE_IN = 1
S_OVERLAY_IN = 2
S_GATEWAY_IN = 3
S_SERVICES = 4
S_SWITCH = 5
S_BRIDGE = 6
S_ROUTE = 7
S_TO_OVERLAY = 8
S_LOCAL = 9
S_POLICY = 10
STAGE_NAMES = ("pod_in", "outside_in", "overlay_in", "gateway_in", "services", "switch", "bridge",
               "route", "to_overlay", "local", "policy")
DONE = -1


@njit(cache=True, inline="always", _nrt=False)
def finish(meta, i, action, out, reason):
    """End the frame's walk through the stages with a verdict; returns DONE."""
    meta[i, M_ACTION] = action
    meta[i, M_OUT] = out
    meta[i, M_REASON] = reason
    return DONE
