-- SPDX-License-Identifier: MIT
-- luamp/cluster.lua: luamp-mpi's Lua side: mp.cluster(), how a cluster
-- Pool's workers are spread over the ranks, and a node supervisor's life.
--
-- Under `mpirun luamp-mpi script.lua` (src/cluster.c says how the ranks
-- work together), rank 0 runs the script and a Pool there is a Pool of
-- every rank's workers: pool.lua asks plan() how many each rank starts
-- (its own share runs as local workers do) and open() tells the other
-- ranks.  Every other rank runs node_main, and nothing of the user's:
-- for each Pool rank 0 opens, it starts the workers as the spawn start
-- method starts them (a fresh luamp, rank 0's package.path and preload),
-- passing them the Pool's initializer and its arguments still encoded,
-- so that even the modules they name are loaded in the workers only.  It
-- reaps them, replaces them, kills those whose task ran past its timeout,
-- and fails the task a dead worker held, by name of host and pid.
--
-- Without luamp-mpi (or in the workers themselves), active() is false,
-- and nothing here runs.
--
-- Uses: errors, checks, log, spawn, process.

local core, part = ...

local errors = part("errors")
local new_error, errmsg = errors.new_error, errors.errmsg
local log = part("log")
local debug_log = log.debug_log
local spawn = part("spawn")
local claimed_deadline = part("checks").claimed_deadline

local now = core.now
local api = debug.getregistry()[core.registry_keys.cluster]
local info_cache

local function info()
  if not api then return nil end
  info_cache = info_cache or api.info()
  return info_cache
end

-- Rank 0 of an MPI job: Pools span the ranks.
local function active()
  local i = info()
  return i ~= nil and i.rank == 0
end

-- mp.cluster(): the ranks, hosts and workers (a fresh copy), or nil when
-- the script does not run under luamp-mpi's rank 0.
local function cluster()
  if not active() then return nil end
  local i = api.info()
  i.rank = nil
  return i
end

-- How many workers each rank starts for a Pool of n (nil: every rank's
-- share): {[0] = n0, [1] = n1, ...}.  Round robin from rank 1, rank 0
-- last, up to each rank's share, then beyond it if n asks for more: a
-- small Pool works on other hosts, not on rank 0 alone.
local function plan(n)
  local ranks = info().ranks
  local order, caps, out = {}, {}, {}
  for k = 2, #ranks do order[#order + 1] = ranks[k].rank end
  order[#order + 1] = 0
  for _, r in ipairs(ranks) do caps[r.rank], out[r.rank] = r.workers, 0 end
  local left = n or info().workers
  while left > 0 do
    local gave = false
    for _, r in ipairs(order) do
      if left > 0 and out[r] < caps[r] then out[r], left, gave = out[r] + 1, left - 1, true end
    end
    if not gave then
      for _, r in ipairs(order) do
        if left > 0 then out[r], left = out[r] + 1, left - 1 end
      end
    end
  end
  return out
end

-- core.encode of v, refusing luamp objects as a cluster Pool's tasks do
-- (pool.c): a Pool's function and initializer may go to other hosts.
local function encode_across(v, root)
  return core.encode(v, root, core.cross_hosts_why)
end

-- Tells the ranks of plan to start their workers for a Pool with these
-- queues; returns its id.  The initializer, its arguments and the
-- Pool's limits travel encoded: a value that cannot raises "serialize".
local function open(tq, rq, workers, opts)
  local body, why = encode_across({ init = opts.init, initargs = opts.initargs, maxtasks = opts.maxtasks }, "Pool")
  if not body then error(new_error("serialize", why), 0) end
  local header = assert(core.encode({ path = package.path, cpath = package.cpath, preload = opts.preload or {},
                                      log = log.level }))
  return api.open(tq, rq, workers, string.pack("<s4s4", header, body))
end

-- Waits (up to `seconds`) until the ranks' workers of Pool id are gone.
local function wait_done(id, seconds)
  local deadline = now() + seconds
  while not api.done(id) and now() < deadline do core.wait({}, 0.002) end
  return api.done(id)
end

--------------------------------------------------------------------------
-- A node supervisor (every rank but 0)

local function node_main()
  local me = info()
  local host = me.ranks[me.rank + 1].host
  local inbox = setmetatable({}, { __luamp_fd = api.inbox_fd })
  local pools = {}        -- id -> the pool's record, below
  local nworkers = 0

  local function spawn_worker(P)
    local slot = table.remove(P.free)
    P.index = P.index + 1
    local ok, h = pcall(spawn.spawn_node_worker, P.tq, P.rq, P.index, slot, P.header, P.body)
    if not ok then
      P.free[#P.free + 1] = slot
      error(h, 0)
    end
    P.workers[#P.workers + 1] = h
    P.slot[h] = slot
    nworkers = nworkers + 1
  end

  -- Tells rank 0 that the Pool cannot run tasks here (its _handle breaks
  -- the Pool, as when a worker's initializer fails).
  local function broken(P, message)
    P.broken = true
    pcall(P.rq.put_result, P.rq, 0, 0, 0, 0, 0, 0, nil, { message = message })
  end

  local function finish_if_gone(P)
    if #P.workers == 0 and (P.closing or P.broken or P.terminated) then
      pools[P.id] = nil
      api.node_gone(P.id)
      P.tq:destroy()
      P.rq:destroy()
    end
  end

  local function open_pool(id, data, f1, f2, f3, f4, f5, f6)
    local n, header, body = string.unpack("<i4s4s4", data)
    local P = { id = id, n = n, header = core.decode(header), body = body, workers = {}, slot = {},
                free = {}, index = 0, killed = {}, early = 0,
                tq = core.pool_queue_attach("cluster-" .. id .. "-tq", f1, f2, f3),
                rq = core.pool_queue_attach("cluster-" .. id .. "-rq", f4, f5, f6) }
    for slot = n - 1, 0, -1 do P.free[#P.free + 1] = slot end
    pools[id] = P
    local ok, err = pcall(function() for _ = 1, n do spawn_worker(P) end end)
    if not ok then broken(P, string.format("cannot start the Pool's workers on host %s: %s", host, errmsg(err))) end
    if log.debugging then debug_log("cluster Pool %d: %d workers on %s", id, #P.workers, host) end
    finish_if_gone(P)
  end

  local function kill_all(P)
    for _, h in ipairs(P.workers) do h:signal(9) end
    for _, h in ipairs(P.workers) do h:poll(-1) end
    nworkers = nworkers - #P.workers
    P.workers = {}
  end

  local function reap(P, i)
    local h = table.remove(P.workers, i)
    nworkers = nworkers - 1
    local code = h:poll(-1)
    local slot = P.slot[h]
    P.slot[h] = nil
    local lseq = P.tq:claim(slot)
    local origin, timeout
    if lseq ~= 0 then origin, timeout = api.node_lost(P.id, lseq) end
    if origin then
      local e
      if P.killed[slot] == lseq then
        e = { kind = "task_timeout", pid = h.pid, host = host, message = string.format(
          "the task ran past its %gs timeout; its worker (pid %d) on host %s was killed and replaced",
          timeout, h.pid, host) }
      else
        e = { kind = "worker_lost", pid = h.pid, host = host, exitcode = code, message = string.format(
          "the worker (pid %d) on host %s running this task died: %s", h.pid, host,
          part("process").describe_exit(code)) }
      end
      P.rq:put_result(-2, 0, 0, origin, h.pid, 0, nil, e)
    end
    P.killed[slot] = nil
    P.tq:release(slot)
    P.free[#P.free + 1] = slot
    if origin or code == 0 then
      P.early = 0
    else
      P.early = P.early + 1
      if P.early > 2 * P.n + 2 and not P.broken then
        broken(P, string.format("the Pool's workers on host %s keep dying before they run any task (the last %s)",
          host, part("process").describe_exit(code)))
      end
    end
    if not P.terminated and not P.broken and (not P.closing or P.tq:qsize() > 0) then
      local ok, err = pcall(spawn_worker, P)
      if not ok and #P.workers == 0 then
        broken(P, string.format("cannot start a worker on host %s: %s", host, errmsg(err)))
      end
    end
    finish_if_gone(P)
  end

  -- Kills the workers whose task is past its timeout; the next deadline.
  local function check_deadlines()
    local first
    local t = now()
    for id, P in pairs(pools) do
      if api.node_timed(id) > 0 then
        local claimed = false
        for _, h in ipairs(P.workers) do
          local slot = P.slot[h]
          local lseq, since = P.tq:claim(slot)
          local timeout = lseq ~= 0 and api.node_timeout(id, lseq)
          if timeout then
            claimed = true
            local kill
            kill, first = claimed_deadline(P.killed, slot, lseq, since, timeout, t, first)
            if kill then h:signal(9) end
          end
        end
        if not claimed then first = math.min(first or math.huge, t + 0.05) end
      end
    end
    return first
  end

  local function handle_inbox()
    while true do
      local kind, id, data, f1, f2, f3, f4, f5, f6 = api.node_next()
      if not kind then return true end
      local P = pools[id]
      if kind == "open" then
        open_pool(id, data, f1, f2, f3, f4, f5, f6)
      elseif kind == "close" and P then
        P.closing = true
        finish_if_gone(P)
      elseif kind == "terminate" and P then
        P.terminated = true
        kill_all(P)
        finish_if_gone(P)
      elseif kind == "unqueued" and P then
        -- a task this host had no memory to queue (its ring could not
        -- grow): it fails, as one the caller cannot queue does on one host
        P.rq:put_result(-2, 0, 0, data, 0, 0, nil, { kind = "serialize", host = host, message = string.format(
          "cannot queue the task on host %s: no memory for a message of %d MiB (%s)", host, f1 >> 20, f2) })
      elseif kind == "stop" then
        return false
      end
    end
  end

  local ok, err = pcall(function()
    local list = {}
    while true do
      if not handle_inbox() then return end
      local deadline = check_deadlines()
      list[1] = inbox
      local k = 1
      for _, P in pairs(pools) do
        for _, h in ipairs(P.workers) do k = k + 1; list[k] = h end
      end
      for j = #list, k + 1, -1 do list[j] = nil end
      core.wait(list, deadline and math.max(0, deadline - now()) or nil)
      for _, P in pairs(pools) do
        for i = #P.workers, 1, -1 do
          if P.workers[i]:poll(0) ~= nil then reap(P, i) end
        end
      end
    end
  end)
  for _, P in pairs(pools) do kill_all(P) end
  if not ok and not (type(err) == "table" and err.kind == "interrupted") then error(err, 0) end
end

return {
  active = active,
  cluster = cluster,
  plan = plan,
  open = open,
  terminate = function(id) api.terminate(id) end,
  done = function(id) return api.done(id) end,
  sent = function(id, seq) return api.sent(id, seq) end,
  release = function(id) api.release(id) end,
  wait_done = wait_done,
  encode_across = encode_across,
  node_main = node_main,
}
