"""Python client against a running `stoker serve` (started by
cli/tests/client_python.rs). argv: SOCKET MANIFEST, where each manifest line
is "<path in the cache>\t<source file>". Exits non-zero on any mismatch."""

import os
import sys

import stoker


def main():
    sock, manifest = sys.argv[1], sys.argv[2]
    pairs = [line.rstrip("\n").split("\t") for line in open(manifest) if line.strip()]
    want = {p: open(src, "rb").read() for p, src in pairs}
    paths = [p for p, _ in pairs]

    c = stoker.Client(sock)
    for p in paths:
        assert c.read(p) == want[p], p
        assert c.stat(p)["size"] == len(want[p]), p
        d = want[p]
        for off, n in [(0, 10), (1, 5000), (len(d) // 2, 1 << 20), (len(d), 3)]:
            assert c.read(p, off, n) == d[off:off + n], (p, off, n)
        assert c.read(p, 7) == d[7:], p

    bufs = c.read_many(paths)
    views = 0
    for p, b in zip(paths, bufs):
        m = memoryview(b)
        assert m.readonly and m.nbytes == len(want[p]), p
        assert m == want[p], p
        views += b.zero_copy
    assert views > len(paths) // 2, f"only {views} zero-copy buffers"
    copies = c.read_many(paths, copy=True)
    assert [bytes(b) for b in copies] == [want[p] for p in paths]
    assert not any(b.zero_copy for b in copies)
    del bufs, copies

    try:
        c.read("/m/no/such/file")
        raise AssertionError("missing file read")
    except FileNotFoundError as e:
        assert "/m/no/such/file" in str(e), e
    assert c.engine_stats()["sessions"] >= 1
    assert any(e["name"] == "m" for e in c.list("/"))
    walked = c.walk("/m")
    assert sorted(paths) == [e["name"] for e in walked if e["name"] in want], walked[:3]
    assert all(e["attr"]["size"] == len(want[e["name"]]) for e in walked if e["name"] in want)

    # Cache management: every path was read above, so it is all cached.
    one = paths[0]
    assert c.pin(one)[0] == 1
    st = c.path_stat(one)
    assert st["pinned"] and st["cached_fraction"] == 1.0, st
    assert c.unpin(one)[0] == 1 and not c.path_stat(one)["pinned"]
    assert c.ttl(one, 3600)[0] == 1 and c.path_stat(one)["ttl_secs"] == 3600
    assert c.ttl(one, None)[0] == 1 and c.path_stat(one)["ttl_secs"] is None
    c.free(one)
    assert c.path_stat(one)["cached_fraction"] < 1.0 or len(want[one]) == 0
    assert c.read(one) == want[one]

    # Map-style dataset, bytes and zero-copy items.
    ds = stoker.StokerDataset(paths, socket=sock)
    assert len(ds) == len(paths)
    assert all(ds[i] == want[paths[i]] for i in range(len(ds)))
    zc = stoker.StokerDataset(paths, socket=sock, zero_copy=True, transform=lambda b: bytes(memoryview(b)))
    assert zc[3] == want[paths[3]]

    # Iterable dataset sharded by worker: shards are disjoint and cover all.
    seen = []
    for wid in range(3):
        os.environ["STOKER_WORKER_ID"], os.environ["STOKER_NUM_WORKERS"] = str(wid), "3"
        it = stoker.StokerIterableDataset(paths, socket=sock, batch=7, window=16)
        got = list(it)
        assert [p for p, _ in got] == paths[wid::3], wid
        assert all(d == want[p] for p, d in got)
        seen += [p for p, _ in got]
    del os.environ["STOKER_WORKER_ID"], os.environ["STOKER_NUM_WORKERS"]
    assert sorted(seen) == sorted(paths)

    # Forked workers with the inherited client (as DataLoader workers are).
    parent = c.session_id()
    pids = []
    for w in range(4):
        pid = os.fork()
        if pid == 0:
            ok = c.session_id() != parent and all(c.read(p) == want[p] for p in paths[w::4])
            os._exit(0 if ok else 1)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert status == 0, f"forked worker {pid} failed"
    assert c.session_id() == parent and c.read(paths[0]) == want[paths[0]]

    try:
        import torch  # noqa: F401
        from torch.utils.data import DataLoader
        loader = DataLoader(stoker.StokerIterableDataset(paths, socket=sock), num_workers=2, batch_size=None)
        assert sorted(p for p, _ in loader) == sorted(paths)
        print("torch DataLoader: ok")
    except ImportError:
        print("torch not installed: DataLoader test skipped")
    print("python client: ok")


if __name__ == "__main__":
    main()
