-- luamp/init.lua: the module, assembled from its parts.
--
-- How the parts are found.  Every lua/luamp/*.lua is compiled into the
-- library and the binary (tools/bin2c makes src/luamp_lua.c, a table of
-- names and sources), and none is installed as a file: a stock lua5.4
-- gets luamp only through luamp.so, so the Lua side always matches the C
-- core it runs on, and nothing on package.path can stand in for a part.
-- luaopen_luamp (src/module.c) runs this chunk with the C core and
-- load_part(name), which compiles lua/luamp/NAME.lua under the chunk name
-- "=luamp/NAME.lua": errors and tracebacks say `luamp/pool.lua:123:`.
-- part(name), below, runs a part once, with the core and part itself,
-- and keeps what it returns, as require does, but outside package.loaded:
-- no other chunk can see or replace a part.  A part names the parts it
-- uses at its top, `local errors = part("errors")`, so the order in which
-- they load follows from that alone, and a cycle is an error.

local core, load_part = ...

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

return part("luamp")
