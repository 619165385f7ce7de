# SPDX-License-Identifier: MIT
# progress = true draws a bar on stderr when stderr is a terminal, and
# nothing when it is not.
. "$top_srcdir/tests/tap.sh"

script='local mp = require "luamp"
local pool <close> = mp.Pool(2)
local xs = {} for i = 1, 200 do xs[i] = i end
local r = pool:map(function(x) return x end, xs, {chunksize = 10, progress = true})
io.stdout:write("sum=", #r, "\n")'

out=$("$LUAMP" -e "$script" 2>&1 >/dev/null)
is "$out" "" "no progress bar when stderr is not a terminal"

if command -v script >/dev/null 2>&1; then
    tty_out=$(script -qec "$LUAMP -e '$script'" /dev/null 2>&1 | tr '\r' '\n')
    like "$tty_out" "\[#+\] 200/200 " "the progress bar ends at done/total on a terminal"
    like "$tty_out" "[0-9.]+/s ETA [0-9]+s" "the progress bar shows the rate and the ETA"
    like "$tty_out" "sum=200" "the job's own output is intact"
else
    skip "the progress bar on a terminal" "script(1) is not installed"
fi
done_testing
