/* SPDX-License-Identifier: MIT */
/*
 * sandbox.h - the Lua code that makes a state safe to fuzz in, shared by
 * the fuzz targets (fuzz_common.h) and the replay of fuzz/regressions in
 * tests/test_codec.c, so that regressions replay as they ran.
 *
 * What an untrusted message can reach is every loaded module and every
 * C function in one (NAMED).  Decoding only resolves names, but a
 * decoded table's metatable may hold such functions (__gc, __luamp_ref,
 * __lt, __call...), which the GC and the encoder then call with the
 * table, or with its elements through table.sort and the like.  So the
 * state has no function that touches files, processes, the locale, the
 * terminal or the collector, and `require` finds nothing on disk:
 * fuzzing stays hermetic and deterministic whatever the inputs build.
 * (io.stdin/stdout/stderr stay: userdata the encoder refuses.)
 */
#ifndef LUAMP_FUZZ_SANDBOX_H
#define LUAMP_FUZZ_SANDBOX_H

#define FUZZ_SANDBOX \
    "package.path, package.cpath = '', ''\n" \
    "package.loadlib = nil\n" \
    "for _, k in ipairs{'close', 'input', 'lines', 'open', 'output', 'popen',\n" \
    "                   'read', 'tmpfile', 'write'} do io[k] = nil end\n" \
    "for _, k in ipairs{'execute', 'exit', 'remove', 'rename', 'setlocale',\n" \
    "                   'tmpname'} do os[k] = nil end\n" \
    "for _, k in ipairs{'debug', 'sethook', 'setmetatable'} do debug[k] = nil end\n" \
    "dofile, loadfile, load, print, collectgarbage = nil, nil, nil, nil, nil\n"

#endif
