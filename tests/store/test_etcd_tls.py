"""cluster.datastore.tls against a real etcd that serves https only and asks every client for a
certificate of its CA (--client-cert-auth): the client, and the commands through a cluster file."""
import pytest
import trio
import yaml

from tests.etcdserver import EtcdServer
from tests.store.test_kubectl import POD, WEB, manifest, run as run_cli
from vrouter.store import etcd as e


@pytest.fixture(scope="module")
def tls_etcd():
    server = EtcdServer(tls=True)
    try:
        yield server.start()
    finally:
        server.close()


def client(server, **kw):
    return e.Client([server.url], ca_file=str(server.certs["ca"]), **kw)


def test_a_client_with_its_certificate_reads_writes_and_watches(tls_etcd):
    certs = tls_etcd.certs

    async def main():
        async with client(tls_etcd, cert_file=str(certs["client"]),
                          key_file=str(certs["client_key"])) as c:
            start = await c.put(b"/tls/a", b"1")
            assert (await c.get(b"/tls/a")).value == b"1"
            async with c.watch(b"/tls/", e.prefix_end(b"/tls/"), start_revision=start) as watch:
                with trio.fail_after(10):
                    first = await watch.__anext__()
                    while not first.events:   # the created response
                        first = await watch.__anext__()
            assert [(ev.type, ev.kv.key, ev.kv.value) for ev in first.events] == [
                ("PUT", b"/tls/a", b"1")]
    trio.run(main)


def test_without_a_client_certificate_or_trust_in_the_server_it_is_refused(tls_etcd):
    async def attempt(c):
        async with c:
            with pytest.raises(e.Unavailable) as caught:
                await c.get(b"/tls/a")
        return str(caught.value)
    # etcd ends the handshake of a client without a certificate
    said = trio.run(attempt, client(tls_etcd))
    assert tls_etcd.url in said and "refuse this client's certificate" in said, said
    # a client that trusts only the system's CAs does not accept etcd's certificate
    said = trio.run(attempt, e.Client([tls_etcd.url]))
    assert "CERTIFICATE_VERIFY_FAILED" in said, said


def test_apply_and_get_through_a_cluster_file_with_tls(tmp_path, tls_etcd, capsys):
    certs = tls_etcd.certs
    config = tmp_path / "tls.yaml"
    config.write_text(yaml.safe_dump({
        "cluster": {"name": "tls", "podCIDR": "10.244.0.0/16",
                    "datastore": {"type": "etcd", "endpoints": [tls_etcd.url], "prefix": "/vt",
                                  "tls": {"caFile": str(certs["ca"]),
                                          "certFile": str(certs["client"]),
                                          "keyFile": str(certs["client_key"])}}},
        "nodes": [{"name": "node-a", "underlay": "127.0.0.11", "podCIDR": "10.244.1.0/24"}]}))
    code, out, err = run_cli(capsys, "apply", "-f", manifest(tmp_path, "a.yaml", WEB, POD),
                             "--cluster", str(config))
    assert code == 0, err
    assert out.splitlines() == ["service/web created", "pod/web-1 created"]
    listed = tls_etcd.etcdctl("get", "--prefix", "--keys-only", "/vt/tls/").stdout.split()
    assert listed == ["/vt/tls/pods/default/web-1", "/vt/tls/services/default/web"]
    code, out, err = run_cli(capsys, "get", "svc", "web", "--cluster", str(config))
    assert code == 0 and out.splitlines()[1].split()[0] == "web", err
