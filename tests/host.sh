# SPDX-License-Identifier: MIT
# host.sh: the luamp binary's command line, as a user meets it: options,
# the arg table, LUA_INIT, the REPL, error messages and exit statuses.
. "$top_srcdir/tests/tap.sh"

unset LUA_INIT LUA_INIT_5_4
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# run CMD...: runs CMD with empty stdin; sets $out, $err and $rc.
run() {
    "$@" </dev/null >"$tmp/out" 2>"$tmp/err"
    rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}
# feed INPUT CMD...: same, with INPUT (and a newline) on stdin.
feed() {
    input=$1
    shift
    printf '%s\n' "$input" | "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}
tab=$(printf '\t')

# --- scripts and the arg table -------------------------------------------
cat >"$tmp/args.lua" <<'EOF'
print(arg[0], arg[1], arg[2], #arg)
print(select("#", ...), ...)
EOF
run "$LUAMP" "$tmp/args.lua" one two
is "$rc" 0 "a script that ends normally exits 0"
is "$out" "$tmp/args.lua${tab}one${tab}two${tab}2
2${tab}one${tab}two" "a script gets arg[0], arg[1..] and its arguments as ..."

run "$LUAMP" -e 'x = 1' "$tmp/args.lua" -e two
is "$out" "$tmp/args.lua${tab}-e${tab}two${tab}2
2${tab}-e${tab}two" "options after the script name are the script's arguments"

cat >"$tmp/neg.lua" <<'EOF'
print(arg[-3] == os.getenv("LUAMP"), arg[-2], arg[-1], arg[-4])
EOF
run "$LUAMP" -e 'x = 1' "$tmp/neg.lua"
is "$out" "true${tab}-e${tab}x = 1${tab}nil" "arg keeps the interpreter and options at negative indices"

run "$LUAMP" -e 'print(arg[0] == os.getenv("LUAMP"), arg[1], arg[2])'
is "$out" "true${tab}-e${tab}print(arg[0] == os.getenv(\"LUAMP\"), arg[1], arg[2])" \
    "without a script, arg[0] is the interpreter and the options follow"

run "$LUAMP" -e 'X = 7' -e 'print(arg[0])' "$tmp/args.lua"
is "$(printf '%s\n' "$out" | head -1)" "$tmp/args.lua" "-e code sees the arg table of the script to come"

# --- -e ---------------------------------------------------------------------
run "$LUAMP" -e 'io.write("a")' -e'io.write("b")' -e 'print("c")'
is "$out" "abc" "several -e run in command-line order, attached or not"

printf 'print(X)\n' >"$tmp/x.lua"
run "$LUAMP" -e 'X = 42' "$tmp/x.lua"
is "$out" "42" "-e runs before the script"

run "$LUAMP" -e 'error("first")' -e 'print("second")'
is "$rc:$out" "1:" "an error in -e stops everything after it"

run "$LUAMP" -e
is "$rc" 2 "-e without code is a usage error (exit 2)"
like "$err" "^luamp: '-e' needs argument" "-e without code says what is missing"

# --- -l ---------------------------------------------------------------------
mkdir "$tmp/lib"
printf 'return { hello = "hi from greet" }\n' >"$tmp/lib/greet.lua"
run env LUA_PATH="$tmp/lib/?.lua" "$LUAMP" -l greet -e 'print(greet.hello)'
is "$out" "hi from greet" "-l mod requires mod into the global mod"

run env LUA_PATH="$tmp/lib/?.lua" "$LUAMP" -l g=greet -e 'print(g.hello, greet)'
is "$out" "hi from greet${tab}nil" "-l g=mod requires mod into the global g"

run env LUA_PATH="$tmp/lib/?.lua" "$LUAMP" -e 'print(greet)' -lgreet -e 'print(greet.hello)'
is "$out" "nil
hi from greet" "-l and -e act in command-line order"

run "$LUAMP" -l 'no"such' -e 'print("ran")'
is "$rc:$out" "1:" "a -l module that does not exist exits 1 and runs nothing after"
like "$err" "^luamp: .*module 'no\"such' not found" "a missing -l module is named in the error"

# --- -j ---------------------------------------------------------------------
getdefault='print(debug.getregistry()["luamp.default_processes"], math.type(debug.getregistry()["luamp.default_processes"]))'
run "$LUAMP" -j 3 -e "$getdefault"
is "$out" "3${tab}integer" "-j 3 stores the integer 3 as the default pool size"

run "$LUAMP" -j 3 -e 'local mp = require "luamp"; local p <close> = mp.Pool(); print(p.processes, #p:map(function(x) return x end, {1, 2, 3, 4}))'
is "$out" "3${tab}4" "-j 3 makes Pool() start 3 workers"

run "$LUAMP" -j12 -e "$getdefault"
is "$out" "12${tab}integer" "-jN works attached"

run "$LUAMP" -e "$getdefault"
is "$out" "nil${tab}nil" "without -j no default pool size is stored"

for bad in 0 -3 x 3x ''; do
    run "$LUAMP" -j "$bad" -e 'print("ran")'
    is "$rc:$out" "2:" "-j '$bad' is a usage error (exit 2) and runs nothing"
done
like "$err" "^luamp: '-j' needs a positive integer, got ''" "a bad -j value is quoted in the message"
run "$LUAMP" -j
like "$rc:$err" "^2:luamp: '-j' needs argument" "-j without a value is a usage error"

# --- -v, -h, bad options ------------------------------------------------------
feed 'print("stdin ran")' "$LUAMP" -v
like "$out" '^luamp 0\.1\.0 \(Lua 5\.4\.[0-9]+\)$' \
    "-v prints 'luamp 0.1.0 (Lua 5.4.x)' and does not run stdin"
is "$rc" 0 "-v exits 0"

run "$LUAMP" -v -e 'print("after")'
like "$out" '^luamp 0\.1\.0 .*
after$' "-v prints the version, then the other options run"

run "$LUAMP" -h
is "$rc" 0 "-h exits 0"
like "$out" "^usage: luamp \[options\] \[script \[args\.\.\.\]\]" "-h prints the usage on stdout"
like "$out" "-j N" "the usage lists -j"
like "$out" "^  -E  " "the usage lists -E"
like "$out" "^  -W  " "the usage lists -W"

run "$LUAMP" -e 'print("ran")' -x
is "$rc" 2 "an unknown option exits 2"
is "$out" "" "a usage error runs none of the options before it"
like "$err" "^luamp: unrecognized option '-x'" "an unknown option is named"
like "$err" "usage: luamp" "a usage error prints the usage on stderr"

run "$LUAMP" -vx
is "$rc:$(printf '%s\n' "$err" | head -1)" "2:luamp: unrecognized option '-vx'" "flags do not combine (-vx is unknown)"

# --- stdin and -- -------------------------------------------------------------
feed 'print(arg[0], ...)' "$LUAMP" - a b
is "$out" "-${tab}a${tab}b" "- runs the script from stdin with its arguments"

feed 'print("from stdin")' "$LUAMP"
is "$rc:$out" "0:from stdin" "with no script and stdin not a terminal, stdin is the script"

feed 'print("from stdin")' "$LUAMP" -e 'print("e")'
is "$out" "e" "with -e and no script, stdin is not read"

printf 'print("dash file", ...)\n' >"$tmp/-x.lua"
run "$LUAMP" -- "$tmp/-x.lua" -v
is "$out" "dash file${tab}-v" "-- ends the options: the next word is the script"

# --- errors -------------------------------------------------------------------
printf 'local x = 1\nerror("boom")\n' >"$tmp/boom.lua"
run "$LUAMP" "$tmp/boom.lua"
is "$rc" 1 "a runtime error exits 1"
is "$(printf '%s\n' "$err" | head -1)" "luamp: $tmp/boom.lua:2: boom" "a runtime error prints 'luamp: file:line: message'"
like "$err" "stack traceback:" "a runtime error prints a traceback"
is "$err" "luamp: $tmp/boom.lua:2: boom
stack traceback:
${tab}[C]: in function 'error'
${tab}$tmp/boom.lua:2: in main chunk
${tab}[C]: in ?" "a script's traceback ends with the main chunk and one '[C]: in ?', as lua's does"

run "$LUAMP" -e 'error("x")'
is "$err" "luamp: (command line):1: x
stack traceback:
${tab}[C]: in function 'error'
${tab}(command line):1: in main chunk
${tab}[C]: in ?" "the traceback of an error in -e ends with one '[C]: in ?'"

printf 'x = = 1\n' >"$tmp/syntax.lua"
run "$LUAMP" "$tmp/syntax.lua"
is "$rc" 1 "a syntax error exits 1"
like "$err" "^luamp: $tmp/syntax.lua:1: unexpected symbol near '='" "a syntax error names file and line"

run "$LUAMP" -e 'error(setmetatable({}, {__tostring = function() return "custom error" end}))'
like "$rc:$err" "^1:luamp: custom error
stack traceback:" "an error object with __tostring is shown through it, with a traceback"

run "$LUAMP" -e 'error({})'
like "$rc:$err" "^1:luamp: \(error object is a table value\)" "an error object without __tostring is described"

# The library's Lua parts are compiled in under the names of their files
# (lua/luamp/), so a traceback through the library says where to look.
cat >"$tmp/closed.lua" <<'EOF'
local mp = require "luamp"
local pool = mp.Pool(1)
pool:close()
pool:map(function(x) return x end, {1})
EOF
run "$LUAMP" "$tmp/closed.lua"
like "$rc:$err" "^1:luamp: cannot map: the Pool is closed" "an error raised inside the library ends the script with its message"
like "$err" "^${tab}luamp/pool\.lua:[0-9]+: in " "its traceback names the library's file and line (luamp/pool.lua)"
like "$err" "^${tab}$tmp/closed\.lua:4: in main chunk" "and then the script's line that called the library"

run "$LUAMP" "$tmp/nope.lua"
is "$rc:$err" "1:luamp: cannot open $tmp/nope.lua: No such file or directory" \
    "a missing script exits 1 and says which file and why"

run "$LUAMP" -e 'os.exit(3)'
is "$rc" 3 "os.exit chooses the exit status"

# --- LUA_INIT -----------------------------------------------------------------
run env LUA_INIT='X = "init"' "$LUAMP" -e 'print(X)'
is "$out" "init" "LUA_INIT code runs before -e"

printf 'Y = "from file"\n' >"$tmp/init.lua"
run env LUA_INIT="@$tmp/init.lua" "$LUAMP" -e 'print(Y)'
is "$out" "from file" "LUA_INIT=@file runs the file"

run env LUA_INIT='X = "plain"' LUA_INIT_5_4='X = "versioned"' "$LUAMP" -e 'print(X)'
is "$out" "versioned" "LUA_INIT_5_4 takes precedence over LUA_INIT"

run env LUA_INIT="@$tmp/init.lua" "$LUAMP" -e 'print(arg[1])'
is "$out" "-e" "LUA_INIT=@file leaves the arg table alone"

run env LUA_INIT='error("bad init")' "$LUAMP" -e 'print("ran")'
like "$rc:$out:$err" "^1::luamp: LUA_INIT:1: bad init" "an error in LUA_INIT exits 1 before the options run"

# --- -E and -W ----------------------------------------------------------------
run env LUA_INIT='print("init")' LUA_INIT_5_4='print("init 5.4")' "$LUAMP" -E -e 'print("e")'
is "$rc:$out" "0:e" "-E skips LUA_INIT and LUA_INIT_5_4"

showpaths='print(package.path) print(package.cpath)'
run env -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4 "$LUAMP" -e "$showpaths"
defaults=$out
run env LUA_PATH='/nowhere/?.lua' LUA_PATH_5_4='/nowhere54/?.lua' LUA_CPATH='/nowhere/?.so' \
    LUA_CPATH_5_4='/nowhere54/?.so' "$LUAMP" -E -e "$showpaths"
is "$out" "$defaults" "-E gives package.path and cpath the defaults, whatever LUA_PATH and LUA_CPATH say"
if [ -n "$LUA54" ]; then
    is "$(env LUA_PATH='/nowhere/?.lua' LUA_CPATH='/nowhere/?.so' "$LUA54" -E -e "$showpaths")" "$out" \
        "-E gives the paths lua5.4 -E gives"
else
    skip "-E gives the paths lua5.4 -E gives" "no lua5.4"
fi

run env LUA_PATH="$tmp/lib/?.lua" "$LUAMP" -E -l greet
like "$rc:$err" "^1:luamp: .*module 'greet' not found" "with -E, a module only LUA_PATH finds is not found"

run env LUA_CPATH='/nowhere/?.so' "$LUAMP" -E -e 'print(debug.getregistry().LUA_NOENV, type(require "luamp"))'
is "$out" "true${tab}table" "-E sets LUA_NOENV in the registry, and luamp is still there to require"

run "$LUAMP" -Ex
is "$rc" 2 "-E takes nothing after it (-Ex is unknown)"

run "$LUAMP" -W -e 'warn("careful")'
is "$rc:$err" "0:Lua warning: careful" "-W turns warnings on"

run "$LUAMP" -e 'warn("careful")'
is "$err" "" "without -W, warnings are off"

run "$LUAMP" -e 'warn("before")' -W -e 'warn("after")'
is "$err" "Lua warning: after" "-W acts in its turn among the -e and -l options"

# --- -i -----------------------------------------------------------------------
banner=$("$LUAMP" -v)
feed '1 + 1
x = 5
x * 2, "two"
for i = 1, 3 do
  io.write(i)
end
print()
error("oops")
"still here"' "$LUAMP" -i
is "$out" "$banner
> 2
> > 10${tab}two
> >> >> 123> 
> > still here
> " "-i prints expressions, runs statements over several lines, with the banner and prompts when piped, as lua -i does"
like "$err" "^luamp: stdin:1: oops" "-i shows an error with the luamp: prefix and goes on"
is "$rc" 0 "-i exits 0 at the end of input"

printf 'G = "set by script"\n' >"$tmp/g.lua"
feed 'G' "$LUAMP" -i "$tmp/g.lua"
is "$out" "$banner
> set by script
> " "-i enters the REPL after the script, in its globals"

feed '=1 + 2' "$LUAMP" -i
is "$out" "$banner
> 3
> " "-i: a line '=expr' prints expr, as in lua"

feed '_PROMPT = "lua$ "; _PROMPT2 = setmetatable({}, {__tostring = function() return "...$ " end})
if true then
print("in")
end' "$LUAMP" -i
is "$out" "$banner
> lua$ ...$ ...$ in
lua$ " "-i prompts with _PROMPT and _PROMPT2 (through tostring) when they are set"

feed 'for i = 1, 2 do' "$LUAMP" -i
like "$rc:$err" "^0:luamp: stdin:1: 'end' expected near <eof>" "-i reports a statement the input ended in the middle of"

feed 'type(mp), mp == require "luamp", mp.cpu_count() > 0' "$LUAMP" -i
is "$out" "$banner
> table${tab}true${tab}true
> " "-i: mp is a global, as if mp = require \"luamp\" had run"

printf 'mp = "the script'"'"'s own"\n' >"$tmp/mp.lua"
feed 'mp' "$LUAMP" -i "$tmp/mp.lua"
is "$out" "$banner
> the script's own
> " "-i leaves a global mp the script set alone"

run "$LUAMP" -e 'print(mp)'
is "$out" "nil" "without -i, mp is not a global"

# (TERM=dumb: a line editor, if luamp has one, then writes no escape codes;
# tests/interactive.sh types at the REPL on a terminal in earnest.)
if command -v script >/dev/null 2>&1; then
    out=$(printf '6 * 7\n' | TERM=dumb script -qec "$LUAMP" /dev/null 2>&1)
    like "$out" "luamp 0\.1\.0 \(Lua" "on a terminal, no script means the REPL, with a banner"
    like "$out" "^> " "on a terminal, the REPL prompts with '> '"
    like "$out" "42" "on a terminal, the REPL prints results"
else
    skip "on a terminal, no script means the REPL, with a banner" "no script(1) to make a terminal"
    skip "on a terminal, the REPL prompts with '> '" "no script(1) to make a terminal"
    skip "on a terminal, the REPL prints results" "no script(1) to make a terminal"
fi

# --- SIGPIPE --------------------------------------------------------------------
{ "$LUAMP" -e 'for i = 1, 1e6 do io.write(("x"):rep(100), "\n") end' 2>"$tmp/err"
  echo $? >"$tmp/rc"; } | head -1 >"$tmp/out"
rc=$(cat "$tmp/rc")
unlike "$rc" "^141$" "writing to a closed pipe does not kill luamp with SIGPIPE"
is "$rc:$(cat "$tmp/err")" "1:luamp: cannot write to standard output: Broken pipe" \
    "output luamp could not deliver at the end is reported, with exit 1"
is "$(cat "$tmp/out")" "$(printf '%0100d' 0 | tr 0 x)" "the reader got the first line"

{ "$LUAMP" -e 'repeat ok, msg = io.write(("x"):rep(100), "\n") until not ok; io.stderr:write(msg)' \
    2>"$tmp/err"; } | head -1 >/dev/null
like "$(cat "$tmp/err")" "^Broken pipe" "writing to a closed pipe is an error the script sees"

run "$LUAMP" -e 'print(os.execute("kill -PIPE $$"))'
is "$out" "nil${tab}signal${tab}13" "commands started by the script keep the default SIGPIPE"

# --- the module -----------------------------------------------------------------
run "$LUAMP" -e 'local mp = require "luamp"; print(type(mp), package.loaded.luamp == mp)'
is "$out" "table${tab}true" "require \"luamp\" works in the host (preloaded)"

# --- malloc: freed memory is kept for the next messages ------------------
# 16 MiB of 64 KiB strings, freed, then made again: glibc's defaults give
# the freed top of the heap back and fault it in again (4,096 pages); the
# binary keeps it.  A setting in the environment wins.
cat >"$tmp/refill.lua" <<'EOF'
local function minflt()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("%) %S+ %S+ %S+ %S+ %S+ %S+ %S+ (%d+)"))
end
local function fill()
  local t = {}
  for i = 1, 256 do t[i] = string.rep(string.char(65 + i % 26), 65536) end
  return t
end
local t = fill()
t = nil
collectgarbage()
collectgarbage()
local f0 = minflt()
t = fill()
print(minflt() - f0)
EOF
if [ -n "$SANITIZERS" ]; then
    skip "freed heap memory is kept for reuse" "sanitizer build: ASan has its own allocator"
    skip "a malloc setting in the environment wins" "sanitizer build: ASan has its own allocator"
else
    run "$LUAMP" "$tmp/refill.lua"
    faults=$out
    [ "$rc" = 0 ] && [ "$faults" -lt 1024 ]
    tap_report $? "freed heap memory is kept for reuse ($faults page faults to make 16 MiB again)"
    run env MALLOC_TRIM_THRESHOLD_=131072 "$LUAMP" "$tmp/refill.lua"
    [ "$rc" = 0 ] && [ "$out" -ge 2048 ]
    tap_report $? "a malloc setting in the environment wins ($out page faults)"
fi

done_testing
