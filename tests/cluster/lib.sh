# SPDX-License-Identifier: MIT
# cluster/lib.sh: what the cluster tests (tests/cluster*.sh) share, sourced
# after tests/tap.sh.  They run luamp-mpi under mpirun, bounded twice
# (mpirun --timeout, and coreutils timeout around it), and read what each
# rank wrote from the files of mpirun's --output-filename:
#
#   cluster_skip_reason          why this build cannot run them (empty: it can)
#   mpi_run DIR N ARGS...        mpirun -n N (on the loopback unless MPI_NET
#                                says otherwise), ARGS after its own options
#                                (e.g. "$LUAMP_MPI" script.lua); rank
#                                R's output in DIR/rank/rank.R/std{out,err}, mpirun's
#                                own in DIR/mpirun.{out,err}; returns its status
#   tap_relay NAME DIR STATUS    rank 0's TAP (DIR/rank/rank.0/stdout), renumbered
#                                into this test's, its names prefixed with
#                                NAME; a run that did not end in a full plan
#                                and status 0 (1 after failed checks) adds a
#                                failure, and any failure shows every rank's
#                                stderr
#   show_ranks DIR               that stderr, as TAP comments
#   run_direct DIR CMD...        CMD without mpirun, bounded, its output where
#                                mpi_run puts rank 0's
#   cluster_procs MARK           pids of the processes whose command line or
#                                environment holds MARK, for "nothing is left"
#   wait_gone MARK TENTHS        waits for none to be left; prints those left
#   check_gone NAME DIR          a TAP check that none of DIR's run is left
#
# Every run marks its processes: LUAMP_TEST_MARK=luamp-cluster-test-PID-N
# in mpirun's environment (DIR/mark) reaches every rank and every worker,
# and nothing else on the machine.
#
# mpirun's environment reaches the ranks it starts on this host; LUA_PATH
# and the sanitizers' options are named with -x all the same, for ranks
# started elsewhere (tests/cluster_hosts.sh).

# How the ranks talk (one word a line): by default, every rank on this
# host, over the loopback.  MPI_PREFIX: words before mpirun (entering a
# namespace: tests/cluster_hosts.sh).
MPI_NET=${MPI_NET:-"--mca
btl
self,vader,tcp
--mca
btl_tcp_if_include
lo
--mca
oob_tcp_if_include
lo"}
MPI_PREFIX=${MPI_PREFIX:-}

# In a --enable-sanitizers build, LeakSanitizer finds at exit what Open
# MPI allocated and kept; tests/lsan-mpi.supp suppresses the leaks whose
# allocation has an MPI library on its stack.  Many were allocated in MPI
# components that MPI_Finalize has unloaded by then, where the fast
# unwinder (frame pointers) stops: the slow one follows those stacks down
# into libmpi.  It makes each allocation dearer; only these tests use it.
if [ -n "${SANITIZERS-}" ]; then
    ASAN_OPTIONS="${ASAN_OPTIONS-}:fast_unwind_on_malloc=0"
    export ASAN_OPTIONS
fi

# Seconds: mpirun ends a wedged job after MPI_TIMEOUT; timeout(1) kills
# mpirun itself CLUSTER_TIMEOUT seconds after it started.  (Bounds for a
# hang, not expectations: a run takes seconds.  Twice as long in a
# sanitized build, which runs several times slower.)
if [ -n "${SANITIZERS-}" ]; then
    MPI_TIMEOUT=${MPI_TIMEOUT:-100}
    CLUSTER_TIMEOUT=${CLUSTER_TIMEOUT:-110}
else
    MPI_TIMEOUT=${MPI_TIMEOUT:-50}
    CLUSTER_TIMEOUT=${CLUSTER_TIMEOUT:-60}
fi

cluster_skip_reason() {
    if [ "${HAVE_MPI-}" != yes ]; then
        echo "luamp was configured without MPI (install the Debian package libopenmpi-dev and configure again)"
    elif [ -z "${MPIRUN-}" ] || ! [ -x "$MPIRUN" ]; then
        echo "mpirun was not found when luamp was configured (install the Debian package openmpi-bin)"
    elif ! [ -x "${LUAMP_MPI-}" ]; then
        echo "${LUAMP_MPI:-luamp-mpi} was not built"
    elif ! command -v timeout >/dev/null; then
        echo "timeout (coreutils) was not found"
    fi
}

# mpirun's options that every run takes: root may run it, the ranks' output
# to files, environment for ranks on other hosts.
mpi_common_opts() {
    local v
    [ "$(id -u)" = 0 ] && printf '%s\n' --allow-run-as-root
    printf '%s\n' --timeout "$MPI_TIMEOUT" --oversubscribe
    for v in LUAMP_TEST_MARK LUA_PATH ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS; do
        eval "[ -n \"\${$v+set}\" ]" && printf '%s\n' -x "$v"
    done
}

cluster_runs=0
new_run_dir() {
    rm -rf "$1"
    mkdir -p "$1/rank/rank.0"
    cluster_runs=$((cluster_runs + 1))
    echo "luamp-cluster-test-$$-$cluster_runs" > "$1/mark"
}

mpi_run() {
    local dir=$1 n=$2 rc
    shift 2
    new_run_dir "$dir"
    local IFS='
'
    # shellcheck disable=SC2046
    LUAMP_TEST_MARK=$(cat "$dir/mark") \
    timeout -k 5 "$CLUSTER_TIMEOUT" $MPI_PREFIX "$MPIRUN" $(LUAMP_TEST_MARK=x mpi_common_opts) -n "$n" \
        $MPI_NET --output-filename "$dir/rank:nojobid,nocopy" \
        "$@" > "$dir/mpirun.out" 2> "$dir/mpirun.err" < /dev/null
    rc=$?
    echo "$rc" > "$dir/status"
    return $rc
}

run_direct() {
    local dir=$1 rc
    shift
    new_run_dir "$dir"
    LUAMP_TEST_MARK=$(cat "$dir/mark") timeout -k 5 "$CLUSTER_TIMEOUT" "$@" \
        > "$dir/rank/rank.0/stdout" 2> "$dir/rank/rank.0/stderr" < /dev/null
    rc=$?
    echo "$rc" > "$dir/status"
    return $rc
}

show_ranks() {
    local dir=$1 f
    for f in "$dir"/rank/*/stderr "$dir"/mpirun.err; do
        [ -f "$f" ] || continue
        echo "# ---- ${f#"$dir"/}:"
        sed 's/^/#   /' "$f"
    done
    # (what the other ranks and mpirun printed on stdout too: nothing is
    # expected there, so anything is a clue)
    for f in "$dir"/rank/*/stdout "$dir"/mpirun.out; do
        case $f in "$dir"/rank/rank.0/stdout) continue;; esac
        [ -s "$f" ] || continue
        echo "# ---- ${f#"$dir"/}:"
        sed 's/^/#   /' "$f"
    done
}

