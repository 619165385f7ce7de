# SPDX-License-Identifier: MIT
# Signals and lifetime: Ctrl-C is a catchable error, an uncaught one stops
# everything, and children never outlive a main process killed by SIGKILL.
. "$top_srcdir/tests/tap.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# children of a pid (direct), one per line
kids() { tr ' ' '\n' < "/proc/$1/task/$1/children" 2>/dev/null | grep .; }
alive() { kill -0 "$1" 2>/dev/null; }

# wait up to $2 tenths of a second for file $1 to have content
wait_file() { i=0; while [ ! -s "$1" ] && [ $i -lt "$2" ]; do sleep 0.1; i=$((i + 1)); done; }

# 1. SIGINT during a wait is an error the script catches; the pool goes on
cat > "$tmp/catch.lua" <<'LUA'
local mp = require "luamp"
local pool <close> = mp.Pool(2)
io.open(arg[1], "w"):close()
local f = io.open(arg[1], "w"); f:write("ready\n"); f:close()
local ok, e = pcall(pool.apply, pool, function() mp._sleep(30) end)
print(mp.Error.is(e, "interrupted"), e and e.message)
print(pool:apply(function(x) return x + 1 end, {41}))
LUA
"$LUAMP" "$tmp/catch.lua" "$tmp/ready1" > "$tmp/out1" 2>&1 &
pid=$!
wait_file "$tmp/ready1" 100
sleep 0.2
kill -INT $pid
wait $pid
rc=$?
is "$rc" 0 "a script that catches SIGINT goes on and exits 0"
is "$(sed -n 1p "$tmp/out1")" "true	interrupted by SIGINT" "SIGINT during a wait raises an error of kind interrupted"
is "$(sed -n 2p "$tmp/out1")" "42" "the pool is usable after the interrupt"

# 2. uncaught SIGTERM while the script computes: non-zero exit, no child left
cat > "$tmp/busy.lua" <<'LUA'
local mp = require "luamp"
local pool = mp.Pool(2)
local p = mp.Process{target = function() mp._sleep(60) end}
p:start()
pool:apply_async(function() mp._sleep(60) end)
local f = io.open(arg[1], "w"); f:write(table.concat({p.pid}, " "), "\n"); f:close()
while true do end
LUA
"$LUAMP" "$tmp/busy.lua" "$tmp/ready2" > "$tmp/out2" 2>&1 &
pid=$!
wait_file "$tmp/ready2" 100
children=$(kids $pid)
kill -TERM $pid
wait $pid
rc=$?
is "$([ $rc -ne 0 ] && echo nonzero)" "nonzero" "an uncaught SIGTERM makes luamp exit non-zero"
like "$(cat "$tmp/out2")" "interrupted by SIGTERM" "the uncaught interrupt is reported"
left=""
for c in $children; do alive "$c" && left="$left $c"; done
is "$left" "" "no worker or child process outlives the interrupted script"
is "$(echo $children | wc -w)" "3" "the script had 2 workers and 1 child to stop"

# 3. main killed by SIGKILL: its workers and children exit by themselves
"$LUAMP" "$tmp/busy.lua" "$tmp/ready3" > /dev/null 2>&1 &
pid=$!
wait_file "$tmp/ready3" 100
children=$(kids $pid)
kill -KILL $pid
wait $pid 2>/dev/null
i=0
while [ $i -lt 50 ]; do
    left=""
    for c in $children; do alive "$c" && left="$left $c"; done
    [ -z "$left" ] && break
    sleep 0.1; i=$((i + 1))
done
is "$left" "" "workers and children exit when the main process is killed by SIGKILL"

# 4. a worker ignores the terminal's SIGINT (sent to the whole group)
cat > "$tmp/group.lua" <<'LUA'
local mp = require "luamp"
local pool <close> = mp.Pool(1)
local wpid = pool:apply(function() return mp.current_process().pid end)
local f = io.open(arg[1], "w"); f:write(wpid, "\n"); f:close()
local ok, e = pcall(mp._sleep, 30)
print(mp.Error.is(e, "interrupted"), pool:apply(function() return mp.current_process().pid end) == wpid)
LUA
setsid "$LUAMP" "$tmp/group.lua" "$tmp/ready4" > "$tmp/out4" 2>&1 &
pid=$!
wait_file "$tmp/ready4" 100
sleep 0.1
pgid=$(cut -d' ' -f5 "/proc/$pid/stat")
kill -INT -- -"$pgid"
wait $pid
is "$(cat "$tmp/out4")" "true	true" "a terminal SIGINT interrupts the script and leaves the worker alive"

done_testing
