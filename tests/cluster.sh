# SPDX-License-Identifier: MIT
# cluster.sh: luamp-mpi under mpirun on this host (3 ranks on the loopback):
# the Lua scripts of tests/cluster/ run on rank 0 and their TAP is relayed
# here (tests/cluster/lib.sh), each run bounded; a failed run shows every
# rank's stderr.  Then luamp-mpi and luamp started without mpirun.  The
# whole is skipped, saying why, when luamp was built without MPI or
# mpirun is missing.
. "$top_srcdir/tests/tap.sh"
. "$top_srcdir/tests/cluster/lib.sh"

dir="$top_srcdir/tests/cluster"
reason=$(cluster_skip_reason)
if [ -n "$reason" ]; then
    for s in "pool.lua (3 ranks)" "workers.lua (-j 2, 3 ranks)" "workers.lua (1 rank)" \
        "executor.lua (3 ranks)" "faults.lua (3 ranks)" "parts.lua (3 ranks)" "nompi.lua (no mpirun)"; do
        skip "cluster: $s" "$reason"
    done
    done_testing
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run NAME NRANKS [luamp-mpi options] SCRIPT [args]: one script under
# mpirun, its TAP relayed, then no process of it left.  The script gets a
# scratch directory first.
run() {
    local name=$1 n=$2 rc
    shift 2
    mkdir -p "$tmp/scratch-$name"
    local opts=
    while [ $# -gt 0 ]; do
        case $1 in -*) opts="$opts $1 $2"; shift 2 ;; *) break ;; esac
    done
    local script=$1
    shift
    # shellcheck disable=SC2086
    mpi_run "$tmp/$name" "$n" "$LUAMP_MPI" $opts "$dir/$script" "$tmp/scratch-$name" "$@"
    rc=$?
    tap_relay "$name" "$tmp/$name" "$rc"
    check_gone "$name" "$tmp/$name"
}

run pool.lua 3 pool.lua 3
# (stderr is a file: map's progress = true draws nothing, as in luamp)
if [ -f "$tmp/pool.lua/rank/rank.0/stderr" ]; then
    cr=$(tr -cd '\r' < "$tmp/pool.lua/rank/rank.0/stderr" | wc -c)
    is "$cr" 0 "pool.lua: progress = true draws nothing on a stderr that is not a terminal"
fi
run workers-j2 3 -j 2 workers.lua 3 2
run workers-1rank 1 workers.lua 1 cpus
run executor.lua 3 executor.lua 3
run faults.lua 3 faults.lua 3
# (parts of 700 bytes: the splitting of messages over 1 GiB, in small)
LUAMP_MPI_PART=700 run parts.lua 3 parts.lua 3

# Not under mpirun: luamp-mpi is luamp (-j N is the pool size), and so is
# luamp itself; no supervisor, no MPI.
direct() {
    local name=$1 rc
    shift
    run_direct "$tmp/$name" "$@"
    rc=$?
    tap_relay "$name" "$tmp/$name" "$rc"
    check_gone "$name" "$tmp/$name"
}
direct "nompi.lua (luamp-mpi)" "$LUAMP_MPI" "$dir/nompi.lua" cpus
direct "nompi.lua (luamp-mpi -j 3)" "$LUAMP_MPI" -j 3 "$dir/nompi.lua" 3
direct "nompi.lua (luamp)" "$LUAMP" "$dir/nompi.lua" cpus

done_testing
