#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""mpi4py.futures side of luamp's cluster benchmark (bench/cluster).

Usage (Debian's python3-mpi4py is for /usr/bin/python3 only):

  mpirun -n N /usr/bin/python3 -m mpi4py.futures bench/python/mpi4py_bench.py \
      WORKLOAD [--n N]
  /usr/bin/python3 bench/python/mpi4py_bench.py --list

Under `-m mpi4py.futures` rank 0 runs this script and ranks 1 .. N-1 are
MPIPoolExecutor's workers (N-1 of them).  With N = 1 there is no worker
rank: mpi4py.futures then runs the tasks in a thread of rank 0 itself
(its `_manager_thread`), which the result says (`mode: "thread"`).

Runs ONE workload and prints ONE line of JSON on stdout, with the fields of
bench/cluster_bench.lua (its luamp twin): same workload names, counts,
sizes and chunksize rule, same units.  The executor is started and warmed
up (four trivial tasks per worker, chunksize 1) before the clock starts.

  map_small         map(square, range(n)), n = 1,000,000, chunksize
                    ceil(n / (4 * workers)) (the rule of Python's Pool and
                    luamp's Pool; MPIPoolExecutor.map's own default is 1)
  apply_latency     n x submit(ident, i).result(), one at a time
  apply_async_many  n x submit(square, i), then result() of each
  map_1mib          map(len, n distinct 1 MiB bytes), n = 256, same
                    chunksize rule (ceil(256 / (4 * workers)))

Units: per_op_us = microseconds per operation, ops_per_s = operations per
second, mb_per_s = MiB (2**20 bytes) of payload per second.
"""
import argparse
import gc
import json
import math
import sys
import time

MIB = 1 << 20
now = time.perf_counter


# ---------------------------------------------------------------- task bodies
def ident(x):
    return x


def square(x):
    return x * x


def rank_of(_):
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


def default_chunksize(n, workers):
    return max(1, math.ceil(n / (4 * workers)))


# ------------------------------------------------------------------ workloads
def w_map_small(ex, info, n):
    n = n or 1_000_000
    cs = default_chunksize(n, info["workers"])
    t0 = now()
    out = list(ex.map(square, range(n), chunksize=cs))
    dt = now() - t0
    assert len(out) == n and out[-1] == (n - 1) ** 2, "wrong map result"
    return dict(n=n, chunksize=cs, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def w_map_small_default(ex, info, n):
    # map_small with mpi4py's own default chunksize (1), as the shared
    # workload says ("default chunksize"); fewer items, as each is a
    # message: the rate is per item all the same.
    n = n or 20_000
    t0 = now()
    out = list(ex.map(square, range(n)))
    dt = now() - t0
    assert len(out) == n and out[-1] == (n - 1) ** 2, "wrong map result"
    return dict(n=n, chunksize=1, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def w_apply_latency(ex, info, n):
    n = n or 5_000
    for i in range(200):
        ex.submit(ident, i).result()
    t0 = now()
    for i in range(n):
        assert ex.submit(ident, i).result() == i
    dt = now() - t0
    # Which ranks served the tasks: with -m mpi4py.futures, always another
    # rank than 0 (the client), unless there is none (thread mode).
    served = sorted(set(ex.map(rank_of, range(4 * info["workers"]))))
    remote = [r for r in served if r != 0]
    r = dict(n=n, seconds=dt, per_op_us=dt / n * 1e6, served_by_ranks=served)
    if remote and 0 not in served:
        r["remote_us"] = dt / n * 1e6
        r["remote_n"] = n
    else:
        r["local_us"] = dt / n * 1e6
        r["local_n"] = n
    return r


def w_apply_async_many(ex, info, n):
    n = n or 20_000
    t0 = now()
    fs = [ex.submit(square, i) for i in range(n)]
    total = sum(f.result() for f in fs)
    dt = now() - t0
    assert total == sum(i * i for i in range(n)), "wrong total"
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def map_1mib(ex, info, n, times):
    # map(len) over n distinct 1 MiB strings, `times` times over the same
    # executor, the last one timed (map_1mib: once; map_1mib_warm: three)
    n = n or 256
    data = [bytes([i & 0xFF]) * MIB for i in range(n)]
    cs = default_chunksize(n, info["workers"])
    for _ in range(times):
        gc.collect()
        t0 = now()
        out = list(ex.map(len, data, chunksize=cs))
        dt = now() - t0
    assert sum(out) == n * MIB, "wrong sum"
    return dict(n=n, chunksize=cs, seconds=dt, mb_per_s=n / dt, ops_per_s=n / dt)


def w_map_1mib(ex, info, n):
    return map_1mib(ex, info, n, 1)


def w_map_1mib_warm(ex, info, n):
    return map_1mib(ex, info, n, 3)


WORKLOADS = {
    "map_small": w_map_small,
    "map_small_default": w_map_small_default,
    "apply_latency": w_apply_latency,
    "apply_async_many": w_apply_async_many,
    "map_1mib": w_map_1mib,
    "map_1mib_warm": w_map_1mib_warm,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?")
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list or not a.workload:
        print("\n".join(WORKLOADS))
        return
    f = WORKLOADS.get(a.workload)
    if f is None:
        sys.exit(f"unknown workload {a.workload!r}; try --list")

    import mpi4py
    from mpi4py import MPI
    from mpi4py.futures import MPIPoolExecutor

    size = MPI.COMM_WORLD.Get_size()
    workers = size - 1 if size > 1 else 1
    info = dict(ranks=size, workers=workers, mode="mpi" if size > 1 else "thread")
    with MPIPoolExecutor() as ex:
        ex.bootup(wait=True)
        list(ex.map(ident, range(4 * workers), chunksize=1))   # every worker is up
        gc.collect()
        r = f(ex, info, a.n)
    out = dict(workload=a.workload, side="mpi4py")
    out.update(info)
    out.update(r)
    out["python"] = sys.version.split()[0]
    out["mpi4py"] = mpi4py.__version__
    out["mpi"] = MPI.Get_library_version().replace("\0", "").splitlines()[0].strip()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
