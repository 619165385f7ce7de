-- SPDX-License-Identifier: MIT
-- refusals.lua: what tests/limits.lua and tests/over_2gib.lua check of
-- values too big to send.  Each case raises kind serialize with the
-- message expected and copies nothing first (the peak of this process's
-- resident memory, started again before each case, grows by less than
-- max_mib); then the Queue, Pipe and Pool the cases used still work.
local M = {}

-- The peak of this process's resident memory (KiB).
function M.peak()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+) kB"))
end

-- Starts the peak again from what is resident now.
function M.reset_peak()
  local f = assert(io.open("/proc/self/clear_refs", "w"))
  f:write("5")
  f:close()
end

-- cases: { {name, fn, pattern}, ... }; on: {queue = q, pipe = {a, b},
-- pool = pool}, the objects they send on (b sends, a receives).
function M.check(t, mp, cases, max_mib, on)
  for _, case in ipairs(cases) do
    local name, fn, pattern = case[1], case[2], case[3]
    M.reset_peak()
    local before = M.peak()
    local e = t.raises(fn, pattern, name .. ": refused")
    t.ok(mp.Error.is(e, "serialize"), name .. ": the refusal has kind serialize")
    local grew = (M.peak() - before) // 1024
    t.ok(grew < max_mib, name .. ": refused before it is copied", "the peak grew by " .. grew .. " MiB")
  end
  t.is(on.queue:qsize(), 0, "nothing was put on the Queue")
  local a, b = on.pipe[1], on.pipe[2]
  b:send("small")
  t.is(a:recv(1), "small", "the Pipe still works after the refusals")
  t.is(on.pool:apply(function() return 1 end), 1, "the Pool still works after the refusals")
end

return M
