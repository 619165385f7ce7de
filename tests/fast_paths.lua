-- SPDX-License-Identifier: MIT
-- The C fast paths of a Pool (src/pool.c) are taken: apply_async's common
-- case (apply_fast), a worker's loop for apply tasks and small map chunks
-- (serve), and the results settled without Lua (settle_apply,
-- settle_map).  Renaming a field the C reads (a pool's _fcache, a job's
-- chunks...) would send everything down the slow path, still correct
-- and only slower; these tests count, through the internal mp._counters,
-- so that it shows.  Counts, never timings.
local t = require "tap"
local mp = require "luamp"

local function delta(before, after, k) return after[k] - before[k] end

local pool = mp.Pool(1)

do
  local function square(x) return x * x end
  pool:apply_async(square, { 1 }):get()          -- (the pool encodes square once)
  local before = mp._counters()
  local rs = {}
  for i = 1, 50 do rs[i] = pool:apply_async(square, { i }) end
  local after_put = mp._counters()
  local sum = 0
  for i = 1, 50 do sum = sum + rs[i]:get() end
  local after = mp._counters()
  t.is(sum, 42925, "the apply_async tasks return their values")
  t.is(delta(before, after_put, "apply_fast"), 50, "apply_async of a known function takes apply_fast, once a task")
  t.is(delta(before, after, "settle_apply"), 50, "their results are settled in C (settle_apply), once a task")
end

do
  local function served() return require("luamp")._counters().serve_apply end
  local first = pool:apply(served)
  local second = pool:apply(served)
  local third = pool:apply(served)
  t.ok(second > first and third == second + 1,
    "a worker runs apply tasks of a function it knows in C (serve_apply counts each)",
    string.format("serve_apply in the worker: %d, %d, %d", first, second, third))
end

do
  local function chunk_count() return require("luamp")._counters().serve_map end
  local items = {}
  for i = 1, 40 do items[i] = i end
  pool:map(chunk_count, { 1, 2 }, { chunksize = 2 })  -- (the worker decodes the function)
  local before = mp._counters()
  local got = pool:map(chunk_count, items, { chunksize = 4 })
  local after = mp._counters()
  t.is(#got, 40, "map returns every item")
  t.ok(got[40] > got[1], "a worker runs map chunks of 4 items in C (serve_map counts each)",
    string.format("serve_map in the worker: first item %d, last %d", got[1], got[40]))
  t.is(delta(before, after, "settle_map"), 10, "the parent settles each of the 10 chunks in C (settle_map)")
end

do
  local before = mp._counters()
  local r = pool:apply_async(function(x) return x end, { 1 }, { callback = function() end })
  r:get()
  local after = mp._counters()
  t.is(delta(before, after, "settle_apply"), 0, "a result with a callback is settled in Lua, not counted")
end

pool:close()
pool:join()

do
  -- the fields src/pool.c reads by name are still fields of the Lua layer
  local top = os.getenv("top_srcdir") or "."
  local source = {}
  for _, name in ipairs({ "pool", "results", "executor", "worker" }) do
    local f = assert(io.open(top .. "/lua/luamp/" .. name .. ".lua"))
    source[#source + 1] = f:read("a")
    f:close()
  end
  source = table.concat(source, "\n")
  local missing = {}
  for _, name in ipairs(mp._pool_fields()) do
    local quoted = name:gsub("%p", "%%%0")
    if not (source:find("[%.:]" .. quoted .. "%f[^%w_]") or source:find("%f[%w_]" .. quoted .. "%s*=[^=]")) then
      missing[#missing + 1] = name
    end
  end
  t.is(table.concat(missing, " "), "", "every Lua field src/pool.c reads by name is still used in lua/luamp/")
end

-- An apply job has one shape however it was settled: its values at
-- 1..n and `finished` = n, whether get_result settled it in C (no
-- callback) or _complete did in Lua (with a callback); 0 when it failed.
do
  local pool <close> = mp.Pool(1)
  local function two(a) return a, a * 2 end
  local c = pool:apply_async(two, { 3 })
  local called
  local l = pool:apply_async(two, { 4 }, { callback = function(...) called = { ... } end })
  c:wait(); l:wait()
  t.same({ c.finished, c[1], c[2], rawget(c, "values") }, { 2, 3, 6 }, "settled in C: finished = 2, values at 1..2")
  t.same({ l.finished, l[1], l[2], rawget(l, "values") }, { 2, 4, 8 }, "settled in Lua: the same shape")
  t.same(called, { 4, 8 }, "and its callback got the values")
  local e = pool:apply_async(function() error("no") end)
  e:wait()
  t.same({ e.finished, e:successful() }, { 0, false }, "a failed apply job: finished = 0")
  t.raises(function() e:get() end, "no", "and get raises its error")
  local z = pool:apply_async(function() end)
  t.same({ z:get() }, {}, "a job with no values returns none")
  t.is(z.finished, 0, "finished = 0 values")
end

-- A task that is mostly big strings is decoded where it lies in the task
-- queue, not copied out first (pool.c, TASK_FLAT): a worker counts those
-- in held_tasks; a task of as many bytes in small values is copied out.
do
  local pool <close> = mp.Pool(1)
  local function held() return require("luamp")._counters().held_tasks end
  local big = string.rep("s", 256 << 10)
  local first = pool:apply(held)
  local got = pool:map(function(s) return #s end, { big, big .. "x", big .. "yz" }, { chunksize = 1 })
  t.same({ got[1], got[2], got[3] }, { #big, #big + 1, #big + 2 }, "big string items arrive whole")
  local after_strings = pool:apply(held)
  t.is(after_strings - first, 3, "each task of a big string is decoded where it lies (held_tasks counts 3)")
  local numbers = {}
  for i = 1, 40000 do numbers[i] = i + 0.5 end
  local sum = pool:apply(function(t) local s = 0 for i = 1, #t do s = s + t[i] end return s end, { numbers })
  t.is(sum, 40000 * 40001 / 2 + 20000, "a task of 40,000 numbers arrives whole")
  t.is(pool:apply(held), after_strings, "and, being small values, is copied out, not held")
  local mixed = pool:apply(function(a, b) return #a + #b.n end, { big, { n = big } })
  t.is(mixed, 2 * #big, "big strings among the arguments, nested too, arrive whole")
end

t.done()
