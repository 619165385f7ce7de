-- SPDX-License-Identifier: MIT
-- luamp/init.lua: the module, assembled from its parts.
--
-- luamp is Python's multiprocessing for Lua, built on a C core that
-- moves bytes and waits: the codec, shared-memory queues, pipes, locks,
-- fork and child handles (src/, gathered in the table `core` by
-- src/module.c).  The Lua side keeps the books: Process objects, Pools
-- with their jobs and AsyncResults, futures, errors as values with a
-- kind.  It is split by concern, as CPython splits multiprocessing over
-- pool.py, process.py, context.py, spawn.py, reduction.py, util.py and
-- concurrent/futures; each file opens with the design of its part:
--
--   errors.lua    mp.Error; the message handler tasks run under
--   checks.lua    argument checks, options tables, deadlines
--   current.lua   this process (name, pid), the children, pools and
--                 executors it started, and mp._shutdown, which ends them
--   log.lua       mp.log, mp.log_to_stderr, the pools' debug messages
--   share.lua     luamp objects sent to processes that did not inherit
--                 them (descriptions, descriptors over a socket)
--   spawn.lua     start methods, starting a fresh process, mp._spawned
--   process.lua   mp.Process, mp.active_children, how a process ended
--   channels.lua  mp.Queue, mp.JoinableQueue, mp.Pipe
--   sync.lua      mp.Lock, RLock, Event, Semaphore, Condition, Barrier,
--                 Value, Array
--   manager.lua   mp.Manager (shared dicts, lists, Namespaces), mp.SharedMemory
--   run.lua       mp.run
--   worker.lua    a pool worker's loop: the worker side of a Pool
--   pool.lua      mp.Pool: the parent side
--   results.lua   AsyncResult, and the loops of imap and imap_unordered
--   executor.lua  mp.Executor, futures, mp.as_completed, mp.wait
--   cluster.lua   luamp-mpi: mp.cluster(), a Pool's workers over the
--                 ranks, a node supervisor's loop (mp._node)
--
-- This file only assembles mp from what the parts return.
--
-- How the parts are found.  Every lua/luamp/*.lua is compiled into the
-- library and the binary (tools/bin2c makes src/luamp_lua.c, a table of
-- names and sources), and none is installed as a file: a stock lua5.4
-- gets luamp only through luamp.so, so the Lua side always matches the C
-- core it runs on, and nothing on package.path can stand in for a part.
-- luaopen_luamp (src/module.c) runs this chunk with the C core and
-- load_part(name), which compiles lua/luamp/NAME.lua under the chunk name
-- "=luamp/NAME.lua": errors and tracebacks say `luamp/pool.lua:123:`
-- ("=", not "@": there is no such file to open), and checks.lua's
-- argerror knows the library's frames by that prefix.
-- part(name), below, runs a part once, with the core and part itself,
-- and keeps what it returns, as require does, but outside package.loaded:
-- no other chunk can see or replace a part.  package.preload would have
-- done the same work in the open, where a script (or another copy of
-- luamp) could replace a part or be shadowed by it.  A part names the
-- parts it uses at its top, `local errors = part("errors")`, so the
-- order in which they load follows from that alone, and a cycle is an
-- error.  The one cycle of the design, a spawned Process (spawn.lua
-- starts it, process.lua runs it, and process.lua needs spawn.lua to
-- start one), is broken by spawn.lua looking process.lua up only when a
-- spawned child starts.
--
-- State that changes.  A part keeps what it takes from another in
-- locals, read once: an upvalue costs one instruction where a field of
-- another part's table costs two, and the pool's hot paths (apply_async,
-- _pump, _complete, the iterators) read them per task or per chunk.  So
-- a part exports no value that changes later:
-- what changes is a field of a table that every part shares and that is
-- never replaced (current.pid and current.name, which become_child sets
-- in a forked child; log.level and log.debugging), or it is behind a
-- function (spawn.get_start_method), or a part asks to be told
-- (log.on_debugging: the pool swaps apply_async's C fast path for the
-- Lua one, which logs each task, while debugging).

local core, load_part = ...

-- (in a source tree, a stock lua's require may find this file through
-- "./?/init.lua" before it finds luamp.so, and run it with the module's
-- name and the file's path)
if type(core) ~= "table" then
  error(string.format("luamp: require found %s, which is luamp's source, not a module " ..
    "(the module is luamp.so, on package.cpath): run this from another directory", tostring(load_part)), 0)
end

local loaded, loading = {}, {}

local function part(name)
  local exports = loaded[name]
  if exports then return exports end
  if loading[name] then error("luamp: part " .. name .. " requires itself (through the parts it requires)", 2) end
  loading[name] = true
  exports = load_part(name)(core, part)
  loading[name] = nil
  loaded[name] = exports
  return exports
end

local mp = { version = core.version }

mp.Error = part("errors").Error

local current = part("current")
mp.current_process = current.current_process
mp._shutdown = current.shutdown
function mp.cpu_count() return core.cpu_count() end

local log = part("log")
mp.log, mp.log_to_stderr = log.log, log.log_to_stderr

local spawn = part("spawn")
mp.set_start_method, mp.get_start_method = spawn.set_start_method, spawn.get_start_method
mp._spawned = spawn.spawned

local process = part("process")
mp.Process, mp.active_children = process.Process, process.active_children

local channels = part("channels")
mp.Queue, mp.JoinableQueue, mp.Pipe = channels.Queue, channels.JoinableQueue, channels.Pipe

local sync = part("sync")
mp.Lock, mp.RLock, mp.Event = sync.Lock, sync.RLock, sync.Event
mp.Semaphore, mp.BoundedSemaphore = sync.Semaphore, sync.BoundedSemaphore
mp.Condition, mp.Barrier, mp.Value, mp.Array = sync.Condition, sync.Barrier, sync.Value, sync.Array

local manager = part("manager")
mp.Manager, mp.SharedMemory = manager.Manager, manager.SharedMemory

mp.run = part("run").run

mp.Pool = part("pool").Pool
mp.cluster = part("cluster").cluster
mp._node = part("cluster").node_main

local executor = part("executor")
mp.Executor, mp.as_completed, mp.wait = executor.Executor, executor.as_completed, executor.wait

-- Internal: for tests, benchmarks and debugging (doc/format.md).
mp._pipe_ring = core.pipe_ring   -- bytes of a Pipe's ring, each way
mp._encode = core.encode
mp._decode = core.decode
mp._now = core.now
mp._sleep = core.sleep
mp._manager_stats = core.manager_stats   -- a managed object's memory (shdict.h's shd_stats)
mp._counters = core.counters     -- times the C fast paths ran (src/pool.c)
mp._pool_fields = core.pool_fields   -- the Lua fields src/pool.c reads by name

return mp
