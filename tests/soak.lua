-- SPDX-License-Identifier: MIT
-- The soak test (make soak; minutes, not part of make check): many small
-- tasks, many large results, and a long map whose workers are killed at
-- random.  Every lost task must be reported, every other result correct.
local t = require "tap"
local mp = require "luamp"

local function clock() return mp._now() end
local pool <close> = mp.Pool(2)

-- 1. 100,000 small tasks, as apply_async and as map with chunksize 1
do
  local t0 = clock()
  local rs = {}
  for i = 1, 100000 do rs[i] = pool:apply_async(function(x) return x * 2 end, {i}) end
  local ok = true
  for i = 1, 100000 do if rs[i]:get() ~= i * 2 then ok = false end end
  t.ok(ok, "100,000 apply_async tasks all return the right result")
  t.diag(string.format("100,000 apply_async: %.2f s", clock() - t0))
  t0 = clock()
  local xs = {}
  for i = 1, 100000 do xs[i] = i end
  local r = pool:map(function(x) return x + 1 end, xs, 1)
  ok = r.n == 100000
  for i = 1, 100000 do if r[i] ~= i + 1 then ok = false end end
  t.ok(ok, "100,000 map items with chunksize 1 all return the right result")
  t.diag(string.format("100,000 map chunksize 1: %.2f s", clock() - t0))
end

-- 2. 1,000 tasks with 1 MiB results
do
  local t0 = clock()
  local ok, n = true, 0
  for i, s in pool:imap_unordered(function(i) return string.rep(string.char(65 + i % 26), 1 << 20) end,
                                  (function() local xs = {} for i = 1, 1000 do xs[i] = i end return xs end)(), 4) do
    n = n + 1
    if #s ~= 1 << 20 or s:byte(1) ~= 65 + i % 26 or s:byte(-1) ~= 65 + i % 26 then ok = false end
  end
  t.is(n, 1000, "1,000 tasks with 1 MiB results all arrive")
  t.ok(ok, "1,000 results of 1 MiB are intact")
  t.diag(string.format("1,000 x 1 MiB results: %.2f s (%.0f MiB/s)", clock() - t0, 1000 / (clock() - t0)))
end

-- 3. a long map while a killer process SIGKILLs 200 workers at random
do
  local mainpid = mp.current_process().pid
  local KILLS = 200
  local done = mp.Queue()
  local killer = mp.Process{target = function()
    local me = mp.current_process().pid
    local kills = 0
    while kills < KILLS do
      mp._sleep(0.01 + math.random() * 0.02)
      local pids = {}
      for line in io.popen("ps -o pid= --ppid " .. mainpid):lines() do
        local pid = tonumber(line)
        if pid and pid ~= me then pids[#pids + 1] = pid end
      end
      if #pids > 0 then
        local victim = pids[math.random(#pids)]
        if os.execute("kill -9 " .. victim .. " 2>/dev/null") then kills = kills + 1 end
      end
    end
    done:put(kills)
  end}
  local t0 = clock()
  killer:start()
  local produced, limit = 0, 1000000
  local it = pool:imap_unordered(function(x)
    local s = 0
    for k = 1, 20000 do s = s + k % 7 end   -- about a millisecond of work
    return x * 3
  end, function() if produced < limit then produced = produced + 1; return produced end end, 1)
  local correct, wrong, lost, other = 0, 0, 0, 0
  local finished_kills
  while true do
    local ok, i, v = pcall(it)
    if not ok then
      if mp.Error.is(i, "worker_lost") then lost = lost + 1 else other = other + 1; t.diag(tostring(i)) end
    elseif i == nil then
      break
    elseif v == i * 3 then
      correct = correct + 1
    else
      wrong = wrong + 1
    end
    if not finished_kills then
      finished_kills = done:get_nowait()
      if finished_kills then limit = produced + 2000 end   -- end the input soon after the last kill
    end
  end
  killer:join()
  t.is(finished_kills, KILLS, "the killer killed 200 workers during the map")
  t.is(wrong, 0, "no result of the map is wrong")
  t.is(other, 0, "no error other than worker_lost")
  t.ok(lost >= 1 and lost <= KILLS, "each kill lost at most one task, and the losses were reported (" .. lost .. ")")
  t.diag(string.format("killed %d workers: %d tasks lost and reported, %d correct, %.2f s",
    KILLS, lost, correct, clock() - t0))
  t.is(pool:apply(function(x) return x end, {"alive"}), "alive", "the pool still serves after 200 kills")
  t.is(#pool._workers, 2, "the pool still has its 2 workers")
end

t.done()
