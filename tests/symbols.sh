# SPDX-License-Identifier: MIT
# symbols.sh: the shared library exports exactly the calls luamp.h
# declares, and the Lua module only luaopen_luamp: the codec, the queues
# and the process plumbing stay internal, free to change.
. "$top_srcdir/tests/tap.sh"

lib="$LUAMP_LIBDIR/libluamp.so"
mod="$LUAMP_MODULE_DIR/luamp.so"
exported() { nm -D --defined-only "$1" | awk '$2 ~ /^[TDBRVW]$/ { print $3 }' | sort; }

if ! command -v nm >/dev/null; then
    skip "exported symbols" "nm not found (binutils)"
    done_testing
fi
declared=$(sed -n 's/^[A-Za-z_ ]*[ *]\(lua[a-z_]*\)(.*/\1/p' "$top_srcdir/src/luamp.h" | sort)
like "$declared" "luamp_newstate" "luamp.h's calls are found"
if [ -f "$lib" ]; then
    is "$(exported "$lib")" "$declared" "libluamp.so exports exactly the calls luamp.h declares"
else
    skip "libluamp.so exports exactly the calls luamp.h declares" "no shared library built (--disable-shared)"
fi
is "$(exported "$mod")" "luaopen_luamp" "the module luamp.so exports only luaopen_luamp"

done_testing
