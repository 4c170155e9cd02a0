"""Fuzz target: a cluster file with its manifests (vrouter.model.config.parse): YAML text, the
cluster document, Services, Pods, Namespaces and NetworkPolicies.

Properties: parse gives a Cluster or raises ConfigError, nothing else; and what it accepts
holds what the README promises: names that are DNS labels, every pod at a usable address of its
node's podCIDR, no address or MAC twice, node podCIDRs inside the cluster's and apart."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.cluster_file"))

import re

from vrouter.model import config

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    cluster_text, _, manifest = text.partition("\n#manifest\n")
    manifests = [("extra.yaml", manifest)] if manifest else []
    try:
        cluster = config.parse(cluster_text, "fuzz.yaml", check_host=False, manifests=manifests)
    except config.ConfigError as exc:
        assert str(exc), "a ConfigError without a message"
        return
    check_cluster(cluster)


def check_cluster(cluster) -> None:
    assert DNS_LABEL.fullmatch(cluster.name), f"cluster name {cluster.name!r}"
    seen = {}
    for node in cluster.nodes:
        assert DNS_LABEL.fullmatch(node.name), f"node name {node.name!r}"
        assert node.pod_cidr.subnet_of(cluster.pod_cidr), (node.name, node.pod_cidr)
        for other in cluster.nodes:
            assert other is node or not node.pod_cidr.overlaps(other.pod_cidr)
    macs = set()
    for pod in cluster.pods:
        assert DNS_LABEL.fullmatch(pod.name), f"pod name {pod.name!r}"
        node = cluster.node(pod.node)
        cidr = node.pod_cidr
        assert pod.ip in cidr and pod.ip not in (node.gateway, cidr.network_address,
                                                 cidr.broadcast_address), (pod.name, pod.ip)
        assert pod.ip not in seen, f"{pod.ip} of {pod.name} and {seen.get(pod.ip)}"
        assert pod.mac not in macs, f"{pod.mac} twice"
        seen[pod.ip] = pod.name
        macs.add(pod.mac)
