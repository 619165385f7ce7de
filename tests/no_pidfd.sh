# SPDX-License-Identifier: MIT
# no_pidfd.sh: without pidfd_open (Linux before 5.3, valgrind), children
# are watched through death pipes (src/process.c) and mp.run looks for
# its program's exit: LUAMP_NO_PIDFD=1 forces that way, and the tests of
# pools, processes, faults, spawn and mp.run pass on it as they do on
# pidfds.
. "$top_srcdir/tests/tap.sh"

# Which kind of descriptor watches a Process: a pidfd, or a pipe.
watch_kind() {
    env "$@" "$LUAMP" -e '
        local mp = require "luamp"
        local q = mp.Queue()
        local p = mp.Process{target = function() q:get() end}
        p:start()
        local kinds = {}
        for fd = 0, 200 do
            local f = io.open("/proc/self/fdinfo/" .. fd)
            if f then
                local info = f:read("a")
                f:close()
                if info:find("Pid:", 1, true) then kinds.pidfd = true end
            end
        end
        q:put(1)
        p:join()
        print(kinds.pidfd and "pidfd" or "no pidfd")' 2>&1
}
is "$(watch_kind LUAMP_NO_PIDFD=0)" "pidfd" "a Process is watched through a pidfd where the kernel has them"
is "$(watch_kind LUAMP_NO_PIDFD=1)" "no pidfd" "LUAMP_NO_PIDFD=1: no pidfd is opened"

for t in pool process reliability spawn run executor; do
    out=$(LUAMP_NO_PIDFD=1 timeout 300 "$LUAMP" "$top_srcdir/tests/$t.lua" 2>&1)
    rc=$?
    bad=$(printf '%s\n' "$out" | grep -E '^not ok' | head -5)
    plan=$(printf '%s\n' "$out" | grep -cE '^1\.\.[0-9]+$')
    if [ "$rc" = 0 ] && [ -z "$bad" ] && [ "$plan" = 1 ]; then
        tap_report 0 "tests/$t.lua passes without pidfds"
    else
        tap_report 1 "tests/$t.lua passes without pidfds" "exit $rc
$bad
$(printf '%s\n' "$out" | tail -5)"
    fi
done

done_testing
