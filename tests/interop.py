# SPDX-License-Identifier: MIT
"""interop.py: the Python half of tests/interop.sh.

    interop.py check FILE   reads luamp's messages (lines "id<TAB>hex") and
                            checks each against the value it must decode to
                            with Debian's python3-msgpack, printing
                            "PASS<TAB>name" or "FAIL<TAB>name<TAB>why" lines;
    interop.py write FILE   writes messages packed by python3-msgpack for the
                            luamp half to check.

Equality is strict: int is not float, True is not 1, bytes are not str, and
-0.0 and NaN are told apart by sign and by isnan.
"""
import math
import sys

import msgpack

NAN = float("nan")
INF = float("inf")


def nest(n, innermost):
    v = innermost
    for _ in range(n - 1):
        v = [v]
    return v


# id -> (what the test states, value python must read, whether luamp's bytes
# must equal python's own packing of that value).  Maps are never compared
# byte for byte: key order is Lua's.  NaN neither: its sign bit may differ.
FROM_LUAMP = {
    "nil": ("nil is nil", None, True),
    "true": ("true is True", True, True),
    "false": ("false is False", False, True),
    "int_0": ("0 is int 0", 0, True),
    "int_1": ("1 is int 1", 1, True),
    "int_m1": ("-1 is int -1", -1, True),
    "int_127": ("127 is a positive fixint", 127, True),
    "int_128": ("128 is a uint8", 128, True),
    "int_m32": ("-32 is a negative fixint", -32, True),
    "int_m33": ("-33 is an int8", -33, True),
    "int_65536": ("65536 is a uint32", 65536, True),
    "int_m65537": ("-65537 is an int32", -65537, True),
    "maxinteger": ("math.maxinteger is 2**63-1", 2**63 - 1, True),
    "mininteger": ("math.mininteger is -2**63", -2**63, True),
    "float_1": ("floats stay floats: 1.0", 1.0, True),
    "float_half": ("0.5 is a float", 0.5, True),
    "float_big": ("1e300 is a float", 1e300, True),
    "float_2_63": ("2^63 is a float", 2.0**63, True),
    "neg_zero": ("-0.0 keeps its sign", -0.0, True),
    "nan": ("NaN is NaN", NAN, False),
    "inf": ("inf is inf", INF, True),
    "ninf": ("-inf is -inf", -INF, True),
    "str": ("ASCII is a str", "hello", True),
    "utf8": ("UTF-8 text is a str", "h\u00e9llo \u20ac \U0001f600", True),
    "empty": ("the empty string is a str", "", True),
    "str_long": ("a 400-byte string is a str16", "ab" * 200, True),
    "bin": ("bytes with NUL and 0xff are bin", b"\x00\xff\x01", True),
    "bad_utf8": ("invalid UTF-8 is bin", b"\xc3\x28", True),
    "surrogate": ("an encoded surrogate is bin", b"\xed\xa0\x80", True),
    "array": ("a sequence is a list", [1, 2.5, "three", True], True),
    "big_array": ("a 1000-element sequence is an array16", list(range(1, 1001)), True),
    "empty_table": ("the empty table is an empty map", {}, True),
    "nested": ("nested tables are nested maps and lists",
               {"a": [1, {"b": [{}]}], "c": {"d": "e"}}, False),
    "int_keys": ("a table with a hole is a map with int keys", {1: "a", 3: "c"}, False),
    "mixed": ("a sequence with n is a map", {1: "x", 2: "y", "n": 2}, False),
    "float_key": ("float keys stay floats", {1.5: "f"}, False),
    "bool_key": ("boolean keys stay booleans", {True: 1}, False),
    "deep": ("100 nested tables are 99 nested lists around an empty map", nest(100, {}), True),
}


def float32(x):
    return msgpack.unpackb(msgpack.packb(x, use_single_float=True))


