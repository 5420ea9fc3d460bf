#!/usr/bin/env python3
"""Time open(2) and read(2) separately, one process, whole files one at a time.

Usage: bench/scripts/open-read-latency.py DIR [FILES] [--list SRC] [--stat]
       (root: drops the page cache)

Lists DIR's subdirectories (as `stoker bench gen` lays them out), shuffles
the files with a fixed seed, drops the page cache, then opens, reads to the
end (1 MiB reads) and closes FILES of them (default 5,000). Prints files/s
and the mean time per file in open, read and close. Through a FUSE mount,
open after the drop is the LOOKUP round trip and read the READ round trip
plus the device read; on ext4 they are the inode and the data reads.
--list SRC takes the file names from SRC (the same tree elsewhere, for a
mount that cannot list); --stat only stats each file (after the drop,
through FUSE: one LOOKUP round trip each).
"""
import os
import random
import sys
import time


def main():
    args = sys.argv[1:]
    stat_only = "--stat" in args
    if stat_only:
        args.remove("--stat")
    src = None
    if "--list" in args:
        i = args.index("--list")
        if i + 1 >= len(args):
            sys.exit("--list needs a directory")
        src = args[i + 1]
        del args[i:i + 2]
    if not args:
        sys.exit("usage: open-read-latency.py DIR [FILES] [--list SRC] [--stat]")
    root = args[0]
    n = int(args[1]) if len(args) > 1 else 5000
    listed = src or root
    files = []
    for d in sorted(os.listdir(listed)):
        p = os.path.join(listed, d)
        if os.path.isdir(p):
            files += [os.path.join(root, d, f) for f in sorted(os.listdir(p))]
    if not files:
        sys.exit(f"no files under the subdirectories of {root}")
    random.seed(1)
    random.shuffle(files)
    files = files[:n]
    n = len(files)
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    t_open = t_read = t_close = 0.0
    if stat_only:
        # The directories' own lookups first, so each stat is one round trip.
        for d in sorted({os.path.dirname(p) for p in files}):
            os.stat(d)
        start = time.perf_counter()
        for path in files:
            os.stat(path)
        total = time.perf_counter() - start
        print(f"{root}: {n / total:.0f} stats/s; {total / n * 1e6:.1f} us per stat")
        return
    start = time.perf_counter()
    for path in files:
        a = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        b = time.perf_counter()
        while os.read(fd, 1 << 20):
            pass
        c = time.perf_counter()
        os.close(fd)
        d = time.perf_counter()
        t_open += b - a
        t_read += c - b
        t_close += d - c
    total = time.perf_counter() - start
    us = 1e6 / n
    print(f"{root}: {n / total:.0f} files/s; per file open {t_open * us:.0f} us, "
          f"read {t_read * us:.0f} us, close {t_close * us:.0f} us")


if __name__ == "__main__":
    main()
