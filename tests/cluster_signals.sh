# SPDX-License-Identifier: MIT
# cluster_signals.sh: a luamp-mpi job interrupted or cut short ends at once
# and leaves nothing.  While a map runs on every rank (tests/cluster/hang.lua,
# 3 ranks): Ctrl-C (SIGINT) or SIGTERM to mpirun makes rank 0 raise
# "interrupted" and mpirun exit non-zero within seconds; a rank killed
# with SIGKILL (a supervisor, or rank 0 itself) ends the job non-zero
# within seconds.  Either way no process of the job (rank, supervisor,
# worker) is left.  Skipped, saying why, without MPI or mpirun.
. "$top_srcdir/tests/tap.sh"
. "$top_srcdir/tests/cluster/lib.sh"

script="$top_srcdir/tests/cluster/hang.lua"
# (seconds: the job must end this soon after the signal or the kill)
ENDS_WITHIN=20

reason=$(cluster_skip_reason)
if [ -z "$reason" ] && ! env --default-signal=INT true 2>/dev/null; then
    reason="env --default-signal (coreutils 8.31 or later) is missing"
fi
if [ -n "$reason" ]; then
    for s in "SIGINT to mpirun" "SIGTERM to mpirun" "rank 2 killed by SIGKILL" "rank 0 killed by SIGKILL"; do
        skip "cluster: $s" "$reason"
    done
    done_testing
fi

tmp=$(mktemp -d)
marks=
cleanup() {
    # (a failed check must not leave a job behind either)
    for m in $marks; do
        for p in $(cluster_procs "$m"); do kill -KILL "$p" 2>/dev/null; done
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# start_job DIR: mpirun -n 3 of hang.lua in the background, in a session
# of its own and with SIGINT at its default (a background command's is
# ignored), as a terminal's foreground job would be; DIR/pid is mpirun's
# pid, DIR/status its exit status once it has exited.
start_job() {
    local dir=$1
    new_run_dir "$dir"
    mkdir -p "$dir/scratch"
    marks="$marks $(cat "$dir/mark")"
    local IFS='
'
    # shellcheck disable=SC2046
    (
        LUAMP_TEST_MARK=$(cat "$dir/mark") setsid env --default-signal=INT "$MPIRUN" \
            $(LUAMP_TEST_MARK=x mpi_common_opts) -n 3 $MPI_NET \
            --output-filename "$dir/rank:nojobid,nocopy" \
            "$LUAMP_MPI" "$script" "$dir/scratch" 3 > "$dir/mpirun.out" 2> "$dir/mpirun.err" < /dev/null &
        echo $! > "$dir/pid"
        wait $!
        echo $? > "$dir/status.tmp"
        mv "$dir/status.tmp" "$dir/status"
    ) &
}

# wait_file FILE TENTHS [DIR]: true once FILE exists; false after TENTHS
# tenths of a second, or as soon as DIR's job has exited
wait_file() {
    local i=0
    while [ ! -e "$1" ]; do
        [ "$i" -ge "$2" ] && return 1
        [ -n "${3-}" ] && [ -e "$3/status" ] && [ ! -e "$1" ] && return 1
        sleep 0.1
        i=$((i + 1))
    done
}

# the pid of rank $2 of the job in $1: a process of the job whose parent
# is mpirun and whose OMPI_COMM_WORLD_RANK is $2
rank_pid() {
    local p mpirun
    mpirun=$(cat "$1/pid")
    for p in $(cluster_procs "$(cat "$1/mark")"); do
        [ "$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null)" = "$mpirun" ] || continue
        tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && { echo "$p"; return; }
    done
}

# scenario NAME HOW: HOW is "INT" or "TERM" (to mpirun), or "rank R" (SIGKILL)
scenario() {
    local name=$1 how=$2 dir="$tmp/$3" target status failed_before=$tap_failed
    start_job "$dir"
    wait_file "$dir/pid" 100
    if ! wait_file "$dir/scratch/ready" 600 "$dir"; then
        if [ -e "$dir/status" ]; then
            tap_report 1 "$name: the map runs on every rank before the signal" \
                "the job ended first, with status $(cat "$dir/status"): nothing to interrupt"
            check_gone "$name" "$dir"
            show_ranks "$dir"
            return
        fi
        tap_report 1 "$name: the map runs on every rank before the signal" "not after 60 s"
    else
        tap_report 0 "$name: the map runs on every rank before the signal"
    fi
    case $how in
        rank*) target=$(rank_pid "$dir" "${how#rank }")
            if [ -n "$target" ]; then
                tap_report 0 "$name: its process is found"
                kill -KILL "$target"
            else
                tap_report 1 "$name: its process is found" "no process of the job with OMPI_COMM_WORLD_RANK=${how#rank } under mpirun"
            fi ;;
        *) kill -"$how" "$(cat "$dir/pid")" ;;
    esac
    if wait_file "$dir/status" $((ENDS_WITHIN * 10)); then
        tap_report 0 "$name: mpirun exits within ${ENDS_WITHIN}s"
    else
        # (what is left, and where mpirun waits)
        tap_report 1 "$name: mpirun exits within ${ENDS_WITHIN}s" "$(
            ps -o pid=,ppid=,stat=,wchan:24=,args= -p "$(cat "$dir/pid")" --ppid "$(cat "$dir/pid")" 2>/dev/null |
                cut -c1-160
            if command -v gdb >/dev/null; then
                gdb -p "$(cat "$dir/pid")" -batch -ex 'thread apply all bt 8' 2>/dev/null | grep -E '^(#|Thread)'
            fi)"
        kill -KILL "$(cat "$dir/pid")" 2>/dev/null
        wait_file "$dir/status" 100
    fi
    status=$(cat "$dir/status" 2>/dev/null)
    if [ -n "$status" ] && [ "$status" != 0 ]; then
        tap_report 0 "$name: mpirun exits non-zero ($status)"
    else
        tap_report 1 "$name: mpirun exits non-zero" "status: ${status:-none}"
    fi
    case $how in
        INT|TERM)
            is "$(cat "$dir/scratch/caught" 2>/dev/null)" "interrupted" \
                "$name: rank 0's map raises an error of kind interrupted"
            # (not checked: that rank 0 reports it on stderr; mpirun, which
            # ends the job, may stop forwarding its output first)
            ;;
    esac
    check_gone "$name" "$dir"
    [ "$tap_failed" = "$failed_before" ] || show_ranks "$dir"
}

scenario "SIGINT to mpirun" INT int
scenario "SIGTERM to mpirun" TERM term
scenario "rank 2 killed by SIGKILL" "rank 2" kill2
scenario "rank 0 killed by SIGKILL" "rank 0" kill0

done_testing
