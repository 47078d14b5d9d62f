"""Does work on one core slow work on the other? (A VM's vCPUs may share a physical core.)

    python bench/core_contention.py [--seconds 4]

Counts single-threaded torch products in a fixed time on the first core alone, then on the
first and the last core at once: a cache-resident matmul (256 x 256) and a memory-bound product
(a 16 MB matrix times a thin one). A ratio near 1 means SSD's two processes on two cores really
run in parallel.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

CORES = sorted(os.sched_getaffinity(0))


def _count(core: int, seconds: float, shape: tuple[int, int, int], out) -> None:
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ b
        count += 1
    out.put((core, count))


def _run(cores: list[int], seconds: float, shape: tuple[int, int, int]) -> dict[int, int]:
    out = mp.Queue()
    procs = [mp.Process(target=_count, args=(core, seconds, shape, out)) for core in cores]
    for p in procs:
        p.start()
    counts = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    first, last = CORES[0], CORES[-1]
    for name, shape in (("matmul 256x256x256", (256, 256, 256)), ("memory-bound 2048x2048x4", (2048, 2048, 4))):
        alone = _run([first], args.seconds, shape)[first]
        both = _run([first, last], args.seconds, shape)
        print(f"{name}: core {first} alone {alone}; with core {last} busy: {both[first]} "
              f"({both[first] / alone:.2f} of alone)")


if __name__ == "__main__":
    main()
