"""One stoker.Client across engine restarts (driven by
cli/tests/client_python.rs). argv: SOCKET MANIFEST RESTARTS, manifest lines
as in test_client.py. Reads the whole tree, prints "ready N" and waits for a
line on stdin (the test restarts the engine meanwhile), RESTARTS times; then
reads it once more and prints "python reconnect: ok". Exits non-zero on any
mismatch or error."""

import sys

import stoker


def read_all(c, paths, want):
    for p in paths:
        assert c.read(p) == want[p], p
        d = want[p]
        assert c.read(p, 1, 5000) == d[1:5001], p
        assert memoryview(c.read_view(p)) == want[p], p
        assert c.stat(p)["size"] == len(d), p
    got = c.read_many(paths)
    assert [bytes(b) for b in got] == [want[p] for p in paths]
    assert len(c.walk("/m")) == len(paths)


def main():
    sock, manifest, restarts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pairs = [line.rstrip("\n").split("\t") for line in open(manifest) if line.strip()]
    want = {p: open(src, "rb").read() for p, src in pairs}
    paths = [p for p, _ in pairs]
    c = stoker.Client(sock)
    # A view held across the restart stays readable.
    held = c.read_view(paths[0])
    for n in range(restarts):
        read_all(c, paths, want)
        print(f"ready {n}", flush=True)
        assert sys.stdin.readline().strip() == "go"
    read_all(c, paths, want)
    assert memoryview(held) == want[paths[0]]
    print("python reconnect: ok", flush=True)


if __name__ == "__main__":
    main()
