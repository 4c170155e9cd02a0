"""Batch layout and the numeric codes shared by the fast path and its Python callers.

Input: frames live in one preallocated 2-D uint8 array `buf`, one row ("slot") per read; a row
may hold several frames (a UDP GRO train of VXLAN datagrams). Per-frame facts live in the int64
`meta` array, one row per frame, columns M_*. A frame read from a TAP starts at HEADROOM; the
10-byte virtio-net header the TAP put in front of it was parsed into the M_V* columns, and on
the way out a header is written into the headroom again.

Output: the fast path fills `out.rows` (columns O_*), one row per write or send: a frame to a
port, a flood, a VXLAN datagram or a GSO train of them (segments are built in `out.data`), or a
frame for the slow path (copied into `out.slow`). One input frame may so become many outputs.

Counters and their R_* constants are declared in fastpath.reasons.
"""

VNET_HDR_LEN = 10          # struct virtio_net_hdr, without num_buffers
VXLAN_HEADER_LEN = 8
HEADROOM = 128             # room in front of a frame: virtio-net header, VXLAN header
KEEPALIVE_LEN = 42         # a keepalive to a peer: Ethernet, IPv4, an ICMP echo header
BATCH = 64                 # reads (TAP frames or overlay datagrams/trains) per batch
SLOT = HEADROOM + 65664    # a whole 64 KiB super-frame (or GRO train) plus its headers
TRAIN_MAX_SEGMENTS = 64    # what the kernel accepts in one UDP GSO send (UDP_MAX_SEGMENTS)
UDP_PAYLOAD_MAX = 65507    # the largest UDP payload over IPv4: also the largest GSO train
FRAMES_MAX = BATCH * TRAIN_MAX_SEGMENTS   # frames one batch can hold (all trains full)

ETH_LEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
OVERLAY_OVERHEAD = 50      # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8

# --- meta columns (one row per input frame) ---------------------------------------------------
M_ROW = 0          # buffer row holding the frame
M_START = 1        # offset of the frame's first byte inside its row
M_LEN = 2          # frame length in bytes
M_IN_PORT = 3      # ingress: a pod port, the uplink, IN_OVERLAY or IN_GATEWAY
M_SRC_IP = 4       # outer source address of an overlay datagram
M_VFLAGS = 5       # virtio-net header: flags (VNET_F_*)
M_GSO_TYPE = 6     # gso_type (GSO_*)
M_GSO_SIZE = 7     # gso_size: payload bytes per segment
M_CSUM_START = 8   # csum_start: offset of the L4 header from the frame start
M_CSUM_OFFSET = 9  # csum_offset: offset of the checksum field from csum_start
M_HDR_LEN = 10     # hdr_len as given (checked, never trusted: lengths come from the packet)
M_ACTION = 11      # ACT_* decided by the fast path
M_OUT = 12         # egress port, or overlay peer for ACT_OVERLAY
M_REASON = 13      # the verdict's counter index (R_*)
M_SOCKET = 14      # overlay: which of the node's send sockets (outer UDP source port)
M_OWN = 15         # 1: the node's own packet (built by the gateway, or an echo answer): it is
                   # routed but not forwarded (no TTL decrement) and never sent to the slow path
M_FLOW = 16        # what conntrack knew of the frame's connection (FLOW_*), for the policy stage
M_CT_SLOT = 17     # FLOW_NEW: the connection record the frame just opened (FLOW_ENDED: closed)
META_COLS = 18

FLOW_NONE = 0          # not a tracked connection (or not TCP/UDP/ICMP echo)
FLOW_NEW = 1           # the first packet of a connection conntrack just opened
FLOW_ESTABLISHED = 2   # a packet of a tracked connection (either direction), or related to one
FLOW_ENDED = 3         # FLOW_ESTABLISHED, and it closed the connection (TCP FIN/RST): the flow
                       # log reports its end (fastpath.flows)

IN_OVERLAY = -2    # frame came out of a VXLAN datagram
IN_GATEWAY = -3    # frame originated by the node itself (slow path replies, ICMP errors)

# --- actions (final verdicts of the stage loop) -----------------------------------------------
ACT_DROP = 0
ACT_PORT = 1       # write to one port: a pod's, or the uplink (P_UPLINK_PORT)
ACT_FLOOD = 2      # write to every pod port but the ingress one
ACT_SLOW = 3       # hand to the scapy slow path, M_REASON says why
ACT_OVERLAY = 4    # send over the overlay to peer M_OUT (VXLAN header written in front)

