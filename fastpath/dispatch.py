"""The fast path's dispatch loop: every frame of a batch walks the stages (fastpath.stages) until
one gives a verdict; the verdict is counted here, once, and turned into output rows.

    forward(frames, first, n, now, tables, out) -> index of the first frame not processed

Frames first..n-1 of `frames` go in; `out` (fastpath.layout, O_*) fills with what to write and
send. When it is about to run out of room, forward stops early: write the output and call again
from the returned index. No I/O here: fastpath.io writes the output batch, vrouter.node.dataplane
reads it in tests and for the slow path.
"""
import numpy as np

from fastpath import flows
from fastpath.budgets import icmp_allows, port_allows
from fastpath.checksum import copy_bytes, read16, read32
from fastpath.ipv4 import complete_checksum
from fastpath.jit import compiled, inlined, internal
from fastpath.layout import (
    ACT_DROP, ACT_FLOOD, ACT_OVERLAY, ACT_PORT, ACT_SLOW, ETH_LEN, ETH_P_IP, F_DATA, F_ROWS,
    F_SLOW, F_TRACE, FLOW_ENDED, FLOW_NEW,
    GSO_NONE, IN_GATEWAY, IN_OVERLAY, M_ACTION, M_FLOW, M_GSO_TYPE, M_IN_PORT, M_LEN, M_OUT,
    M_REASON,
    M_OWN, M_ROW, M_SOCKET, M_START, M_VFLAGS, O_FRAME, O_IN_PORT, O_KIND, O_LEN, O_REASON,
    O_ROW, O_SOCKET, O_SRC, O_START, O_TARGET, OUT_FLOOD, OUT_OVERLAY, OUT_PORT,
    OUT_SLOW, P_UPLINK_PORT, P_VNI, SRC_DATA, SRC_FRAMES, T_ACTION, T_DPORT, T_DST, T_FRAME,
    T_NEXT, T_OUT, T_PROTO, T_REASON, T_SPORT, T_SRC, T_STAGE, TRAIN_MAX_SEGMENTS,
    VNET_F_NEEDS_CSUM, VXLAN_HEADER_LEN,
)
from fastpath.reasons import (
    R_BUDGET_EVICTED, R_DROP_ICMP_RATELIMITED, R_DROP_NO_ROOM, R_DROP_OWN_UNROUTABLE, R_DROP_RUNT,
    R_DROP_SLOW_PATH_BUDGET, R_RX_FRAMES, R_SLOW_FRAG_NEEDED, R_SLOW_HOST_UNREACHABLE,
    R_SLOW_NO_ROUTE, R_SLOW_OUTSIDE_ARP_NEEDED, R_SLOW_SERVICE_REJECT, R_SLOW_TTL_EXCEEDED,
)
from fastpath.stages import (
    DONE, S_GATEWAY_IN, S_OUTSIDE_IN, S_OVERLAY_IN, S_POD_IN, finish,
)
from fastpath.stages.gro import coalesce
from fastpath.stages.gso import segment, space_needed
from fastpath.stages.overlay import write_vxlan_header
from fastpath.stages.run import run_stage

# what must be left in the output batch before another frame is taken (the worst single frame)
ROWS_RESERVE = 2 * TRAIN_MAX_SEGMENTS

# what this loop changes itself, beside what the stages declare (fastpath.stages.STAGES): the
# verdict counters, the slow path's budgets, the flow log
WRITES = ("counters", "budgets", "conntrack.flows")


@internal
def first_stage(in_port, uplink):
    if 0 <= in_port < uplink:
        return S_POD_IN
    if in_port == uplink:
        return S_OUTSIDE_IN
    if in_port == IN_OVERLAY:
        return S_OVERLAY_IN
    if in_port == IN_GATEWAY:
        return S_GATEWAY_IN
    return DONE


