# SPDX-License-Identifier: MIT
# pty_session.py: runs a program on a pseudo-terminal and types at it, as
# a person at a terminal would; tests/interactive.sh is its user.
#
#   python3 pty_session.py TIMEOUT PROGRAM [ARGS...] < STEPS
#
# Each line of STEPS is an action:
#   send TEXT     types TEXT; \r \003 \004 \033 (and other Python escapes)
#                 stand for Enter, Ctrl-C, Ctrl-D, Escape
#   expect TEXT   waits until the screen shows TEXT after what the last
#                 expect matched (or the start)
#   asleep        waits until the program sleeps (state S in /proc): after
#                 an expect, it has got as far as a blocking wait
#   kill SIG      sends the program signal SIG (TERM, INT...)
# The terminal is 24 rows of $PTY_COLS columns (200 when unset).
# The program gets TIMEOUT seconds for everything; after the last step it
# must exit by itself.  The output is the screen as the person saw it:
# what the program wrote, with carriage returns, backspaces and the usual
# VT100 cursor and erase sequences applied, and colours and modes
# dropped.  Then a line "exit N" (or "signal N"), or "timeout: ..." and
# exit status 1 when the program did not show what was expected or did
# not end.
import codecs
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import fcntl
import time

ROWS, COLS = 24, int(os.environ.get("PTY_COLS", "200"))
CSI = re.compile(rb"\x1b\[([0-9;?]*)([ -/]*)([@-~])")
OSC = re.compile(rb"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


def render(data):
    """The screen lines that data, written to a terminal, leaves."""
    lines, row, col = [[]], 0, 0
    i = 0

    def line():
        while len(lines) <= row:
            lines.append([])
        return lines[row]

    while i < len(data):
        c = data[i:i + 1]
        if c == b"\x1b":
            m = CSI.match(data, i) or OSC.match(data, i)
            if m is None:
                i += 2                  # ESC = / ESC > and the like
                continue
            i = m.end()
            if m.re is OSC:
                continue
            params, final = m.group(1).decode(), m.group(3).decode()
            n = int(params) if params.isdigit() else None
            cur = line()
            if final == "K":
                if n in (None, 0):
                    del cur[col:]
                elif n == 2:
                    cur.clear()
                else:
                    cur[:col] = [" "] * min(col, len(cur))
            elif final == "C":
                col += n or 1
            elif final == "D":
                col = max(0, col - (n or 1))
            elif final == "A":
                row = max(0, row - (n or 1))
            elif final == "B":
                row += n or 1
            elif final == "G":
                col = (n or 1) - 1
            elif final == "P":
                del cur[col:col + (n or 1)]
            elif final == "@":
                cur[col:col] = [" "] * (n or 1)
            elif final == "J" and n in (None, 0):
                del cur[col:]
                del lines[row + 1:]
            continue                    # m (colours), h and l (modes)
        i += 1
        if c == b"\r":
            col = 0
        elif c == b"\n":
            row += 1
            line()
        elif c == b"\b":
            col = max(0, col - 1)
        elif c == b"\x07":
            pass
        else:
            cur = line()
            while len(cur) < col:
                cur.append(" ")
            if col < len(cur):
                cur[col] = c.decode("latin-1")
            else:
                cur.append(c.decode("latin-1"))
            col += 1
    return "\n".join("".join(l) for l in lines)


def state(pid):
    """The process state letter of pid (R, S, ...), from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def main():
    timeout = float(sys.argv[1])
    argv = sys.argv[2:]
    steps = [l.rstrip("\n").split(" ", 1) for l in sys.stdin if l.strip()]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    deadline = time.monotonic() + timeout
    out = bytearray()
    seen = 0                            # screen text an expect matched

    def read_some(wait):
        r, _, _ = select.select([fd], [], [], max(0.0, wait))
        if not r:
            return True
        try:
            chunk = os.read(fd, 4096)
        except OSError:                 # EIO: the program closed the terminal
            return False
        out.extend(chunk)
        return bool(chunk)

    def fail(why):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(render(bytes(out)))
        print("timeout: " + why)
        sys.exit(1)

    for action, *arg in steps:
        text = codecs.decode(arg[0] if arg else "", "unicode_escape")
        if action == "send":
            os.write(fd, text.encode("latin-1"))
        elif action == "expect":
            while True:
                screen = render(bytes(out))
                at = screen.find(text, seen)
                if at >= 0:
                    seen = at + len(text)
                    break
                if time.monotonic() > deadline:
                    fail("never saw %r" % text)
                if not read_some(deadline - time.monotonic()):
                    fail("the program ended before showing %r" % text)
        elif action == "kill":
            os.kill(pid, getattr(signal, "SIG" + text))
        elif action == "asleep":
            while state(pid) != "S":
                if time.monotonic() > deadline:
                    fail("the program never slept")
                read_some(0.01)
        else:
            sys.exit("pty_session.py: unknown action %r" % action)
    while read_some(deadline - time.monotonic()):
        if time.monotonic() > deadline:
            fail("the program did not end")
    _, status = os.waitpid(pid, 0)
    print(render(bytes(out)))
    if os.WIFSIGNALED(status):
        print("signal %d" % os.WTERMSIG(status))
    else:
        print("exit %d" % os.WEXITSTATUS(status))


main()
