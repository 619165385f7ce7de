# SPDX-License-Identifier: MIT
# examples.sh: every program in examples/ runs under luamp, exits 0 within a
# bounded time, prints what it should, and leaves no process behind.
#
# Expected outputs are worked out here independently of luamp (arithmetic
# in the shell; word counts with tr, sort and uniq), never copied from what
# luamp printed.
. "$top_srcdir/tests/tap.sh"

cd "$top_srcdir" || exit 1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# Processes that still hold file $1 open (any of their descriptors).
holders() {
    for fd in /proc/[0-9]*/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = "$1" ] && echo "${fd#/proc/}"
    done | cut -d/ -f1 | sort -u
}

# run NAME ARGS...: runs "$LUAMP" ARGS... with output to files, not pipes, so
# a child left running cannot keep the test waiting.  Sets $out, $err, $rc.
run() {
    name=$1; shift
    timeout 60 "$LUAMP" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" </dev/null
    rc=$?
    out=$(cat "$tmp/$name.out")
    err=$(cat "$tmp/$name.err")
}

# Every child got a copy of the example's stdout: once the example has
# exited, nobody may still hold it.  Children die with their parent
# (SIGKILL from the kernel), which takes a moment, hence the retries.
no_leftovers() {
    left=$(holders "$tmp/$1.out")
    tries=0
    while [ -n "$left" ] && [ $tries -lt 30 ]; do
        sleep 0.1
        tries=$((tries + 1))
        left=$(holders "$tmp/$1.out")
    done
    is "$left" "" "$1: no process is left running after the example exits"
}

check_ran() { # name
    is "$rc" 0 "$1: exits 0 within 60 s"
    [ "$rc" = 0 ] || printf '%s\n' "$err" | sed 's/^/#   stderr: /'
    no_leftovers "$1"
}

# ---- squares.lua ---------------------------------------------------------
squares=""
sum=0
for i in 1 2 3 4 5 6 7 8 9 10; do
    squares="$squares${squares:+ }$((i * i))"
    sum=$((sum + i * i))
done
run squares examples/squares.lua
check_ran squares
is "$out" "map:         $squares
apply_async: $squares
sum:         $sum" "squares: map and apply_async print the squares of 1..10 and their sum"

# ---- queue_sender_receiver.lua -------------------------------------------
run queue examples/queue_sender_receiver.lua
check_ran queue
is "$out" "received message 1
received message 2
received message 3
received a table from sender: a table travels too
receiver: END seen, stopping
exit codes: sender 0, receiver 0" "queue_sender_receiver: messages arrive in order, then END"

# ---- producer_consumer.lua -----------------------------------------------
P=4 C=3 N=250
count=$((P * N))
checksum=0
for p in $(seq 1 $P); do
    checksum=$((checksum + N * p * 1000 + N * (N + 1) / 2))
done
run producer_consumer examples/producer_consumer.lua
check_ran producer_consumer
is "$out" "$P producers, $C consumers, $N items each
items received: $count (expected $count)
checksum:       $checksum (expected $checksum)
every item received exactly once: yes" "producer_consumer: nothing lost, nothing duplicated"

# ---- pipe.lua ------------------------------------------------------------
run pipe examples/pipe.lua
check_ran pipe
is "$out" "got hello from child (string)
got 42 (integer)
got 42.0 (float)
got { answer = 42, pid_is_positive = true, unit = none }
recv: closed
child exit code: 0" "pipe: values keep their types, then recv says closed"

# ---- wordcount.lua -------------------------------------------------------
# The same count with shell tools: words are runs of ASCII letters,
# lowercased; each file on its own so no word spans two files.
expected_counts() { # dir
    find "$1" -type f -name '*.txt' | while IFS= read -r f; do
        tr -cs 'A-Za-z' '\n' <"$f"
        echo
    done | tr 'A-Z' 'a-z' | grep -v '^$' | LC_ALL=C sort | uniq -c |
        LC_ALL=C sort -k1,1nr -k2,2
}
expected_wordcount() { # dir
    nfiles=$(find "$1" -type f -name '*.txt' | wc -l)
    counts=$(expected_counts "$1")
    nwords=$(printf '%s\n' "$counts" | awk '{ s += $1 } END { print s + 0 }')
    ndistinct=$(printf '%s\n' "$counts" | grep -c .)
    echo "$nfiles files, $nwords words, $ndistinct distinct"
    printf '%s\n' "$counts" | head -10 | awk '{ print $1, $2 }'
}

run wordcount examples/wordcount.lua
check_ran wordcount
want=$(expected_wordcount examples/texts)
is "$out" "$want" "wordcount: top 10 of the shipped corpus, ties alphabetical"
like "$want" "^[3-9] files" "wordcount: the shipped corpus has several files"

# Odd names, a subdirectory, files that are not .txt, an empty file.
odd="$tmp/odd corpus"
mkdir -p "$odd/sub dir"
printf 'Zebra zebra apple\nbanana, Apple; APPLE!\n' >"$odd/it's here.txt"
printf 'banana cherry\nzebra' >"$odd/sub dir/no newline at end.txt"
printf 'cherry cherry cherry cherry cherry\n' >"$odd/not counted.md"
: >"$odd/empty.txt"
run wordcount_odd examples/wordcount.lua "$odd"
check_ran wordcount_odd
is "$out" "$(expected_wordcount "$odd")" "wordcount: names with spaces and quotes, subdirectories, only .txt"

run wordcount_missing examples/wordcount.lua "$tmp/no such dir"
is "$rc" 1 "wordcount: a missing directory exits 1"
like "$err" "cannot list the files under" "wordcount: a missing directory is reported"
no_leftovers wordcount_missing

done_testing
