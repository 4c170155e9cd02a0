"""The file store: today's /run/vrouter records behind the store interface."""
import json
import os
import subprocess

import pytest
import trio

from vrouter.host import state
from vrouter.store.base import Compacted, Refused
from vrouter.store import filestore
from vrouter.store.filestore import FileStore


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    return tmp_path


def test_attachments_are_claimed_once_and_listed(root):
    async def main():
        store = FileStore("fs")
        assert await store.create("attachments/p1", b'{"name": "p1"}') is None
        holder = await store.create("attachments/p1", b'{"name": "other"}')
        assert holder.value == b'{"name": "p1"}'   # who has it
        assert (root / "fs" / "pods" / "p1.json").exists()   # where it always was
        snap = await store.list("")
        assert list(snap.items) == ["attachments/p1"]
        assert await store.delete("attachments/p1") and not await store.delete("attachments/p1")
        with pytest.raises(Refused, match="vrouter reload"):
            await store.put("services/default/web", b"{}")
        with pytest.raises(Refused):
            await store.commit({"pods/default/a": b"{}"})
    trio.run(main)


def test_a_node_is_listed_while_its_process_runs(root):
    async def main():
        store = FileStore("fs")
        await store.put("nodes/node-a", json.dumps({"kind": "Node"}).encode(),
                        await store.grant(30))
        assert json.loads((await store.list("nodes/")).items["nodes/node-a"].value) == {
            "kind": "Node"}
        record = state.read_record("fs", "node-a")
        assert record["pid"] == os.getpid() and record["registration"] == {"kind": "Node"}
        record["start_time"] = 1   # as if its process had ended
        (root / "fs" / "node-a.json").write_text(json.dumps(record))
        assert (await store.list("nodes/")).items == {}
    trio.run(main)


def test_a_watch_reports_changes_when_poked(root):
    async def main():
        store = FileStore("fs")
        snap = await store.list("")
        with pytest.raises(Compacted):
            async with store.watch("", snap.revision + 100):
                pass
        async with store.watch("", snap.revision + 1) as changes:
            await store.create("attachments/p1", b"1")   # pokes the watch
            with trio.fail_after(1):   # well before the 2 s poll
                batch = await changes.__anext__()
            assert [(c.key, c.value) for c in batch] == [("attachments/p1", b"1")]
            await store.delete("attachments/p1")
            with trio.fail_after(1):
                batch = await changes.__anext__()
            assert [(c.key, c.value) for c in batch] == [("attachments/p1", None)]
    trio.run(main)


def test_workload_records_are_files_of_their_own(root):
    async def main():
        store = FileStore("fs")
        await store.put("workloads/Deployment/default/web", b'{"key": "x"}')
        assert (root / "fs" / "workloads" / "Deployment.default.web.json").read_bytes() == \
            b'{"key": "x"}'
        assert (await store.list("workloads/")).values() == {
            "workloads/Deployment/default/web": b'{"key": "x"}'}
        for bad in ("workloads/Deployment/web", "workloads/Deployment/default/../x",
                    "workloads/a.b/default/web"):
            with pytest.raises(Refused, match="names no workload record"):
                await store.put(bad, b"{}")
        assert store.remove_workloads() == 1 and not (root / "fs" / "workloads").exists()
        assert not await store.delete("workloads/Deployment/default/web")
    trio.run(main)


def test_a_watch_sees_other_writers_and_ended_leases_and_reads_nothing_while_nothing_changes(
        root, monkeypatch):
    """Another process's write pokes no watch here, and a node's lease ends with its process,
    touching no file: the watch's look at the directories and the nodes' pidfds sees both,
    and reads no record while neither changed (32 idle nodes re-reading every record every
    poll were most of an idle cluster's CPU)."""
    monkeypatch.setattr(filestore, "POLL_INTERVAL", 0.05)
    child = subprocess.Popen(["sleep", "60"])
    try:
        state._write(state.record_path("fs", "node-b"),
                     {**state.identity(child.pid), "node": "node-b", "registration": {"n": 1}})

        async def main():
            store = FileStore("fs")
            reads = []
            real_read = store.read
            store.read = lambda *a, **k: reads.append(1) or real_read(*a, **k)
            snap = await store.list("")
            assert "nodes/node-b" in snap.items
            async with store.watch("", snap.revision + 1) as changes:
                await FileStore("fs").create("attachments/p1", b"1")   # pokes its own watches
                with trio.fail_after(5):
                    batch = await changes.__anext__()
                assert [(c.key, c.value) for c in batch] == [("attachments/p1", b"1")]
                before = len(reads)
                await trio.sleep(20 * filestore.POLL_INTERVAL)   # nothing changes meanwhile
                assert len(reads) - before <= 1   # one more read: the change was that recent
                child.kill()
                child.wait()
                with trio.fail_after(5):
                    batch = await changes.__anext__()
                assert [(c.key, c.value) for c in batch] == [("nodes/node-b", None)]
        trio.run(main)
    finally:
        child.kill()
        child.wait()
