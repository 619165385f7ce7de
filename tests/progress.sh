# SPDX-License-Identifier: MIT
# progress = true draws a bar on stderr when stderr is a terminal, and
# nothing when it is not.  On a terminal (a pseudo-terminal driven by
# tests/pty_session.py, which applies "\r" and erase sequences as a
# terminal would) the screen is checked as a person would see it when
# the job ends: one line for the bar, then the script's own output.
# Rates and times vary, so they are matched by pattern; the layout is
# checked exactly: the line is the terminal's width less one column, the
# bar is full, and nothing is left over after the line.
. "$top_srcdir/tests/tap.sh"

job='local mp = require "luamp"
local pool <close> = mp.Pool(2)
local xs = {} for i = 1, 200 do xs[i] = i end
'
map="$job"'local r = pool:map(function(x) return x end, xs, {chunksize = 10, progress = true})
io.stdout:write("n=", #r, "\n")'

out=$("$LUAMP" -e "$map" 2>&1 >/dev/null)
is "$out" "" "no progress bar when stderr is not a terminal"

if [ -z "$PYTHON3" ] || ! "$PYTHON3" -c 'import pty' 2>/dev/null; then
    skip "the progress bar on a terminal" "no python3 to drive a pseudo-terminal"
    done_testing
fi

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# screen COLUMNS SCRIPT: runs SCRIPT on a terminal COLUMNS wide; sets
# $screen to what it showed (without pty_session's "exit N" line),
# $lines to its number of lines, $bar to its first line and $after to
# its second.
screen() {
    printf '%s\n' "$2" >"$tmp/script.lua"
    : | PTY_COLS=$1 timeout 60 "$PYTHON3" "$top_srcdir/tests/pty_session.py" 30 \
        "$LUAMP" "$tmp/script.lua" >"$tmp/screen" 2>&1
    screen=$(sed -e '$d' "$tmp/screen")
    lines=$(printf '%s\n' "$screen" | grep -c .)
    bar=$(printf '%s\n' "$screen" | sed -n 1p)
    after=$(printf '%s\n' "$screen" | sed -n 2p)
}

# A full bar between " 100%|" and "| 200/200 [elapsed<0:00:00, rate/s]",
# and nothing after.
full='^100%\|#+\| 200/200 \[[0-9]+:[0-5][0-9]:[0-5][0-9]<0:00:00, [0-9]+\.[0-9]/s\]$'
for cols in 60 100; do
    screen $cols "$map"
    like "$bar" "$full" "at $cols columns, the final line shows 100%, a full bar, 200/200, elapsed<0:00:00 and the rate"
    is "${#bar}" $((cols - 1)) "at $cols columns, the final line is $((cols - 1)) characters wide"
    is "$lines" 2 "at $cols columns, the bar leaves exactly one line, ended by a newline"
    is "$after" "n=200" "at $cols columns, the script's own output follows the bar intact"
done

screen 60 "$job"'local ok = pcall(pool.map, pool, function(x)
  if x == 150 then error("no 150") end
  return x
end, xs, {chunksize = 10, progress = true})
io.stdout:write("ok=", tostring(ok), "\n")'
like "$bar" "$full" "a job that fails still ends its bar with a final line"
is "${#bar}" 59 "a failed job's final line is as wide as a finished one's"
is "$lines" 2 "a failed job leaves exactly one line of bar"
is "$after" "ok=false" "the failure reaches the script after the bar's final line"

screen 60 "$job"'pool:map(function(x) return x end, {}, {progress = true})
io.stdout:write("empty\n")'
like "$bar" '^100%\|#+\| 0/0 \[' "an empty job's bar is full, at 100%, 0/0"
is "${#bar}" 59 "an empty job's final line is as wide as any other"
is "$after" "empty" "an empty job leaves exactly one line of bar"

screen 60 "$job"'local i = 0
local function items() i = i + 1; if i <= 200 then return i end end
local n = 0
for _ in pool:imap(function(x) return x end, items, {chunksize = 10, progress = true}) do n = n + 1 end
io.stdout:write("n=", n, "\n")'
like "$bar" '^200 \[[0-9]+:[0-5][0-9]:[0-5][0-9], [0-9]+\.[0-9]/s\]$' \
    "for an iterator of unknown length, the final line is count [elapsed, rate], nothing left over"
is "$lines" 2 "for an iterator, the bar leaves exactly one line"
is "$after" "n=200" "for an iterator, the script's own output follows the bar intact"

done_testing
