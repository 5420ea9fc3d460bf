#!/usr/bin/env python3
"""Time open(2) and read(2) separately, one process, whole files one at a time.

Usage: bench/scripts/open-read-latency.py DIR [FILES]   (root: drops the page cache)

Lists DIR's subdirectories (as `stoker bench gen` lays them out), shuffles
the files with a fixed seed, drops the page cache, then opens, reads to the
end (1 MiB reads) and closes FILES of them (default 5,000). Prints files/s
and the mean time per file in open, read and close. Through a FUSE mount,
open after the drop is the LOOKUP round trip and read the READ round trip
plus the device read; on ext4 they are the inode and the data reads.
"""
import os
import random
import sys
import time


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: open-read-latency.py DIR [FILES]")
    root = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    files = []
    for d in sorted(os.listdir(root)):
        p = os.path.join(root, d)
        if os.path.isdir(p):
            files += [os.path.join(p, f) for f in sorted(os.listdir(p))]
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
