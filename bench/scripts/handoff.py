#!/usr/bin/env python3
"""What one hand-off between two processes costs on this box.

Usage: bench/scripts/handoff.py [ROUNDS]   (default 20,000)

Two processes bounce one byte over a pair of pipes, ROUNDS times: each
round is two wake-ups of a sleeping process, the shape of a FUSE request
and its reply. Run once with the processes free to use any CPU and once
with both pinned to CPU 0. On a VM the difference is the cost of waking a
task on another (idle) vCPU. Also prints a bare system call, for scale.
"""
import os
import sys
import time


def pingpong(rounds, cpu=None):
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        for _ in range(rounds):
            os.read(a_r, 1)
            os.write(b_w, b"x")
        os._exit(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    t = time.perf_counter()
    for _ in range(rounds):
        os.write(a_w, b"x")
        os.read(b_r, 1)
    dt = time.perf_counter() - t
    os.waitpid(pid, 0)
    for fd in (a_r, a_w, b_r, b_w):
        os.close(fd)
    if cpu is not None:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    return dt / rounds * 1e6


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    t = time.perf_counter()
    for _ in range(rounds):
        os.getppid()
    print(f"system call (getppid): {(time.perf_counter() - t) / rounds * 1e6:.2f} us")
    print(f"pipe round trip, any CPU: {pingpong(rounds):.1f} us")
    print(f"pipe round trip, both on CPU 0: {pingpong(rounds, 0):.1f} us")


if __name__ == "__main__":
    main()
