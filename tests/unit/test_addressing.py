"""The podCIDR layout has one home (vrouter.model.addressing): every user agrees with it."""
import ipaddress

from vrouter.model import addressing, config
from vrouter.ops.cli import build_parser, cmd_cni_conf

CIDR = ipaddress.IPv4Network("10.244.3.0/24")

DOC = """
cluster: {name: lay, podCIDR: 10.244.0.0/16}
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.3.0/24}
pods:
  - {name: p1, node: node-a}
  - {name: p2, node: node-a, ip: 10.244.3.3}
  - {name: p3, node: node-a}
"""


def test_layout():
    assert str(addressing.vtep_address(CIDR)) == "10.244.3.0"
    assert str(addressing.gateway(CIDR)) == "10.244.3.1"
    assert str(addressing.dns_pod_ip(CIDR)) == "10.244.3.254"
    assert addressing.pod_address_problem(ipaddress.IPv4Address("10.244.3.1"), CIDR, "n")
    assert addressing.pod_address_problem(ipaddress.IPv4Address("10.244.3.255"), CIDR, "n")
    assert addressing.pod_address_problem(ipaddress.IPv4Address("10.244.4.2"), CIDR, "n")
    assert addressing.pod_address_problem(ipaddress.IPv4Address("10.244.3.2"), CIDR, "n") is None


def test_lowest_free_and_exhaustion():
    small = ipaddress.IPv4Network("10.244.3.0/30")   # .2 is the only pod address
    assert str(addressing.lowest_free(small, set())) == "10.244.3.2"
    assert addressing.lowest_free(small, {ipaddress.IPv4Address("10.244.3.2")}) is None
    taken = {ipaddress.IPv4Address("10.244.3.2"), ipaddress.IPv4Address("10.244.3.4")}
    assert str(addressing.lowest_free(CIDR, taken)) == "10.244.3.3"


def test_config_allocates_by_the_layout():
    cluster = config.parse(DOC, check_host=False)
    ips = {p.name: str(p.ip) for p in cluster.pods}
    # config order, lowest free from .2, an explicit address skipped; the DNS pod last
    assert ips["p1"] == "10.244.3.2" and ips["p2"] == "10.244.3.3" and ips["p3"] == "10.244.3.4"
    assert ips["lay-dns-node-a"] == str(addressing.dns_pod_ip(CIDR))
    assert cluster.node("node-a").vtep_mac == "0e:76:0a:f4:03:00"


def test_cni_conf_ipam_range(tmp_path, capsys):
    import json
    path = tmp_path / "lay.yaml"
    path.write_text(DOC)
    args = build_parser().parse_args(["cni-conf", str(path), "--node", "node-a", "--ipam",
                                      "host-local"])
    assert cmd_cni_conf(args) == 0
    r = json.loads(capsys.readouterr().out)["plugins"][0]["ipam"]["ranges"][0][0]
    first, last = addressing.ipam_range(CIDR, True)
    assert (r["rangeStart"], r["rangeEnd"]) == (str(first), str(last)) == ("10.244.3.128",
                                                                          "10.244.3.253")


def test_node_subnets():
    subnets = list(addressing.node_subnets(ipaddress.IPv4Network("10.244.0.0/16"), 24))
    assert len(subnets) == 256 and str(subnets[3]) == "10.244.3.0/24"
    assert addressing.subnet_key(subnets[3]) == "10.244.3.0-24"
    assert addressing.subnet_from_key("10.244.3.0-24") == subnets[3]


def test_the_models_overlay_overhead_is_the_fast_paths():
    from fastpath.layout import OVERLAY_OVERHEAD
    from vrouter.model import types
    assert types.OVERLAY_OVERHEAD == OVERLAY_OVERHEAD
