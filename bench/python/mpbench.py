#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""CPython multiprocessing baseline workloads (the anchor luamp must beat).

Usage:  python3 mpbench.py WORKLOAD [--n N] [--size BYTES] [--workers W]
        python3 mpbench.py --list

luamp's own copy of the reference mpbench.py: the reference workloads
(pool_start ... worker_crash) are unchanged; the sweeps (pipe_size,
queue_size, map_size, map_workers, cpu_workers), the memory workloads
(worker_rss, map_iter_rss) and cancel (concurrent.futures) are added,
mirrored one for one by bench/luamp_bench.lua.

Runs ONE workload and prints ONE line of JSON on stdout.  Pools are created
and warmed up (one trivial task) before the clock starts, except in
pool_start, whose subject is the pool lifecycle itself.  Start method is
'fork' (the Linux default up to Python 3.13; requested explicitly so the
figures do not change when the default moves to 'forkserver' in 3.14).

Units: per_op_us = microseconds per operation, ops_per_s = operations per
second, mb_per_s = MiB (2**20 bytes) of payload per second.
"""
import argparse
import gc
import json
import multiprocessing as mp
import os
import queue as queue_mod
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

CTX = mp.get_context("fork")
MIB = 1 << 20
now = time.perf_counter


# ---------------------------------------------------------------- task bodies
def ident(x):
    return x


def square(x):
    return x * x


def make_blob(i):
    return bytes([i & 0xFF]) * MIB


def cpu_task(n):
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def crashy(i):
    if i == 3:
        os._exit(1)
    return i


def warm_pool(nproc=2):
    # What the set-up left for the collector is collected now, not in the
    # timed part (mirrors the Lua side, where it matters more: Python's
    # reference counting frees most garbage at once).
    gc.collect()
    pool = CTX.Pool(nproc)
    pool.map(ident, range(nproc * 4), chunksize=1)  # make sure all workers are up
    return pool


# ------------------------------------------------------------------ workloads
def w_pool_start(n):
    n = n or 50
    t0 = now()
    for _ in range(n):
        pool = CTX.Pool(2)
        assert pool.apply(ident, (1,)) == 1
        pool.close()
        pool.join()
    dt = now() - t0
    return dict(n=n, seconds=dt, ms_per_op=dt / n * 1e3, per_op_us=dt / n * 1e6)


def w_apply_latency(n):
    n = n or 20_000
    with warm_pool() as pool:
        for i in range(200):
            pool.apply(ident, (i,))
        t0 = now()
        for i in range(n):
            pool.apply(ident, (i,))
        dt = now() - t0
    return dict(n=n, seconds=dt, per_op_us=dt / n * 1e6)


def w_apply_async_many(n):
    n = n or 100_000
    with warm_pool() as pool:
        t0 = now()
        rs = [pool.apply_async(square, (i,)) for i in range(n)]
        total = sum(r.get() for r in rs)
        dt = now() - t0
    assert total == sum(i * i for i in range(n))
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def _map(n, chunksize):
    with warm_pool() as pool:
        t0 = now()
        out = pool.map(square, range(n), chunksize=chunksize)
        dt = now() - t0
    assert len(out) == n and out[-1] == (n - 1) ** 2
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def w_map_small(n):
    # default chunksize = ceil(n / (4 * 2))
    return _map(n or 1_000_000, None)


def w_map_chunk1(n):
    return _map(n or 100_000, 1)


def w_imap_unordered(n):
    n = n or 200_000
    with warm_pool() as pool:
        t0 = now()
        total = sum(pool.imap_unordered(square, range(n), chunksize=64))
        dt = now() - t0
    assert total == sum(i * i for i in range(n))
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def w_map_large(n):
    # Literally pool.map(len, [b'x'*(1<<20)]*256).  NOTE: the list holds the
    # SAME object 256 times, and each chunk (default chunksize 32) is pickled
    # as one message, so pickle's memo sends the 1 MiB once per chunk: only
    # 8 MiB really cross the pipe.  mb_per_s counts the nominal 256 MiB.
    n = n or 256
    data = [b"x" * MIB] * n
    with warm_pool() as pool:
        t0 = now()
        out = pool.map(len, data)
        dt = now() - t0
    assert sum(out) == n * MIB
    return dict(n=n, seconds=dt, mb_per_s=n / dt, ops_per_s=n / dt,
                note="same object repeated: pickle memo sends 1 MiB per chunk")


def w_map_large_distinct(n):
    # Same as map_large but with n DISTINCT 1 MiB objects, so every byte is
    # really pickled and sent (what a msgpack-based transport must do).
    n = n or 256
    data = [bytes([i & 0xFF]) * MIB for i in range(n)]
    with warm_pool() as pool:
        t0 = now()
        out = pool.map(len, data)
        dt = now() - t0
    assert sum(out) == n * MIB
    return dict(n=n, seconds=dt, mb_per_s=n / dt, ops_per_s=n / dt)


def w_map_large_result(n):
    # pool.map(make_blob, range(256)): 1 MiB results come back to the parent.
    n = n or 256
    with warm_pool() as pool:
        t0 = now()
        out = pool.map(make_blob, range(n))
        dt = now() - t0
    assert len(out) == n and all(len(b) == MIB for b in out)
    return dict(n=n, seconds=dt, mb_per_s=n / dt, ops_per_s=n / dt)


def _producer(q, n, item):
    for i in range(n):
        q.put(i if item is None else item)


def _queue(n, item):
    q = CTX.Queue()
    p = CTX.Process(target=_producer, args=(q, n, item))
    gc.collect()   # the set-up's garbage, as in warm_pool
    t0 = now()
    p.start()
    for _ in range(n):
        q.get()
    dt = now() - t0
    p.join()
    assert p.exitcode == 0
    r = dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)
    if item is not None:
        r["mb_per_s"] = n * len(item) / MIB / dt
    return r


def w_queue_small(n):
    return _queue(n or 200_000, None)


def w_queue_1k(n):
    return _queue(n or 200_000, b"q" * 1024)


def _pipe_sender(conn, n):
    for i in range(n):
        conn.send(i)
    conn.close()


def _pipe_oneway(n, duplex):
    # Pipe(False) returns (reader, writer); Pipe(True) two duplex ends.
    reader, writer = CTX.Pipe(duplex)
    p = CTX.Process(target=_pipe_sender, args=(writer, n))
    gc.collect()   # the set-up's garbage, as in warm_pool
    t0 = now()
    p.start()
    writer.close()
    s = 0
    for _ in range(n):
        s += reader.recv()
    dt = now() - t0
    p.join()
    assert s == n * (n - 1) // 2
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6)


def w_pipe_small(n):
    # mp.Pipe() default is duplex=True, which on Linux is a socketpair.
    return _pipe_oneway(n or 200_000, True)


def w_pipe_small_simplex(n):
    # mp.Pipe(duplex=False): a real os.pipe().
    return _pipe_oneway(n or 200_000, False)


def _echo(conn):
    while True:
        x = conn.recv()
        if x is None:
            break
        conn.send(x)


def w_pipe_pingpong(n):
    n = n or 20_000
    a, b = CTX.Pipe()
    p = CTX.Process(target=_echo, args=(b,))
    p.start()
    for i in range(200):
        a.send(i)
        a.recv()
    t0 = now()
    for i in range(n):
        a.send(i)
        assert a.recv() == i
    dt = now() - t0
    a.send(None)
    p.join()
    return dict(n=n, seconds=dt, per_op_us=dt / n * 1e6)


# cpu_speedup: serial and parallel timings alternate CPU_ROUNDS times and
# each keeps its fastest, as on the luamp side (a shared VM's speed drifts
# within seconds).
CPU_ROUNDS = 3


def cpu_speedup(n, workers):
    n = n or 3_000_000
    items = [n] * 8
    ts = tp = float("inf")
    with warm_pool(workers) as pool:
        for _ in range(CPU_ROUNDS):
            t0 = now()
            serial = [cpu_task(x) for x in items]
            ts = min(ts, now() - t0)
            t0 = now()
            par = pool.map(cpu_task, items)
            tp = min(tp, now() - t0)
    assert par == serial
    sp = ts / tp
    return dict(n=n, items=8, workers=workers, seconds=tp, serial_s=ts,
                parallel_s=tp, speedup=sp,
                efficiency=sp / min(workers, len(os.sched_getaffinity(0))))


def w_cpu_speedup(n):
    return cpu_speedup(n, 2)


def _incr(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def w_value_lock(n):
    n = n or 10_000                       # per process
    v = CTX.Value("i", 0)
    procs = [CTX.Process(target=_incr, args=(v, n)) for _ in range(2)]
    t0 = now()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    dt = now() - t0
    ok = v.value == 2 * n
    # Same number of lock/increment ops in one process, uncontended.
    u = CTX.Value("i", 0)
    t1 = now()
    _incr(u, 2 * n)
    du = now() - t1
    return dict(n=2 * n, seconds=dt, ops_per_s=2 * n / dt, final=v.value,
                correct=ok, uncontended_ops_per_s=2 * n / du)


# Manager().dict(): every access is a round trip to the manager's server.
def _manager_dict(m, keys=1000):
    d = m.dict()
    d.update({i: i for i in range(keys)})
    return d


def w_manager_get(n):
    n = n or 100_000
    with CTX.Manager() as m:
        d = _manager_dict(m)
        t0 = now()
        for i in range(n):
            d[i % 1000]
        dt = now() - t0
    return dict(n=n, seconds=dt, per_op_us=dt / n * 1e6, ops_per_s=n / dt)


def w_manager_set(n):
    n = n or 100_000
    with CTX.Manager() as m:
        d = _manager_dict(m)
        t0 = now()
        for i in range(n):
            d[i % 1000] = i
        dt = now() - t0
    return dict(n=n, seconds=dt, per_op_us=dt / n * 1e6, ops_per_s=n / dt)


def _manager_incr(d, lock, n):
    for _ in range(n):
        with lock:
            d["n"] += 1


def w_manager_incr(n):
    n = n or 10_000                       # per process
    with CTX.Manager() as m:
        d, lock = m.dict(n=0), m.Lock()
        procs = [CTX.Process(target=_manager_incr, args=(d, lock, n)) for _ in range(2)]
        t0 = now()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        dt = now() - t0
        final = d["n"]
    return dict(n=2 * n, seconds=dt, ops_per_s=2 * n / dt, final=final, correct=final == 2 * n)


# The workers' gate in w_cancel: made before any executor forks them.
GATE = CTX.Event()


def _wait_gate():
    GATE.wait()
    return 0


def _double(x):
    return 2 * x


def w_cancel(n):
    """Future.cancel on n pending futures: the 2 workers are busy with tasks
    that wait on GATE, so the n futures submitted behind them wait (all but
    the few the executor already moved to its call queue, which count as
    running and cannot be cancelled)."""
    n = n or 100_000
    GATE.clear()
    gc.collect()
    with ProcessPoolExecutor(2, mp_context=CTX) as ex:
        blockers = [ex.submit(_wait_gate) for _ in range(2)]
        while not all(b.running() for b in blockers):
            time.sleep(0.001)
        t0 = now()
        futs = [ex.submit(_double, i) for i in range(n)]
        t1 = now()
        gc.collect()
        t2 = now()
        cancelled = sum(1 for f in futs if f.cancel())
        dt = now() - t2
        GATE.set()
    return dict(n=n, cancelled=cancelled, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6,
                submit_s=t1 - t0)


# ------------------------------------------------------------------- sweeps
# Throughput against message size (pipe, queue, map) and against the number
# of workers (map, cpu).  The runner picks n per size; both sides get the
# same n.  Messages are distinct (the index is in their first bytes), so no
# memo or cache can skip one; the same bytes as luamp_bench.lua's.
def message(i, size):
    head = b"%08d" % (i % 100_000_000)
    if size <= len(head):
        return head[:size]
    return head + b"x" * (size - len(head))


def _pipe_sized_sender(conn, msgs):
    for m in msgs:
        conn.send(m)
    conn.close()


def w_pipe_size(n, size=1024, workers=None):
    n = n or 10_000
    msgs = [message(i, size) for i in range(n)]
    reader, writer = CTX.Pipe(True)
    p = CTX.Process(target=_pipe_sized_sender, args=(writer, msgs))
    gc.collect()   # the set-up's garbage, as in warm_pool
    t0 = now()
    p.start()
    writer.close()
    got = 0
    for _ in range(n):
        got += len(reader.recv())
    dt = now() - t0
    p.join()
    assert got == n * size
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6,
                size=size, mb_per_s=n * size / MIB / dt)


def _sized_producer(q, msgs):
    for m in msgs:
        q.put(m)


def w_queue_size(n, size=1024, workers=None):
    n = n or 10_000
    msgs = [message(i, size) for i in range(n)]
    q = CTX.Queue()
    p = CTX.Process(target=_sized_producer, args=(q, msgs))
    gc.collect()   # the set-up's garbage, as in warm_pool
    t0 = now()
    p.start()
    got = 0
    for _ in range(n):
        got += len(q.get())
    dt = now() - t0
    p.join()
    assert p.exitcode == 0 and got == n * size
    return dict(n=n, seconds=dt, ops_per_s=n / dt, per_op_us=dt / n * 1e6,
                size=size, mb_per_s=n * size / MIB / dt)


def w_map_size(n, size=1024, workers=None):
    n = n or 10_000
    data = [message(i, size) for i in range(n)]
    with warm_pool() as pool:
        t0 = now()
        out = pool.map(len, data)
        dt = now() - t0
    assert sum(out) == n * size
    return dict(n=n, size=size, seconds=dt, ops_per_s=n / dt,
                per_op_us=dt / n * 1e6, mb_per_s=n * size / MIB / dt)


def w_map_workers(n, size=None, workers=2):
    # map_small with Pool(workers)
    n = n or 1_000_000
    with warm_pool(workers) as pool:
        t0 = now()
        out = pool.map(square, range(n))
        dt = now() - t0
    assert len(out) == n and out[-1] == (n - 1) ** 2
    return dict(n=n, workers=workers, seconds=dt, ops_per_s=n / dt,
                per_op_us=dt / n * 1e6)


def w_cpu_workers(n, size=None, workers=2):
    # cpu_speedup with Pool(workers); efficiency = speedup / min(workers, CPUs)
    return cpu_speedup(n, workers)


# ------------------------------------------------------------------- memory
def _kib(text, name):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def w_worker_rss(n, size=None, workers=None):
    # Private pages of each worker after Pool(2) ran one trivial task per
    # worker: what a worker costs beyond the pages it shares with the parent.
    with warm_pool(2) as pool:
        time.sleep(0.2)
        pids = [p.pid for p in pool._pool]
        privs, pss = [], 0
        for pid in pids:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                s = f.read()
            privs.append(_kib(s, "Private_Clean") + _kib(s, "Private_Dirty")
                         + _kib(s, "Private_Hugetlb"))
            pss = max(pss, _kib(s, "Pss"))
        with open("/proc/self/smaps_rollup") as f:
            parent = _kib(f.read(), "Rss")
    return dict(n=2, seconds=None, private_kib=max(privs),
                workers_private_kib=privs, worker_pss_kib=pss,
                parent_rss_kib=parent)


def w_map_iter_rss(n, size=None, workers=None):
    # imap over a generator of 10 M items (chunksize 1024); the parent's
    # peak RSS (VmHWM) at the end.
    n = n or 10_000_000
    with warm_pool(2) as pool:
        t0 = now()
        count = bad = 0
        for i, v in enumerate(pool.imap(square, (i for i in range(n)), chunksize=1024)):
            count += 1
            if v != i * i:
                bad += 1
        dt = now() - t0
    assert count == n and bad == 0
    with open("/proc/self/status") as f:
        hwm = _kib(f.read(), "VmHWM")
    return dict(n=n, seconds=dt, ops_per_s=n / dt, vmhwm_kib=hwm,
                vmhwm_mib=hwm / 1024)


# ----------------------------------------------------- crash behaviour probes
# Each probe is run as its own process under `timeout 20` by w_worker_crash.
def c_pool_map():
    with CTX.Pool(2) as pool:
        out = pool.map(crashy, range(8))
    return f"returned {out!r}"


def c_pool_apply():
    with CTX.Pool(2) as pool:
        out = pool.apply(crashy, (3,))
    return f"returned {out!r}"


def c_pool_get_timeout():
    with CTX.Pool(2) as pool:
        r = pool.map_async(crashy, range(8))
        try:
            r.get(timeout=5)
            msg = "get() returned"
        except mp.TimeoutError:
            msg = "map_async().get(timeout=5) raised TimeoutError"
        after = pool.apply(ident, (42,))
        return msg + f"; pool still usable afterwards: apply -> {after}"


def c_executor_map():
    t0 = now()
    try:
        with ProcessPoolExecutor(2, mp_context=CTX) as ex:
            out = list(ex.map(crashy, range(8)))
        return f"returned {out!r}"
    except BrokenProcessPool as e:
        dt = now() - t0
        return f"raised BrokenProcessPool after {dt:.3f}s: {e}"


def c_executor_submit():
    with ProcessPoolExecutor(2, mp_context=CTX) as ex:
        f = ex.submit(crashy, 3)
        try:
            f.result()
            return "returned"
        except BrokenProcessPool as e:
            msg = f"future.result() raised BrokenProcessPool: {e}"
        try:
            ex.submit(ident, 1).result()
            msg += "; executor still usable"
        except BrokenProcessPool:
            msg += "; later submit() also raises BrokenProcessPool (executor is dead)"
        return msg


def _die(q_or_conn):
    os._exit(1)


def c_queue_get():
    q = CTX.Queue()
    p = CTX.Process(target=_die, args=(q,))
    p.start()
    x = q.get()          # producer died without putting anything
    return f"returned {x!r}"


def c_pipe_recv_open():
    a, b = CTX.Pipe()
    p = CTX.Process(target=_die, args=(b,))
    p.start()
    x = a.recv()          # parent still holds b: no EOF ever arrives
    return f"returned {x!r}"


def c_pipe_recv_closed():
    a, b = CTX.Pipe()
    p = CTX.Process(target=_die, args=(b,))
    p.start()
    b.close()             # parent drops its copy of the child's end
    try:
        x = a.recv()
        return f"returned {x!r}"
    except EOFError:
        return "recv() raised EOFError"


CRASH_PROBES = {
    "pool_map": c_pool_map,
    "pool_apply": c_pool_apply,
    "pool_get_timeout": c_pool_get_timeout,
    "executor_map": c_executor_map,
    "executor_submit": c_executor_submit,
    "queue_get_dead_producer": c_queue_get,
    "pipe_recv_peer_dead_end_open": c_pipe_recv_open,
    "pipe_recv_peer_dead_end_closed": c_pipe_recv_closed,
}


def _pgroup_members(pgid):
    left = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                left.append(int(d))
    return left


def w_worker_crash(n):
    limit = n or 20
    res = {}
    for name in CRASH_PROBES:
        cmd = ["timeout", str(limit), sys.executable, os.path.abspath(__file__),
               "_crash", name]
        t0 = now()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        out, err = p.communicate()
        dt = now() - t0
        time.sleep(0.2)
        left = _pgroup_members(p.pid)  # timeout(1) leads its own process group
        if p.returncode == 124:
            what = f"HANGS (killed by timeout after {limit}s)"
        else:
            what = out.strip() or "no output"
        errlines = [l for l in err.strip().splitlines() if l.strip()]
        res[name] = dict(rc=p.returncode, seconds=round(dt, 3), behaviour=what,
                         stderr_tail=errlines[-1] if errlines else "",
                         leftover_processes=len(left))
    return dict(n=limit, seconds=None, probes=res)


WORKLOADS = {k[2:]: v for k, v in globals().items() if k.startswith("w_")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", nargs="?")
    ap.add_argument("probe", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0,
                    help="main count (items, calls, iterations; seconds for worker_crash)")
    ap.add_argument("--size", type=int, default=0,
                    help="message size in bytes (pipe_size, queue_size, map_size)")
    ap.add_argument("--workers", type=int, default=0,
                    help="pool size (map_workers, cpu_workers)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list or not a.workload:
        print("\n".join(WORKLOADS))
        return
    if a.workload == "_crash":
        print(CRASH_PROBES[a.probe](), flush=True)
        return
    if a.workload not in WORKLOADS:
        sys.exit(f"unknown workload {a.workload!r}; try --list")
    extra = {}
    if a.size:
        extra["size"] = a.size
    if a.workers:
        extra["workers"] = a.workers
    r = WORKLOADS[a.workload](a.n, **extra)
    out = {"workload": a.workload}
    out.update(r)
    out["python"] = sys.version.split()[0]
    out["start_method"] = CTX.get_start_method()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
