"""vrouter trace --to: how a destination is written."""
from pathlib import Path

import pytest

from vrouter.model import config
from vrouter.ops.observe import _destination

SERVICES = Path(__file__).resolve().parents[2] / "configs" / "services.yaml"


@pytest.fixture(scope="module")
def cluster():
    return config.load(SERVICES)


def test_address_port_and_protocol(cluster):
    assert _destination(cluster, "10.96.0.10:53/udp", None)[:3] == ("10.96.0.10", 53, "udp")
    assert _destination(cluster, "10.244.1.5:80", None)[:3] == ("10.244.1.5", 80, None)
    assert _destination(cluster, "10.244.1.5/icmp", None)[:3] == ("10.244.1.5", None, "icmp")


def test_a_service_by_name_takes_its_first_port_and_protocol(cluster):
    service = next(s for s in cluster.services if s.cluster_ip is not None and s.ports)
    first = service.ports[0]
    address, port, proto, what = _destination(cluster, service.key, None)
    assert (address, port, proto) == (str(service.cluster_ip), first.port, first.protocol.lower())
    assert what == f"Service {service.key}"
    assert _destination(cluster, f"{service.key}:{first.port}/tcp", None)[1:3] == (first.port,
                                                                                   "tcp")


def test_a_pod_by_name(cluster):
    pod = cluster.pods[0]
    assert _destination(cluster, f"{pod.name}:8080", None)[:3] == (str(pod.ip), 8080, None)


@pytest.mark.parametrize("text, words", [("10.0.0.1:99999", "not a port"),
                                         ("no-such-thing", "neither"),
                                         ("10.0.0.1:http", "not a port")])
def test_bad_destinations_say_why(cluster, text, words):
    with pytest.raises(ValueError, match=words):
        _destination(cluster, text, None)
