# SPDX-License-Identifier: MIT
# stock_lua.sh: require "luamp" from the stock lua5.4 interpreter, loading
# the C module luamp.so from package.cpath (what an installed luamp offers).
. "$top_srcdir/tests/tap.sh"

if [ -n "$SANITIZERS" ]; then
    skip "require \"luamp\" from stock lua5.4" \
        "sanitizer build: the ASan runtime cannot be loaded into an uninstrumented lua5.4 by dlopen"
    done_testing
fi
if [ -z "$LUA54" ] || [ ! -x "$LUA54" ]; then
    skip "require \"luamp\" from stock lua5.4" "lua5.4 not found (install the Debian package lua5.4)"
    done_testing
fi

tab=$(printf '\t')
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
LUA_CPATH="$LUAMP_MODULE_DIR/?.so;;" "$LUA54" -e '
    local mp = require "luamp"
    local n = mp.cpu_count()
    print(package.searchpath("luamp", package.cpath))
    print(mp.version)
    print(math.type(n), n > 0)' >"$tmp/out" 2>"$tmp/err"
rc=$?
out=$(cat "$tmp/out")
is "$rc:$(cat "$tmp/err")" "0:" "stock lua5.4 runs require \"luamp\" and the calls without error"
is "$(printf '%s\n' "$out" | sed -n 1p)" "$LUAMP_MODULE_DIR/luamp.so" "the module comes from the built luamp.so on LUA_CPATH"
is "$(printf '%s\n' "$out" | sed -n 2p)" "0.1.0" "mp.version is \"0.1.0\""
is "$(printf '%s\n' "$out" | sed -n 3p)" "integer${tab}true" "mp.cpu_count() is a positive integer"

# The module's Lua parts are compiled into luamp.so; none is installed as
# a file that a stock lua could load instead of it, or beside it.
parts=$(cd "$top_srcdir/lua/luamp" && ls ./*.lua | sed 's|^\./\(.*\)\.lua$|\1|' | tr '\n' ' ')
(cd "$tmp" && env -u LUA_PATH -u LUA_PATH_5_4 -u LUA_INIT -u LUA_INIT_5_4 PARTS="$parts" "$LUA54" -e '
    local found = {}
    local names = {"luamp"}
    for part in os.getenv("PARTS"):gmatch("%S+") do names[#names + 1] = "luamp." .. part end
    for _, name in ipairs(names) do
        local path = package.searchpath(name, package.path)
        if path then found[#found + 1] = path end
    end
    print(#found == 0 and "none" or table.concat(found, " "))') >"$tmp/out" 2>"$tmp/err"
is "$(cat "$tmp/out")$(cat "$tmp/err")" "none" "no luamp.lua nor luamp/*.lua is on the stock package.path"
LUA_PATH="$tmp/nowhere/?.lua" LUA_CPATH="$LUAMP_MODULE_DIR/?.so" "$LUA54" -e '
    local mp = require "luamp"
    local names = {}
    for name in pairs(package.loaded) do
        if name:find("luamp") then names[#names + 1] = name end
    end
    print(table.concat(names, " "))
    local pool = mp.Pool(1)
    pool:close()
    local _, tb = xpcall(pool.map, function(e) return debug.traceback(tostring(e)) end, pool, print, {1})
    print(tb:match("\n\t(luamp/pool%.lua):%d+: in "))' >"$tmp/out" 2>"$tmp/err"
is "$(tr '\n' ' ' <"$tmp/out")$(cat "$tmp/err")" "luamp luamp/pool.lua " \
    "require \"luamp\" needs nothing on package.path, and loads no module but luamp"
(cd "$top_srcdir/lua" && LUA_PATH="./?.lua;./?/init.lua" LUA_CPATH="$LUAMP_MODULE_DIR/?.so;;" "$LUA54" -e 'require "luamp"') \
    >"$tmp/out" 2>"$tmp/err"
like "$(head -1 "$tmp/err")" "luamp: require found \./luamp/init\.lua, which is luamp's source, not a module" \
    "in the source's lua/, where ./?/init.lua finds lua/luamp/init.lua, require says so"

# spawn from stock lua: the child is a fresh lua5.4 that finds luamp.so
# where the parent did (here a package.cpath set by the script itself)
"$LUA54" -e '
    package.cpath = "'"$LUAMP_MODULE_DIR"'/?.so;" .. package.cpath
    local mp = require "luamp"
    local q = mp.Queue()
    local p = mp.Process{start_method = "spawn", target = function(parent)
        q:put(mp.current_process().pid ~= parent and "spawned child" or "same process")
    end, args = {mp.current_process().pid}}
    p:start()
    print(q:get(20))
    p:join()
    print(p.exitcode)' >"$tmp/out" 2>"$tmp/err"
rc=$?
is "$rc:$(cat "$tmp/err")" "0:" "stock lua5.4 spawns a Process without error"
is "$(tr '\n' ' ' <"$tmp/out")" "spawned child 0 " "the spawned child is a fresh lua5.4 that loads luamp where its parent did"

# mp.run from stock lua: the watchdog a run starts (src/run.c) works in a
# host luamp did not set up, and is gone when the run returns
"$LUA54" -e '
    package.cpath = "'"$LUAMP_MODULE_DIR"'/?.so;" .. package.cpath
    local mp = require "luamp"
    local r = mp.run({"sh", "-c", "echo hi; exit 3"}, {capture = true})
    io.write(r.stdout, r.code, "\n")
    local me = mp.current_process().pid
    local f = io.open("/proc/" .. me .. "/task/" .. me .. "/children")
    print(f and f:read("a") or "")' >"$tmp/out" 2>"$tmp/err"
rc=$?
is "$rc:$(cat "$tmp/err")" "0:" "stock lua5.4 runs a program with mp.run without error"
is "$(tr '\n' ' ' <"$tmp/out")" "hi 3  " "with its output and status, and no child left behind"

done_testing
