# SPDX-License-Identifier: MIT
# man.sh: luamp(1), luamp(3) and luamp-mpi(1) render without a warning,
# and say what the programs and the header offer: every option of
# `luamp -h` (and those luamp-mpi adds), the environment they read, every
# function luamp.h declares, what the cluster gives and how it fails.
. "$top_srcdir/tests/tap.sh"

man1="$top_srcdir/man/luamp.1"
man3="$top_srcdir/man/luamp.3"
manmpi="$top_srcdir/man/luamp-mpi.1"

if ! command -v groff >/dev/null; then
    skip "the man pages render without warnings" "groff not found (install the Debian package groff-base)"
else
    for page in "$man1" "$man3" "$manmpi"; do
        warnings=$(groff -ww -z -man "$page" 2>&1)
        is "$warnings" "" "$(basename "$page") renders without a warning (groff -ww -z -man)"
        text=$(groff -man -Tutf8 "$page" 2>/dev/null | sed 's/.\x08//g')
        like "$text" "NAME" "$(basename "$page") renders to text with its sections"
    done
fi

# Every option the program lists in -h is in the page, as roff writes it
# (\- for the dash).
for opt in $("$LUAMP" -h | sed -n 's/^  \(-[A-Za-z-]*\).*/\1/p' | sort -u); do
    roff=$(printf '%s' "$opt" | sed 's/-/\\\\-/g')
    if grep -Eq "^\.(B|BI|BR) $roff( |$)" "$man1"; then
        tap_report 0 "luamp(1) documents $opt"
    else
        tap_report 1 "luamp(1) documents $opt" "no .B/.BI line for $opt in man/luamp.1"
    fi
done
for var in LUA_INIT LUA_INIT_5_4 LUAMP_LOG LUAMP_EXE; do
    if grep -q "$var" "$man1"; then tap_report 0 "luamp(1) documents $var"
    else tap_report 1 "luamp(1) documents $var"; fi
done
like "$(cat "$man1")" "^\.SH EXIT STATUS" "luamp(1) has an EXIT STATUS section"
like "$(cat "$man1")" "^\.SH EXAMPLES" "luamp(1) has EXAMPLES"

# luamp-mpi(1): -j (workers per rank), any option luamp-mpi adds to
# luamp's (luamp(1) documents the others), mp.cluster(), the failures.
documents() { # page name pattern...
    local page=$1 name=$2 p
    shift 2
    for p in "$@"; do
        if ! grep -Eq -- "$p" "$page"; then
            tap_report 1 "$name" "no line of $(basename "$page") matches: $p"
            return
        fi
    done
    tap_report 0 "$name"
}
documents "$manmpi" "luamp-mpi(1) documents -j as the workers of each rank" '^\.BI \\-j ' 'workers of each rank'
if [ -x "${LUAMP_MPI-}" ]; then
    for opt in $("$LUAMP_MPI" -h | sed -n 's/^  \(-[A-Za-z-]*\).*/\1/p' | sort -u); do
        "$LUAMP" -h | grep -q "^  $opt[ =]" && continue
        roff=$(printf '%s' "$opt" | sed 's/-/\\\\-/g')
        documents "$manmpi" "luamp-mpi(1) documents $opt, which luamp-mpi adds" "^\.(B|BI|BR) $roff( |\$)"
    done
fi
documents "$manmpi" "luamp-mpi(1) documents mp.cluster() and its fields" 'mp\.cluster\(\)' 'ranks = ' 'hosts = ' 'workers = '
documents "$manmpi" "luamp-mpi(1) says what happens when a worker, a task, mpirun or a rank fails" \
    '"worker_lost"' '"task_timeout"' '"interrupted"' 'whole rank'
documents "$manmpi" "luamp-mpi(1) says that luamp objects cannot cross hosts" '"serialize"' 'cannot cross hosts'
documents "$manmpi" "luamp-mpi(1) documents OMPI_COMM_WORLD_RANK" 'OMPI_COMM_WORLD_RANK'
documents "$manmpi" "luamp-mpi(1) has EXIT STATUS and EXAMPLES" '^\.SH EXIT STATUS' '^\.SH EXAMPLES'
documents "$man1" "luamp(1) refers to luamp-mpi(1)" '^\.BR luamp-mpi \(1\)'

# Every function luamp.h declares is in luamp(3).
for fn in $(sed -n 's/^[A-Za-z_ ]*[ *]\(lua[a-z_]*\)(.*/\1/p' "$top_srcdir/src/luamp.h"); do
    if grep -q "$fn" "$man3"; then tap_report 0 "luamp(3) documents $fn"
    else tap_report 1 "luamp(3) documents $fn" "luamp.h declares $fn"; fi
done

done_testing
