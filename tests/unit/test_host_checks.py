"""Not root, or no TUN device: a clear message, exit code 1, nothing created."""

import pytest

from vrouter.host import tap
from vrouter.ops import cli


@pytest.fixture
def netns_created(monkeypatch):
    created = []
    monkeypatch.setattr(tap, "create_netns", lambda name: created.append(name))
    return created


def test_not_root(monkeypatch, capsys, netns_created):
    monkeypatch.setattr(tap.os, "geteuid", lambda: 1000)
    assert cli.main(["run", "configs/demo.yaml", "--node", "node-a"]) == 1
    assert "vrouter needs root" in capsys.readouterr().err
    assert cli.main(["up", "configs/demo.yaml"]) == 1
    assert netns_created == []


def test_no_tun_device(monkeypatch, capsys, netns_created, tmp_path):
    monkeypatch.setattr(tap.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tap, "TUN_PATH", str(tmp_path / "no-tun"))
    assert cli.main(["run", "configs/demo.yaml", "--node", "node-a"]) == 1
    err = capsys.readouterr().err
    assert "cannot open" in err and "no-tun" in err and "modprobe tun" in err
    assert netns_created == []