# id -> bytes python writes; tests/interop.sh's Lua half knows what each
# must decode to.
def to_luamp():
    return {
        "nil": msgpack.packb(None),
        "true": msgpack.packb(True),
        "false": msgpack.packb(False),
        "int_0": msgpack.packb(0),
        "int_m1": msgpack.packb(-1),
        "int_m33": msgpack.packb(-33),
        "int_300": msgpack.packb(300),
        "int_big": msgpack.packb(2**62),
        "maxint": msgpack.packb(2**63 - 1),
        "minint": msgpack.packb(-2**63),
        "uint64_max": msgpack.packb(2**64 - 1),
        "float_1": msgpack.packb(1.0),
        "float_third": msgpack.packb(1 / 3),
        "neg_zero": msgpack.packb(-0.0),
        "nan": msgpack.packb(NAN),
        "inf": msgpack.packb(INF),
        "ninf": msgpack.packb(-INF),
        "float32_1_5": msgpack.packb(1.5, use_single_float=True),
        "float32_0_1": msgpack.packb(0.1, use_single_float=True),
        "str": msgpack.packb("h\u00e9llo"),
        "str16": msgpack.packb("x" * 300),
        "bin": msgpack.packb(b"\x00\xff"),
        "bin_empty": msgpack.packb(b""),
        "bin32": msgpack.packb(b"\x01" * 70000),
        "array": msgpack.packb([1, "two", 3.0, None, True]),
        "map": msgpack.packb({"a": 1, "b": None, "c": [1, {"d": {}}]}),
        "int_keys": msgpack.packb({1: "a", 2: "b"}),
        "array16": msgpack.packb(list(range(20))),
        "map16": msgpack.packb({"k%d" % i: i for i in range(20)}),
        "deep": msgpack.packb(nest(100, [])),
    }


def keys(d):
    return sorted((type(k).__name__, repr(k)) for k in d)


def differ(got, want, path="value"):
    """None when got is want, strictly; else a sentence saying where not."""
    if type(got) is not type(want):
        return "%s: got %r (%s), want %r (%s)" % (
            path, got, type(got).__name__, want, type(want).__name__)
    if isinstance(want, float):
        if math.isnan(want) or math.isnan(got):
            ok = math.isnan(want) and math.isnan(got)
        else:
            ok = got == want and math.copysign(1, got) == math.copysign(1, want)
        return None if ok else "%s: got %r, want %r" % (path, got, want)
    if isinstance(want, list):
        if len(got) != len(want):
            return "%s: %d elements, want %d" % (path, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            why = differ(g, w, "%s[%d]" % (path, i))
            if why:
                return why
        return None
    if isinstance(want, dict):
        if keys(got) != keys(want):   # typed: True and 1 are different keys
            return "%s: keys %r, want %r" % (path, keys(got), keys(want))
        for k, w in want.items():
            why = differ(got[k], w, "%s[%r]" % (path, k))
            if why:
                return why
        return None
    return None if got == want else "%s: got %r, want %r" % (path, got, want)


def read_messages(path):
    messages = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                ident, hexbytes = line.rstrip("\n").split("\t")
                messages[ident] = bytes.fromhex(hexbytes)
    return messages


def check(path):
    messages = read_messages(path)
    for ident, (what, want, exact) in FROM_LUAMP.items():
        name = "python reads luamp's bytes: " + what
        raw = messages.get(ident)
        if raw is None:
            why = "luamp wrote no message " + ident
        else:
            try:
                got = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                why = differ(got, want)
            except Exception as e:  # any failure to read is the test failing
                why = "unpackb raised %r" % e
            if why is None and exact and raw != msgpack.packb(want):
                why = "bytes %s, python packs %s" % (raw.hex(), msgpack.packb(want).hex())
        print("PASS\t%s" % name if why is None else "FAIL\t%s\t%s" % (name, why))
    for ident in sorted(set(messages) - set(FROM_LUAMP)):
        print("FAIL\tpython knows every message luamp wrote\tunexpected %s" % ident)


def write(path):
    with open(path, "w") as f:
        for ident, raw in to_luamp().items():
            f.write("%s\t%s\n" % (ident, raw.hex()))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("check", "write"):
        sys.exit("usage: interop.py check|write FILE")
    (check if sys.argv[1] == "check" else write)(sys.argv[2])
