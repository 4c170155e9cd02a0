"""What the page shows of the cluster model (sans-IO): nodes, pods, Services with their
backends, policies and what they select, and one pod's panel."""
from __future__ import annotations

from vrouter.model.config import Cluster
from vrouter.model.services import endpoints


def pod_key(pod) -> str:
    return f"{pod.namespace}/{pod.name}"


def _backends(cluster: Cluster, service) -> list[str]:
    keys = {pod_key(e.pod) for sp in service.ports for e in endpoints(service, sp, cluster.pods)}
    return sorted(keys)


def model(cluster: Cluster) -> dict:
    """The cluster for the map: every node with its pods, the Services with their backends,
    the NetworkPolicies and the pods each selects."""
    return {
        "cluster": cluster.name,
        "nodes": [{"name": n.name, "podCIDR": str(n.pod_cidr), "address": str(n.address),
                   "gateway": str(n.gateway), "kernel": n.kernel} for n in cluster.nodes],
        "namespaces": sorted({p.namespace for p in cluster.pods}
                             | {s.namespace for s in cluster.services}),
        "pods": [{"id": pod_key(p), "name": p.name, "namespace": p.namespace, "node": p.node,
                  "ip": str(p.ip), "labels": dict(p.labels), "dns": p.dns_server}
                 for p in cluster.pods],
        "services": [{"id": s.key, "name": s.name, "namespace": s.namespace, "type": s.type,
                      "clusterIP": str(s.cluster_ip) if s.cluster_ip else None,
                      "ports": [{"name": sp.name, "port": sp.port, "protocol": sp.protocol}
                                for sp in s.ports],
                      "backends": _backends(cluster, s)} for s in cluster.services],
        "policies": [{"id": p.key, "name": p.name, "namespace": p.namespace,
                      "types": list(p.types),
                      "selects": sorted(pod_key(pod) for pod in cluster.pods if p.selects(pod))}
                     for p in cluster.policies],
    }


def pod_panel(cluster: Cluster, key: str) -> dict | None:
    """One pod: labels, address, node, the policies that select it and for which direction,
    the Services it is a backend of. None if there is no such pod."""
    pod = next((p for p in cluster.pods if pod_key(p) == key), None)
    if pod is None:
        return None
    policies = [{"policy": p.key, "directions": list(p.types)}
                for p in cluster.policies if p.selects(pod)]
    services = [{"service": s.key, "clusterIP": str(s.cluster_ip) if s.cluster_ip else None,
                 "ports": [f"{sp.port}/{sp.protocol}" for sp in s.ports]}
                for s in cluster.services if key in _backends(cluster, s)]
    return {"id": key, "name": pod.name, "namespace": pod.namespace, "node": pod.node,
            "ip": str(pod.ip), "mac": pod.mac, "labels": dict(pod.labels),
            "isolated": sorted({d for p in policies for d in p["directions"]}),
            "policies": policies, "services": services}
