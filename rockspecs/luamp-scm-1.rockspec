-- SPDX-License-Identifier: MIT
-- luarocks make rockspecs/luamp-scm-1.rockspec, in a checkout: builds
-- luamp with its own autotools build (Debian: autoconf automake libtool
-- pkg-config liblua5.4-dev) and installs the module luamp.so, for
-- require "luamp" from lua5.4, and the luamp command.  Nothing is
-- downloaded: luamp needs only Lua 5.4 and the C library.
rockspec_format = "3.0"
package = "luamp"
version = "scm-1"
source = {
   url = "git+file://.",   -- (luarocks make builds the checkout it runs in)
}
description = {
   summary = "Python's multiprocessing for Lua 5.4: pools, queues, pipes and futures on every core",
   detailed = [[
      luamp forks worker processes, each with its own Lua VM, and hands
      them work through pools (map, imap, apply_async), queues, pipes,
      locks, shared values and an executor with futures.  Arguments,
      results and functions (bytecode and upvalues) travel as MessagePack.
   ]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "command",
   build_command = [[autoreconf -fi && ./configure --prefix="$(PREFIX)" && make]],
   install_command = [[true]],
   install = {
      lib = { luamp = "src/.libs/luamp.so" },
      bin = { luamp = "src/luamp" },
   },
   copy_directories = { "doc", "man", "examples" },
}
