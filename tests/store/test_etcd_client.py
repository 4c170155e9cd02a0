"""vrouter.store.etcd against a real etcd (Debian's etcd-server 3.4, JSON gateway)."""
import trio
import pytest

from vrouter.store import etcd as e


def run(fn, *args):
    return trio.run(fn, *args)


def test_put_get_range_and_delete_with_any_bytes(etcd):
    async def main():
        async with e.Client([etcd.url]) as c:
            r1 = await c.put(b"/t/a", b"\x00\xffbinary")
            r2 = await c.put(b"/t/b", b"2")
            await c.put(b"/u/c", b"3")
            assert r2 == r1 + 1
            kv = await c.get(b"/t/a")
            assert kv.value == b"\x00\xffbinary" and kv.mod_revision == r1 and kv.version == 1
            rev, kvs = await c.get_prefix(b"/t/", page=1)   # two pages of one key each
            assert [k.key for k in kvs] == [b"/t/a", b"/t/b"] and rev == r2 + 1
            assert await c.get(b"/t/nothing") is None
            _, deleted = await c.delete(b"/t/", e.prefix_end(b"/t/"))
            assert deleted == 2
            assert (await c.get_prefix(b"/t/"))[1] == []
            assert (await c.get(b"/u/c")).value == b"3"
    run(main)


def test_prefix_end():
    assert e.prefix_end(b"/a/") == b"/a0"
    assert e.prefix_end(b"a\xff") == b"b"
    assert e.prefix_end(b"\xff\xff") == b"\0"


def test_txn_creates_only_once(etcd):
    async def main():
        async with e.Client([etcd.url]) as c:
            key = b"/t/claim"
            first = await c.txn([e.version_is(key, 0)], [e.put_op(key, b"one")],
                                [e.range_op(key)])
            second = await c.txn([e.version_is(key, 0)], [e.put_op(key, b"two")],
                                 [e.range_op(key)])
            assert first.succeeded and not second.succeeded
            assert second.ranges()[0][0].value == b"one"   # who has it
            kv = await c.get(key)
            moved = await c.txn([e.mod_revision_is(key, kv.mod_revision)],
                                [e.put_op(key, b"three"), e.delete_op(b"/t/other")])
            stale = await c.txn([e.mod_revision_is(key, kv.mod_revision)],
                                [e.put_op(key, b"four")])
            assert moved.succeeded and not stale.succeeded
            assert (await c.get(key)).value == b"three"
    run(main)


def test_leases_keepalive_expiry_and_revoke(etcd):
    async def main():
        async with e.Client([etcd.url]) as c:
            lease, ttl = await c.grant(2)
            assert ttl == 2
            await c.put(b"/t/leased", b"x", lease=lease)
            assert (await c.get(b"/t/leased")).lease == lease
            assert await c.keepalive(lease) == 2
            # let it expire: the key goes with it, and a keepalive then says so
            with trio.fail_after(10):
                while await c.get(b"/t/leased") is not None:
                    await trio.sleep(0.1)
            with pytest.raises(e.LeaseNotFound):
                await c.keepalive(lease)
            assert await c.time_to_live(lease) == -1
            other, _ = await c.grant(30)
            await c.put(b"/t/leased2", b"y", lease=other)
            await c.revoke(other)
            assert await c.get(b"/t/leased2") is None
            await c.revoke(other)   # gone already: no error
            with pytest.raises(e.EtcdError):   # a put with a lease that does not exist
                await c.put(b"/t/leased3", b"z", lease=other)
    run(main)


def test_watch_from_a_revision_sees_puts_and_deletes(etcd):
    async def main():
        async with e.Client([etcd.url]) as c:
            start = await c.put(b"/w/a", b"1")
            await c.put(b"/w/b", b"2")
            await c.delete(b"/w/a")
            await c.put(b"/other", b"not watched")
            seen = []
            async with c.watch(b"/w/", e.prefix_end(b"/w/"), start_revision=start) as watch:
                with trio.fail_after(10):
                    async for response in watch:
                        seen += [(ev.type, ev.kv.key, ev.kv.value) for ev in response.events]
                        if len(seen) >= 3:
                            break
                    # and live: a put after the watch started
                    await c.put(b"/w/c", b"3")
                    response = await watch.__anext__()
            assert seen == [("PUT", b"/w/a", b"1"), ("PUT", b"/w/b", b"2"),
                            ("DELETE", b"/w/a", b"")]
            assert [(ev.type, ev.kv.key) for ev in response.events] == [("PUT", b"/w/c")]
            assert watch.created
    run(main)


def test_watch_from_a_compacted_revision_is_compacted(etcd):
    async def main():
        async with e.Client([etcd.url]) as c:
            first = await c.put(b"/w/a", b"1")
            last = await c.put(b"/w/a", b"2")
            await c.compact(last)
            with pytest.raises(e.Compacted) as caught:
                async with c.watch(b"/w/", e.prefix_end(b"/w/"), start_revision=first) as watch:
                    with trio.fail_after(10):
                        await watch.__anext__()
            assert caught.value.revision == last
            with pytest.raises(e.Compacted):
                await c.range(b"/w/a", revision=first)
            with pytest.raises(e.EtcdError) as future:   # a future revision: not compacted
                await c.range(b"/w/a", revision=last + 100)
            assert not isinstance(future.value, e.Compacted) and future.value.code == 11
    run(main)


def test_unavailable_and_a_broken_watch_stream(etcd):
    async def main():
        async with e.Client([etcd.url], timeout=2) as c:
            rev = await c.put(b"/w/a", b"1")
            async with c.watch(b"/w/", e.prefix_end(b"/w/"), start_revision=rev + 1) as watch:
                etcd.kill()
                with trio.fail_after(10), pytest.raises(e.Unavailable):
                    await watch.__anext__()
            with pytest.raises(e.Unavailable):
                await c.get(b"/w/a")
            with pytest.raises(e.Unavailable):
                async with c.watch(b"/w/"):
                    pass
            etcd.start()   # the same data: the client goes on
            assert (await c.get(b"/w/a")).value == b"1"
    run(main)


def test_endpoints_tried_in_turn(etcd):
    async def main():
        dead = "http://127.0.0.1:9"   # discard port: nothing listens
        async with e.Client([dead, etcd.url], timeout=2) as c:
            await c.put(b"/t/x", b"1")
            assert c.endpoints[0] == etcd.url   # the one that answered is asked first now
            assert (await c.status())["version"].startswith("3.")
    run(main)
