-- SPDX-License-Identifier: MIT
-- luamp/results.lua: a pool's results as the script waits for them:
-- AsyncResult, and the loops of imap and imap_unordered.
--
-- A job (pool.lua) is one call of map, apply_async, imap and the like.
-- The AsyncResult that map_async, starmap_async and apply_async return
-- is the job itself, with a metatable: the script's handle and the
-- pool's books are one table.  Results reach the parent only while it
-- waits (pool.lua), so each method here that waits pumps the job's pool
-- (_wait_for, _pump) until the job is finished or the deadline has
-- passed; ready() takes what has arrived without waiting.  apply_async's
-- jobs are leaner, for scripts
-- that submit a task per item: an ApplyResult gets its kind from its
-- metatable, and its values at 1..n, n being `finished` (pool.c's
-- settle_apply and pool.lua's _complete alike).
--
-- imap's loops yield results a chunk at a time, in input order or as
-- they come, and drop each once yielded; each chunk yielded lets the
-- pool read more of the input (the pool's _feed), so memory stays
-- bounded however long the input and however slow the loop.  A loop
-- left early (break, return, error) closes its fourth value, which tells
-- the pool to read no more (_abandon).
--
-- Uses: errors, checks, current; and, through each job, its pool's
-- methods.

local core, part = ...

local errors = part("errors")
local raise, script_site, note_site = errors.raise, errors.script_site, errors.note_site
local checks = part("checks")
local check_timeout, deadline_of = checks.check_timeout, checks.deadline_of
local current = part("current")

local now = core.now
local unpack = table.unpack
local setmetatable, type, error = setmetatable, type, error

local AsyncResult = {}
AsyncResult.__index = AsyncResult
AsyncResult.__name = "luamp.AsyncResult"
AsyncResult.__luamp_nosend = "an AsyncResult cannot be sent (send its value: r:get())"

local function new_async(job)
  return setmetatable(job, AsyncResult)
end

function AsyncResult:wait(timeout)
  check_timeout(timeout, 1, "wait")
  if self.finished then return true end
  return self._pool:_wait_for(self, deadline_of(timeout))
end

function AsyncResult:ready()
  if not self.finished and self._pool._owner == current.pid then
    -- take what has arrived, without waiting
    self._pool:_pump(now())
  end
  return not not self.finished
end

function AsyncResult:successful()
  if not self:ready() then error("the result is not ready", 2) end
  return self.err == nil
end

function AsyncResult:get(timeout)
  if not self.finished then
    check_timeout(timeout, 1, "get")
    if not self._pool:_wait_for(self, deadline_of(timeout)) then
      raise("timeout", string.format("timed out after %gs waiting for a result", timeout), 2)
    end
  end
  if self.err then
    -- (an apply_async job does not know where it was submitted: say
    -- where its error reached the script)
    local site = script_site(2)
    error(note_site(self.err, site and "task's error received at " .. site), 2)
  end
  if self.kind == "apply" then return unpack(self, 1, self.finished) end
  return self.results
end

-- What apply_async returns: an AsyncResult whose kind ("apply") comes
-- from its metatable, so that each job holds only what differs.
local ApplyResult = { __name = "luamp.AsyncResult", __index = { kind = "apply" },
  __luamp_nosend = "an AsyncResult cannot be sent (send its value: r:get())" }
for k, v in pairs(AsyncResult) do
  if type(v) == "function" then ApplyResult.__index[k] = v end
end

-- (the common case first: a finished success, its values at 1..finished)
function ApplyResult.__index:get(timeout)
  local n = self.finished
  if n and self.err == nil then return unpack(self, 1, n) end
  return AsyncResult.get(self, timeout)
end

-- imap's loop: yields (index, result) from whole chunks as they come.
-- `take` returns the next chunk to yield, or nil when none is waiting.
-- A failed item raises at its turn; the loop may go on after it.  With a
-- deadline (and the timeout it came from), waiting past it raises
-- "timeout".
-- A generic `for` closes its fourth value when the loop is left (break,
-- return, error), which abandons the job: see abandon.
local LoopEnd = { __close = function(c) c.pool:_abandon(c.job, "loop") end }

local function chunk_iterator(self, job, take, deadline, timeout)
  -- the chunk being yielded: its results, errors, size, index before it
  local results, errors, count, base, k = nil, nil, 0, 0, 0
  return function()
    if k >= count then
      if results then
        job.yielded = job.yielded + count
        results = nil
        self:_feed(job)
      end
      local rec = take()
      while not rec do
        if job.total and job.taken >= job.total then
          if not job.abandoned then return nil end
          raise("closed", string.format("%s read no more of its input after item %d: %s", job.fname, job.total,
            job.abandoned == "join" and "the Pool was joined first" or "its loop was left"), 2)
        end
        if self._ended then error("the Pool has ended", 2) end
        if not self:_pump(deadline) and deadline and now() >= deadline then
          raise("timeout", string.format("timed out after %gs waiting for the results of %s", timeout, job.fname), 2)
        end
        rec = take()
      end
      results, errors, count, base, k = rec.results, rec.errors, rec.count, rec.start - 1, 0
    end
    k = k + 1
    if errors then
      local e = errors[k]
      if e then error(e, 2) end
    end
    return base + k, results[k]
  end, nil, nil, setmetatable({ pool = self, job = job }, LoopEnd)
end

-- Yields (index, result) in input order; results are dropped once yielded
-- so memory stays bounded.
local function ordered_iterator(self, job, deadline, timeout)
  job.chunks, job.ordered, job.taken = {}, true, 0
  return chunk_iterator(self, job, function()
    local rec = job.chunks[job.taken + 1]
    if rec then
      job.chunks[job.taken + 1] = nil
      job.taken = job.taken + rec.count
    end
    return rec
  end, deadline, timeout)
end

-- Yields (index, result) as results arrive.
local function unordered_iterator(self, job)
  job.chunks, job.ctail, job.taken = {}, 0, 0
  local head = 0
  return chunk_iterator(self, job, function()
    if head < job.ctail then
      head = head + 1
      local rec = job.chunks[head]
      job.chunks[head] = nil
      job.taken = job.taken + rec.count
      return rec
    end
  end)
end

return {
  new_async = new_async,
  ApplyResult = ApplyResult,
  ordered_iterator = ordered_iterator,
  unordered_iterator = unordered_iterator,
}
