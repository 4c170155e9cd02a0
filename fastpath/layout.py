"""Batch buffer layout and the numeric codes shared by the fast path and its Python callers.

Frames live in one preallocated 2-D uint8 array, one row ("slot") per frame. A received frame
starts at HEADROOM inside its slot so that outer headers (VXLAN: 50 bytes) can be prepended in
place. Per-frame facts live in the int64 `meta` array, one row per slot, columns below.
"""

HEADROOM = 128
BATCH = 64

# meta columns
M_START = 0      # offset of the frame's first byte inside its slot
M_LEN = 1        # frame length in bytes
M_IN_PORT = 2    # ingress port (>= 0 a pod port or the uplink, IN_OVERLAY for decapsulated frames)
M_ACTION = 3     # ACT_* decided by the fast path
M_OUT = 4        # egress pod port, or overlay peer index for ACT_OVERLAY
M_REASON = 5     # counter index explaining the decision (R_*)
M_SRC_IP = 6     # outer source address of an overlay datagram (set by the I/O layer)
META_COLS = 7

IN_OVERLAY = -2     # frame came out of a VXLAN datagram
IN_GATEWAY = -3     # frame originated by the node itself (slow path replies, ICMP errors)

# actions
ACT_DROP = 0
ACT_PORT = 1       # write to one port: a pod's, or the uplink (P_UPLINK_PORT)
ACT_FLOOD = 2      # write to every pod port but the ingress one
ACT_SLOW = 3       # hand to the scapy slow path, M_REASON says why
ACT_OVERLAY = 4    # send over the overlay to peer M_OUT (outer headers already written)

# params vector: scalars of the node, one int64 each
P_GW_MAC = 0
P_GW_IP = 1
P_LOCAL_NET = 2
P_LOCAL_MASK = 3
P_PORT_COUNT = 4
P_FDB_AGE = 5        # seconds a learned MAC stays valid
P_POD_MTU = 6
P_VNI = 7
P_VTEP_MAC = 8
P_UNDERLAY_IP = 9
P_OVERLAY_PORT = 10
P_CLUSTER_NET = 11
P_CLUSTER_MASK = 12
P_PEER_DEAD_AFTER = 13   # seconds without a datagram before a peer counts as down
P_UPLINK_PORT = 14       # port number of the node's interface on the outside network (= pod count)
P_NODE_IP = 15           # the node's address there (NodePorts)
P_NODE_MAC = 16
P_OUTSIDE_NET = 17       # cluster.nodeNetwork
P_OUTSIDE_MASK = 18
PARAM_COUNT = 24

# counters: one uint64 each. Names are what `vrouter status` prints.
COUNTER_NAMES = [
    "rx_frames",
    "forwarded_l2",
    "forwarded_routed",
    "flooded",
    "to_overlay",
    "from_overlay",
    "slow_arp",
    "slow_to_gateway",
    "slow_ttl_exceeded",
    "slow_host_unreachable",
    "slow_no_route",
    "slow_frag_needed",
    "drop_runt",
    "drop_oversize",
    "drop_unknown_ethertype",
    "drop_ipv6",
    "drop_bad_ipv4_header",
    "drop_bad_ipv4_checksum",
    "drop_source_mac_multicast",
    "drop_spoofed_mac",
    "drop_spoofed_ip",
    "drop_same_port",
    "fdb_learn_table_full",
    "drop_overlay_unknown_source",
    "drop_overlay_bad_vni",
    "drop_overlay_bad_flags",
    "drop_overlay_truncated",
    "drop_overlay_bad_inner",
    "drop_overlay_peer_down",
    "drop_slowpath_ratelimited",
    "drop_slowpath_ignored",
    "drop_tx_error",
    "svc_new_flows",
    "ct_translated",
    "ct_evicted",
    "slow_service_reject",
    "drop_service_no_local_endpoint",
    "drop_service_no_snat_port",
    "to_outside",
    "from_outside",
    "slow_outside_arp_needed",
    "drop_outside_not_for_us",
    "ct_icmp_translated",
    "outside_neighbour_table_full",
]
COUNTER_COUNT = len(COUNTER_NAMES)

# Index of each counter, checked against COUNTER_NAMES below.
R_RX_FRAMES = 0
R_FORWARDED_L2 = 1
R_FORWARDED_ROUTED = 2
R_FLOODED = 3
R_TO_OVERLAY = 4
R_FROM_OVERLAY = 5
R_SLOW_ARP = 6
R_SLOW_TO_GATEWAY = 7
R_SLOW_TTL_EXCEEDED = 8
R_SLOW_HOST_UNREACHABLE = 9
R_SLOW_NO_ROUTE = 10
R_SLOW_FRAG_NEEDED = 11
R_DROP_RUNT = 12
R_DROP_OVERSIZE = 13
R_DROP_UNKNOWN_ETHERTYPE = 14
R_DROP_IPV6 = 15
R_DROP_BAD_IPV4_HEADER = 16
R_DROP_BAD_IPV4_CHECKSUM = 17
R_DROP_SOURCE_MAC_MULTICAST = 18
R_DROP_SPOOFED_MAC = 19
R_DROP_SPOOFED_IP = 20
R_DROP_SAME_PORT = 21
R_FDB_LEARN_TABLE_FULL = 22
R_DROP_OVERLAY_UNKNOWN_SOURCE = 23
R_DROP_OVERLAY_BAD_VNI = 24
R_DROP_OVERLAY_BAD_FLAGS = 25
R_DROP_OVERLAY_TRUNCATED = 26
R_DROP_OVERLAY_BAD_INNER = 27
R_DROP_OVERLAY_PEER_DOWN = 28
R_DROP_SLOWPATH_RATELIMITED = 29
R_DROP_SLOWPATH_IGNORED = 30
R_DROP_TX_ERROR = 31
R_SVC_NEW_FLOWS = 32
R_CT_TRANSLATED = 33
R_CT_EVICTED = 34
R_SLOW_SERVICE_REJECT = 35
R_DROP_SERVICE_NO_LOCAL_ENDPOINT = 36
R_DROP_SERVICE_NO_SNAT_PORT = 37
R_TO_OUTSIDE = 38
R_FROM_OUTSIDE = 39
R_SLOW_OUTSIDE_ARP_NEEDED = 40
R_DROP_OUTSIDE_NOT_FOR_US = 41
R_CT_ICMP_TRANSLATED = 42
R_OUTSIDE_NEIGHBOUR_TABLE_FULL = 43
assert all(globals()["R_" + n.upper()] == i for i, n in enumerate(COUNTER_NAMES))

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD

VXLAN_HEADER_LEN = 8
OVERLAY_OVERHEAD = 50   # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