@internal
def _trace_step(buf, meta, i, stage, next_stage, out):
    """Record what `stage` did to frame i (vrouter trace): its decision, and the frame's
    addresses and ports as the stage left them (0 where the frame has none)."""
    t = out.fill[F_TRACE]
    if t >= out.trace.shape[0]:
        return
    out.trace[t, :] = 0
    out.trace[t, T_FRAME] = i
    out.trace[t, T_STAGE] = stage
    out.trace[t, T_NEXT] = next_stage
    out.trace[t, T_ACTION] = meta[i, M_ACTION]
    out.trace[t, T_REASON] = meta[i, M_REASON] if next_stage == DONE else -1
    out.trace[t, T_OUT] = meta[i, M_OUT]
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    if length >= ETH_LEN + 20 and read16(buf, row, s + 12) == ETH_P_IP:
        ip = s + ETH_LEN
        out.trace[t, T_SRC] = read32(buf, row, ip + 12)
        out.trace[t, T_DST] = read32(buf, row, ip + 16)
        proto = buf[row, ip + 9]
        out.trace[t, T_PROTO] = proto
        l4 = ip + (buf[row, ip] & 0xF) * 4
        first_fragment = (read16(buf, row, ip + 6) & 0x1FFF) == 0
        if (proto == 6 or proto == 17) and first_fragment and l4 + 4 <= s + length:
            out.trace[t, T_SPORT] = read16(buf, row, l4)
            out.trace[t, T_DPORT] = read16(buf, row, l4 + 2)
    out.fill[F_TRACE] = t + 1


@inlined
def run_stages(buf, meta, i, now, tables, out):
    """Walk frame i through the stages (fastpath.stages.STAGES) until one finishes it (verdict
    in M_ACTION/M_REASON). With trace rows in `out`, each step is recorded there too."""
    stage = first_stage(meta[i, M_IN_PORT], tables.params[P_UPLINK_PORT])
    if stage == DONE:
        finish(meta, i, ACT_DROP, 0, R_DROP_RUNT)   # no such port: cannot happen from the I/O
    tracing = out.trace.shape[0] > 0
    while stage != DONE:
        step = stage
        stage = run_stage(stage, buf, meta, i, now, tables)
        if tracing:
            _trace_step(buf, meta, i, step, stage, out)


@compiled
def _within_budget(buf, meta, i, reason, now, params, budgets, counters):
    """-1 if the slow path may see frame i, else the drop reason (fastpath.budgets)."""
    in_port = meta[i, M_IN_PORT]
    port = in_port if in_port >= 0 else params[P_UPLINK_PORT] + 1   # the overlay
    if not port_allows(budgets, port, now):
        return R_DROP_SLOW_PATH_BUDGET
    answer_is_error = reason == R_SLOW_TTL_EXCEEDED or reason == R_SLOW_HOST_UNREACHABLE \
        or reason == R_SLOW_NO_ROUTE or reason == R_SLOW_SERVICE_REJECT
    ip = meta[i, M_START] + ETH_LEN
    row = meta[i, M_ROW]
    if reason == R_SLOW_FRAG_NEEDED:   # DF set: "fragmentation needed"; clear: we fragment
        answer_is_error = (read16(buf, row, ip + 6) & 0x4000) != 0
    if answer_is_error and not icmp_allows(budgets, read32(buf, row, ip + 12), now, counters,
                                           R_BUDGET_EVICTED):
        return R_DROP_ICMP_RATELIMITED
    return -1


@internal
def _add_row(out, kind, src, row, start, length, target, frame):
    r = out.fill[F_ROWS]
    out.rows[r, :] = 0
    out.rows[r, O_KIND] = kind
    out.rows[r, O_SRC] = src
    out.rows[r, O_ROW] = row
    out.rows[r, O_START] = start
    out.rows[r, O_LEN] = length
    out.rows[r, O_TARGET] = target
    out.rows[r, O_FRAME] = frame
    out.fill[F_ROWS] = r + 1
    return r


@internal
def _to_slow_path(buf, meta, i, out, counters):
    """Copy the frame out of the batch (the writes that follow may reuse its bytes) and give
    the slow path a complete checksum to read."""
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    pos = out.fill[F_SLOW]
    copy_bytes(out.slow, np.int64(0), pos, buf, row, s, length)
    if meta[i, M_VFLAGS] & VNET_F_NEEDS_CSUM:
        complete_checksum(out.slow, np.int64(0), pos + ETH_LEN, counters)
    out.fill[F_SLOW] = pos + length
    r = _add_row(out, OUT_SLOW, SRC_DATA, 0, pos, length, 0, i)
    out.rows[r, O_REASON] = meta[i, M_REASON]
    out.rows[r, O_IN_PORT] = meta[i, M_IN_PORT]


