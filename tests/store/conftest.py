import pytest

from tests.etcdserver import EtcdServer


@pytest.fixture
def etcd():
    """A real etcd on a loopback address of its own; killed and its data removed afterwards."""
    server = EtcdServer()
    try:
        yield server.start()
    finally:
        server.close()
