# SPDX-License-Identifier: MIT
# interactive.sh: luamp's interactive mode at a terminal, typed at through
# a pseudo-terminal (tests/pty_session.py): prompts, mp without require,
# Ctrl-C at the prompt and while a line computes or waits, Ctrl-D, SIGTERM,
# and recalling a line with the up arrow when line editing is built in
# ($LINE_EDITING, from configure: libedit, gnu or none).
. "$top_srcdir/tests/tap.sh"

if [ -z "$PYTHON3" ] || ! "$PYTHON3" -c 'import pty' 2>/dev/null; then
    skip "the interactive mode at a terminal" "no python3 to drive a pseudo-terminal"
    done_testing
fi

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# No user's settings: no LUA_INIT, an empty ~/.inputrc and ~/.editrc, and
# a terminal without cursor keys of its own.
unset LUA_INIT LUA_INIT_5_4
: >"$tmp/inputrc"
: >"$tmp/editrc"
export HOME="$tmp" INPUTRC="$tmp/inputrc" EDITRC="$tmp/editrc" TERM=dumb

banner=$("$LUAMP" -v)
tab=$(printf '\t')

# session STEPS COMMAND...: runs COMMAND on a terminal, typing STEPS (see
# pty_session.py); sets $screen to what the terminal showed, without the
# last line, and $ended to that line ("exit N", or why it timed out).
# (An expect must not match what was typed: a key sent too early, while
# the line still runs, can be lost in the editor's switch of terminal mode.)
# libedit echoes Ctrl-D as ^D at the prompt; GNU readline and the terminal
# itself do not: the ^D is dropped.
session() {
    steps=$1
    shift
    printf '%s\n' "$steps" | timeout 60 "$PYTHON3" "$top_srcdir/tests/pty_session.py" 30 "$@" \
        >"$tmp/screen" 2>&1
    ended=$(tail -n 1 "$tmp/screen")
    screen=$(sed -e '$d' -e 's/^> ^D$/> /' "$tmp/screen")
}

# --- typing lines -------------------------------------------------------------
session 'expect > 
send 6 * 7\r
expect 42
expect > 
send mp.cpu_count() > 0, type(mp.Pool)\r
expect function
expect > 
send \004' "$LUAMP" -i
is "$screen" "$banner
> 6 * 7
42
> mp.cpu_count() > 0, type(mp.Pool)
true${tab}function
> " "at a terminal, -i shows the banner and prompts, prints results, and mp is there without require"
is "$ended" "exit 0" "Ctrl-D at the prompt ends the session with exit status 0"

session 'expect > 
send x = 1\r
expect > 
send \004' "$LUAMP"
is "$ended:$(printf '%s\n' "$screen" | head -n 2)" "exit 0:$banner
> x = 1" "luamp with no script at a terminal is the interactive mode"

# --- Ctrl-C at the prompt -----------------------------------------------------
session 'expect > 
send abc
expect abc
send \003
expect > 
send for i = 1, 2 do\r
expect >> 
send \003
expect > 
send "still" .. " here"\r
expect still here
expect > 
send \004' "$LUAMP" -i
is "$screen" "$banner
> abc^C
> for i = 1, 2 do
>> ^C
> \"still\" .. \" here\"
still here
> " "Ctrl-C at the prompt drops the line, or the statement, being typed and prompts again"
unlike "$screen" "Interrupted system call|error object|interrupted by" "Ctrl-C at the prompt is no error"
is "$ended" "exit 0" "the session goes on after Ctrl-C at the prompt, to exit 0"

# The same without line editing: standard output is not the terminal, so
# lines are read with fgets (what the terminal shows is its own echo, and
# standard error).  Once -e has run and luamp sleeps, it waits at the prompt.
session 'expect ready
asleep
send abc
expect abc
send \003
expect ^C
send 2 + 3\r
expect 2 + 3
send \004' sh -c 'exec "$0" -e "io.stderr:write(\"rea\" .. \"dy\\n\")" -i >"$1"' "$LUAMP" "$tmp/out"
is "$ended:$(cat "$tmp/out")" "exit 0:$banner
> 
> 5
> " "without line editing, Ctrl-C at the prompt drops the line and prompts again"

# --- Ctrl-C while a line runs ---------------------------------------------------
session 'expect > 
send print("spin" .. "ning") while true do end\r
expect spinning
send \003
expect interrupted by SIGINT
expect > 
send 1 + 1\r
expect 2
expect > 
send \004' "$LUAMP" -i
is "$(printf '%s\n' "$screen" | grep -c 'luamp: interrupted by SIGINT$')" 1 \
    "Ctrl-C while a line computes interrupts it with an error of kind interrupted"
after=$(printf '%s\n' "$screen" | sed -n '/interrupted by SIGINT$/,$p')
is "$(printf '%s\n' "$after" | sed -n 2p):$(printf '%s\n' "$after" | tail -n 5)" "stack traceback::${tab}stdin:1: in main chunk
${tab}[C]: in ?
> 1 + 1
2
> " "the interrupted line's traceback ends as any other, and the REPL prompts again"
is "$ended" "exit 0" "the session goes on after an interrupted line, to exit 0"

# (asleep: the line has got as far as waiting on the queue.)
session 'expect > 
send print("wait" .. "ing") mp.Queue():get()\r
expect waiting
asleep
send \003
expect interrupted by SIGINT
expect > 
send \004' "$LUAMP" -i
is "$(printf '%s\n' "$screen" | grep -c 'luamp: interrupted by SIGINT$')" 1 \
    "Ctrl-C while a line waits on a Queue interrupts it with an error of kind interrupted"
is "$(printf '%s\n' "$screen" | tail -n 2)" "${tab}[C]: in ?
> " "after the interrupted wait, the REPL prompts again"
is "$ended" "exit 0" "the session goes on after an interrupted wait, to exit 0"

# --- SIGTERM at the prompt ---------------------------------------------------------
session 'expect > 
send abc
expect abc
asleep
kill TERM
' "$LUAMP" -i
is "$ended:$screen" "exit 1:$banner
> abc
luamp: interrupted by SIGTERM" "SIGTERM at the prompt ends the session with exit status 1"

# --- history ---------------------------------------------------------------------
if [ "${LINE_EDITING:-none}" = none ]; then
    skip "the up arrow recalls the last statement" "luamp was built without line editing"
else
    session 'expect > 
send 6 * 7\r
expect 42
expect > 
send for i = 1, 2 do\r
expect >> 
send print(i * 10)\r
expect >> 
send end\r
expect 20
expect > 
send \033[A
expect end
send \r
expect 20
expect > 
send \033[A\033[A\033[A
expect 6 * 7
send \r
expect 42
expect > 
send \004' "$LUAMP" -i
    is "$ended:$(printf '%s\n' "$screen" | grep -c '^42$'):$(printf '%s\n' "$screen" | grep -c '^20$')" \
        "exit 0:2:2" "the up arrow recalls statements, of one line or several, to run again ($LINE_EDITING)"
fi

done_testing