tap_relay() {
    local name=$1 dir=$2 status=$3 out="$2/rank/rank.0/stdout"
    local line plan="" seen=0 failed_before=$tap_failed
    if [ -f "$out" ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            case $line in
                "ok "*|"not ok "*)
                    local verdict=ok rest
                    case $line in "not ok "*) verdict="not ok"; rest=${line#not ok };; *) rest=${line#ok };; esac
                    rest=$(printf '%s' "$rest" | sed 's/^[0-9]*//; s/^ *-\{0,1\} *//')
                    seen=$((seen + 1))
                    tap_n=$((tap_n + 1))
                    echo "$verdict $tap_n - $name: $rest"
                    [ "$verdict" = ok ] || tap_failed=$((tap_failed + 1))
                    ;;
                1..*) plan=${line#1..} ;;
                "#"*) echo "$line" ;;
                *) echo "# (rank 0) $line" ;;
            esac
        done < "$out"
    fi
    # (exit status 1 with failed checks: tests/tap.lua's t.done says so)
    if [ -n "$plan" ] && [ "$plan" = "$seen" ] && { [ "$status" = 0 ] ||
            { [ "$status" = 1 ] && [ "$tap_failed" != "$failed_before" ]; }; }; then
        tap_report 0 "$name: ran to its end ($seen checks, exit status $status)"
    else
        local why="exit status $status"
        [ "$status" = 124 ] || [ "$status" = 137 ] && why="$why (killed by timeout after ${CLUSTER_TIMEOUT}s)"
        [ "$status" = 110 ] && why="$why (mpirun --timeout $MPI_TIMEOUT)"
        if [ -z "$plan" ]; then why="$why, no plan after $seen checks"
        elif [ "$plan" != "$seen" ]; then why="$why, plan 1..$plan but $seen checks"; fi
        tap_report 1 "$name: ran to its end" "$why"
    fi
    [ "$tap_failed" = "$failed_before" ] || show_ranks "$dir"
}

# pids (one a line) of the processes whose command line or environment
# holds $1 (the test's shell never has it in its environment; the grep
# that looks for it is given a pattern that does not match itself)
cluster_procs() {
    local pat
    pat=$(printf '%s' "$1" | sed 's/^\(.\)/[\1]/')
    grep -lsa -e "$pat" /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null |
        sed -n 's|^/proc/\([0-9]*\)/.*|\1|p' | sort -un
}

wait_gone() {
    local i=0 left
    while :; do
        left=$(cluster_procs "$1")
        [ -z "$left" ] && return 0
        [ "$i" -ge "$2" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    ps -o pid=,ppid=,stat=,args= -p "$(echo $left | tr ' ' ',')" 2>/dev/null
    return 1
}

check_gone() {
    local left
    left=$(wait_gone "$(cat "$2/mark")" 50)
    is "$left" "" "$1: no process of the run is left (rank, supervisor or worker)"
}