@compiled
def _emit(buf, meta, i, action, params, out, counters):
    """Output rows for frame i's verdict."""
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    if action == ACT_PORT:
        _add_row(out, OUT_PORT, SRC_FRAMES, row, s, length, meta[i, M_OUT], i)
    elif action == ACT_FLOOD:
        _add_row(out, OUT_FLOOD, SRC_FRAMES, row, s, length, meta[i, M_IN_PORT], i)
    elif action == ACT_SLOW:
        _to_slow_path(buf, meta, i, out, counters)
    elif action == ACT_OVERLAY:
        if meta[i, M_GSO_TYPE] != GSO_NONE:
            segment(buf, meta, i, params[P_VNI], out, counters)
            return
        if meta[i, M_VFLAGS] & VNET_F_NEEDS_CSUM:   # the wire carries complete checksums
            complete_checksum(buf, row, s + ETH_LEN, counters)
        write_vxlan_header(buf, row, s - VXLAN_HEADER_LEN, params[P_VNI])
        r = _add_row(out, OUT_OVERLAY, SRC_FRAMES, row, s - VXLAN_HEADER_LEN,
                     length + VXLAN_HEADER_LEN, meta[i, M_OUT], i)
        out.rows[r, O_SOCKET] = meta[i, M_SOCKET]


@compiled
def _room(buf, meta, i, out):
    """Is there room in the output batch for whatever frame i becomes?"""
    if out.fill[F_ROWS] + ROWS_RESERVE > out.rows.shape[0]:
        return False
    if out.fill[F_SLOW] + meta[i, M_LEN] > out.slow.shape[1]:
        return False
    if meta[i, M_GSO_TYPE] != GSO_NONE:   # a super-frame may be segmented: worst case
        need, trains = space_needed(buf, meta, i)
        return out.fill[F_DATA] + need <= out.data.shape[1] \
            and out.fill[F_ROWS] + trains + ROWS_RESERVE <= out.rows.shape[0]
    return True


@compiled
def forward(frames, first, n, now, tables, out):
    """Run frames first..n-1 through the stages into `out`; returns the next frame to run (n
    when all are done). GRO then merges the overlay segments of this call's output rows."""
    buf, meta = frames.buf, frames.meta
    params, counters = tables.params, tables.counters
    flow_log = tables.conntrack.flows
    flow_log.state[flows.FS_NOW] = now   # the flow log's clock (also for records freed)
    first_row = out.fill[F_ROWS]
    i = first
    while i < n:
        if not _room(buf, meta, i, out):
            if out.fill[F_ROWS] == 0 and out.fill[F_DATA] == 0 and out.fill[F_SLOW] == 0:
                # it does not fit even into an empty batch (a super-frame of tiny segments)
                counters[R_RX_FRAMES] += 1
                counters[R_DROP_NO_ROOM] += 1
                i += 1
                continue
            break
        counters[R_RX_FRAMES] += 1
        meta[i, M_ACTION] = ACT_DROP
        run_stages(buf, meta, i, now, tables, out)
        action, reason = meta[i, M_ACTION], meta[i, M_REASON]
        if action == ACT_SLOW:
            if meta[i, M_OWN]:
                if reason != R_SLOW_OUTSIDE_ARP_NEEDED:
                    # never loop back into the slow path with the node's own packets (except
                    # to ask for an outside neighbour, which drops this packet anyway)
                    action, reason = ACT_DROP, R_DROP_OWN_UNROUTABLE
                    finish(meta, i, action, 0, reason)
            else:
                over = _within_budget(buf, meta, i, reason, now, params, tables.budgets, counters)
                if over >= 0:
                    action, reason = ACT_DROP, over
                    finish(meta, i, action, 0, reason)
        counters[reason] += 1
        # the flow log (fastpath.flows): a connection's first packet, the packet that closed
        # one, a refusal; a packet of an established connection only pays these two tests
        flow = meta[i, M_FLOW]
        if flow == FLOW_NEW or flow == FLOW_ENDED or flow_log.watch[reason] != 0:
            flows.after_verdict(buf, meta, i, action, reason, tables.conntrack, tables.policy)
        _emit(buf, meta, i, action, params, out, counters)
        i += 1
    coalesce(buf, meta, out, first_row, counters)
    return i
