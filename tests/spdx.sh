# SPDX-License-Identifier: MIT
# spdx.sh: every source file says its licence in its first lines (MIT,
# as COPYING says), so a file copied out of the project still does.
. "$top_srcdir/tests/tap.sh"

cd "$top_srcdir" || exit 1
missing=
n=0
for f in configure.ac Makefile.am $(find src lua tests bench fuzz tools examples -type f \
        \( -name '*.c' -o -name '*.h' -o -name '*.lua' -o -name '*.sh' -o -name '*.py' \) \
        -not -path 'fuzz/corpus/*' -not -path 'fuzz/regressions/*' -not -name 'luamp_lua.c' 2>/dev/null | sort); do
    n=$((n + 1))
    head -3 "$f" | grep -q 'SPDX-License-Identifier: MIT' || missing="$missing $f"
done
[ "$n" -gt 50 ] && tap_report 0 "the source files are found ($n)" || tap_report 1 "the source files are found ($n)"
is "$missing" "" "every source file has an SPDX-License-Identifier: MIT line at its top"
like "$(head -1 COPYING)" "^MIT License$" "COPYING is the MIT licence"
done_testing
