# SPDX-License-Identifier: MIT
# man.sh: luamp(1) and luamp(3) render without a warning, and say what
# the program and the header offer: every option of `luamp -h`, the
# environment it reads, every function luamp.h declares.
. "$top_srcdir/tests/tap.sh"

man1="$top_srcdir/man/luamp.1"
man3="$top_srcdir/man/luamp.3"

if ! command -v groff >/dev/null; then
    skip "the man pages render without warnings" "groff not found (install the Debian package groff-base)"
else
    for page in "$man1" "$man3"; do
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

# Every function luamp.h declares is in luamp(3).
for fn in $(sed -n 's/^[A-Za-z_ ]*[ *]\(lua[a-z_]*\)(.*/\1/p' "$top_srcdir/src/luamp.h"); do
    if grep -q "$fn" "$man3"; then tap_report 0 "luamp(3) documents $fn"
    else tap_report 1 "luamp(3) documents $fn" "luamp.h declares $fn"; fi
done

done_testing