# --- output rows --------------------------------------------------------------------------------
O_KIND = 0         # OUT_*
O_SRC = 1          # SRC_FRAMES (a row of the input buffer) or SRC_DATA (out.data)
O_ROW = 2          # input buffer row (SRC_FRAMES)
O_START = 3        # first byte: a frame (TAP), a VXLAN datagram or train (overlay), or in out.slow
O_LEN = 4
O_TARGET = 5       # port (OUT_PORT), ingress port to skip (OUT_FLOOD), peer (OUT_OVERLAY)
O_SEGMENT = 6      # OUT_OVERLAY: datagram size of a GSO train (0: a single datagram)
O_SOCKET = 7       # OUT_OVERLAY: send socket
O_FRAME = 8        # the input frame (meta row) this came from: its virtio-net fields
O_REASON = 9       # OUT_SLOW: why
O_IN_PORT = 10     # OUT_SLOW: where it came from
O_DONE = 11        # 1: merged into an earlier row by GRO, nothing to write
OUT_COLS = 12

OUT_PORT = 1
OUT_FLOOD = 2
OUT_OVERLAY = 3
OUT_SLOW = 4

SRC_FRAMES = 0
SRC_DATA = 1

# out.fill: how much of the output batch is used
F_ROWS = 0
F_DATA = 1
F_SLOW = 2
F_TRACE = 3
FILL_COLS = 4

# out.trace columns: a row per stage a frame went through (vrouter trace; off unless out.trace
# has rows): the frame, the stage, what it named next (a stage or DONE), the frame's verdict so
# far, and its 5-tuple after the stage (so a NAT rewrite shows)
T_FRAME, T_STAGE, T_NEXT, T_ACTION, T_REASON, T_OUT = 0, 1, 2, 3, 4, 5
T_SRC, T_DST, T_PROTO, T_SPORT, T_DPORT = 6, 7, 8, 9, 10
TRACE_COLS = 11

OUT_ROWS = FRAMES_MAX + 4 * BATCH
OUT_DATA = 6 << 20         # segments of the super-frames of one batch
SLOW_DATA = 2 << 20        # copies of the frames for the slow path

# --- virtio-net header (include/uapi/linux/virtio_net.h) ---------------------------------------
VNET_F_NEEDS_CSUM = 1      # the L4 checksum field holds only the pseudo-header sum
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3                # UFO: not supported (refused by TUNSETOFFLOAD flags we set)
GSO_TCPV6 = 4
GSO_UDP_L4 = 5             # USO
GSO_ECN = 0x80

# --- params vector: scalars of the node, one int64 each ----------------------------------------
P_GW_MAC = 0
P_GW_IP = 1
P_LOCAL_NET = 2            # the node's podCIDR (its network address is the VTEP address)
P_LOCAL_MASK = 3
P_PORT_COUNT = 4           # pod ports
P_FDB_AGE = 5              # seconds a learned MAC stays valid
P_POD_MTU = 6
P_VNI = 7
P_VTEP_MAC = 8
P_SOCKETS = 9              # overlay send sockets (outer UDP source ports) to spread flows over
P_CLUSTER_NET = 11
P_CLUSTER_MASK = 12
P_PEER_DEAD_AFTER = 13     # seconds without a datagram before a peer counts as down
P_UPLINK_PORT = 14         # port number of the node's interface on the outside network
P_NODE_IP = 15             # the node's address there (NodePorts)
P_NODE_MAC = 16
P_OUTSIDE_NET = 17         # cluster.nodeNetwork
P_OUTSIDE_MASK = 18
P_MASQUERADE = 19          # 1: pods' traffic to the outside network is SNATed to P_NODE_IP
P_FDB_PORT_LIMIT = 20      # MACs a pod port may have learned at once (cluster.fdbMaxPerPort)
P_NEIGHBOUR_AGE = 21       # seconds a gleaned outside neighbour stays valid
P_SERVICE_NET = 22         # cluster.serviceCIDR
P_SERVICE_MASK = 23
P_OUTSIDE_GW = 10          # the nodes' default gateway on the outside network (0: none)
PARAM_COUNT = 24
