"""The page's cluster model (vrouter.ui.hub) read from a real etcd: what `vrouter apply` wrote
is on the map without a node running, and the last model stays while etcd does not answer."""
import pytest
import trio

from tests.store.test_kubectl import POLICY, WEB, cluster_file, manifest, run
from vrouter.model import config
from vrouter.ui.hub import Hub


def test_the_page_reads_the_cluster_from_etcd(tmp_path, etcd, capsys):
    path = str(cluster_file(tmp_path, etcd, name="uim"))
    code, _, err = run(capsys, "apply", "-f", manifest(tmp_path, "app.yaml", WEB, POLICY),
                       "--cluster", path)
    assert code == 0, err
    file = config.load(path, check_host=False)
    hub = Hub(file)
    assert "default/web" not in {s["id"] for s in hub.model["services"]}   # the file's alone
    models = []

    async def main():
        hub.publish = lambda event, data: models.append(data) if event == "model" else None
        with trio.move_on_after(15):
            async with trio.open_nursery() as nursery:
                hub.nursery = nursery
                nursery.start_soon(hub._watch_model)
                while not models:
                    await trio.sleep(0.05)
                etcd.kill()   # etcd gone (connections refused): the hub keeps the model
                while hub.store_error is None:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

    trio.run(main)
    if not models:
        pytest.fail("the hub published no model read from etcd")
    model = models[0]
    assert {s["id"] for s in model["services"]} >= {"default/web", "kube-system/kube-dns"}
    assert [p["id"] for p in model["policies"]] == ["default/deny"]
    assert hub.store_error, "an unreachable etcd must be reported"
    assert hub.model == model, "the last model is kept while the store does not answer"
