# SPDX-License-Identifier: MIT
# big_messages.sh: messages over 2 GiB.  tests/over_2gib.lua (a Pipe, a
# Pool's task and result; strings of 4 GiB refused) with luamp: messages
# of 4.5 GiB when the machine has 20 GiB free (MemAvailable), of 2 GiB +
# 4 MiB with 10 GiB; then tests/cluster/over_2gib.lua under mpirun -n 2
# (a task and a result of 2 GiB + 2 MiB crossing ranks, in parts) when
# luamp-mpi was built and 16 GiB are free.  Else each is skipped, saying
# why.  Copies of GiBs take seconds: where memory copies at 0.4 GB/s
# (seen here) the runs take minutes, so they are bounded at 15.
. "$top_srcdir/tests/tap.sh"
. "$top_srcdir/tests/cluster/lib.sh"

MPI_TIMEOUT=890
CLUSTER_TIMEOUT=900
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# GiB of memory free for use now
avail_gib() {
    awk '/^MemAvailable:/ { print int($2 / 1048576) }' /proc/meminfo
}

# run NAME DIR NEED_GIB SKIP_REASON CMD...: CMD (which leaves its output
# in DIR) and its TAP relayed, when NEED_GIB are free and there is no
# SKIP_REASON
run() {
    local name=$1 dir=$2 need=$3 reason=$4 have rc
    shift 4
    have=$(avail_gib)
    if [ -z "$reason" ] && [ "${have:-0}" -lt "$need" ]; then
        reason="needs $need GiB of free memory, this machine has ${have:-?} GiB"
    fi
    if [ -n "$reason" ]; then
        skip "$name" "$reason"
        return
    fi
    "$@"
    rc=$?
    tap_relay "$name" "$dir" "$rc"
    check_gone "$name" "$dir"
}

if [ "$(avail_gib)" -ge 20 ]; then
    run over_2gib.lua "$tmp/one" 20 "" \
        run_direct "$tmp/one" "$LUAMP" "$top_srcdir/tests/over_2gib.lua" 1152
else
    run over_2gib.lua "$tmp/one" 10 "" \
        run_direct "$tmp/one" "$LUAMP" "$top_srcdir/tests/over_2gib.lua" 513
fi
mkdir -p "$tmp/scratch"
run "cluster/over_2gib.lua (2 ranks)" "$tmp/two" 16 "$(cluster_skip_reason)" \
    mpi_run "$tmp/two" 2 "$LUAMP_MPI" "$top_srcdir/tests/cluster/over_2gib.lua" "$tmp/scratch" 2

done_testing
