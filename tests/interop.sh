# SPDX-License-Identifier: MIT
# interop.sh: luamp's plain values are standard MessagePack.  luamp encodes
# values that Debian's python3-msgpack must read back exactly (int vs float,
# -0.0, NaN, inf, bin vs str, nested maps and lists, big and negative ints),
# and luamp decodes what python3-msgpack packs (float32, uint64, nil in
# arrays and maps too).  Bytes travel as hex in files; tests/interop.py is
# the Python half.  Needs $LUAMP and $top_srcdir (Makefile.am); $PYTHON3 is
# used when it has msgpack, else /usr/bin/python3.
. "$top_srcdir/tests/tap.sh"

py=
for candidate in "$PYTHON3" /usr/bin/python3; do
    if [ -n "$candidate" ] && "$candidate" -c 'import msgpack' 2>/dev/null; then
        py=$candidate
        break
    fi
done
if [ -z "$py" ]; then
    skip "interop with python3-msgpack" "no python3 with the msgpack module"
    done_testing
fi

dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT

# Turns "PASS<TAB>name" / "FAIL<TAB>name<TAB>why" lines into TAP.
report() {
    while IFS='	' read -r status name why; do
        if [ "$status" = PASS ]; then tap_report 0 "$name"
        else tap_report 1 "$name" "$why"; fi
    done < "$1"
}

# Runs a half and reports its lines; a half that fails is a failure too.
half() { # name file command...
    name=$1 out=$2
    shift 2
    if "$@" > "$out" 2> "$dir/stderr"; then tap_report 0 "$name"
    else tap_report 1 "$name" "$(cat "$out" "$dir/stderr")"; fi
}

cat > "$dir/write.lua" <<'EOF'
-- Writes one message per line: id, a tab, the message in hex.
local mp = require "luamp"
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
local deep = {}
for _ = 2, 100 do deep = {deep} end
local big = {}
for i = 1, 1000 do big[i] = i end
local cases = {
  {"nil", nil}, {"true", true}, {"false", false},
  {"int_0", 0}, {"int_1", 1}, {"int_m1", -1}, {"int_127", 127}, {"int_128", 128},
  {"int_m32", -32}, {"int_m33", -33}, {"int_65536", 65536}, {"int_m65537", -65537},
  {"maxinteger", math.maxinteger}, {"mininteger", math.mininteger},
  {"float_1", 1.0}, {"float_half", 0.5}, {"float_big", 1e300}, {"float_2_63", 2.0^63},
  {"neg_zero", -0.0}, {"nan", 0/0}, {"inf", math.huge}, {"ninf", -math.huge},
  {"str", "hello"}, {"utf8", "h\u{e9}llo \u{20ac} \u{1f600}"}, {"empty", ""},
  {"str_long", string.rep("ab", 200)},
  {"bin", "\0\255\1"}, {"bad_utf8", "\xc3\x28"}, {"surrogate", "\xed\xa0\x80"},
  {"array", {1, 2.5, "three", true}}, {"big_array", big}, {"empty_table", {}},
  {"nested", {a = {1, {b = {{}}}}, c = {d = "e"}}},
  {"int_keys", {[1] = "a", [3] = "c"}}, {"mixed", {"x", "y", n = 2}},
  {"float_key", {[1.5] = "f"}}, {"bool_key", {[true] = 1}},
  {"deep", deep},
}
local out = assert(io.open(os.getenv("INTEROP_FILE"), "w"))
for _, c in ipairs(cases) do
  out:write(c[1], "\t", hex(assert(mp._encode(c[2]))), "\n")
end
out:close()
EOF

cat > "$dir/read.lua" <<'EOF'
-- Decodes python's messages and prints PASS/FAIL lines.
local mp = require "luamp"
local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end
local function show(v)
  if math.type(v) == "float" then return string.format("%.17g (float)", v) end
  return type(v) == "string" and string.format("%q", v) or tostring(v)
end
-- nil when got is want: math.type, the sign of zero and NaN count.
local function differ(got, want, path)
  local mismatch = path .. ": got " .. show(got) .. ", want " .. show(want)
  if type(got) ~= type(want) or math.type(got) ~= math.type(want) then return mismatch end
  if type(want) == "number" then
    if want ~= want or got ~= got then
      if want == want or got == got then return mismatch end
    elseif got ~= want or (want == 0 and 1 / got ~= 1 / want) then
      return mismatch
    end
    return nil
  end
  if type(want) ~= "table" then
    if got ~= want then return mismatch end
    return nil
  end
  for k, w in pairs(want) do
    local why = differ(got[k], w, path .. "[" .. show(k) .. "]")
    if why then return why end
  end
  for k, g in pairs(got) do
    if want[k] == nil then return path .. "[" .. show(k) .. "]: unexpected " .. show(g) end
  end
  return nil
end
local deep = {}
for _ = 2, 100 do deep = {deep} end
local map16 = {}
for i = 0, 19 do map16["k" .. i] = i end
local array16 = {}
for i = 0, 19 do array16[i + 1] = i end
local cases = {
  {"nil", "nil is nil", nil}, {"true", "True is true", true}, {"false", "False is false", false},
  {"int_0", "0 is integer 0", 0}, {"int_m1", "-1 is integer -1", -1},
  {"int_m33", "-33 is integer -33", -33}, {"int_300", "300 is integer 300", 300},
  {"int_big", "2**62 is an integer", 1 << 62},
  {"maxint", "2**63-1 is math.maxinteger", math.maxinteger},
  {"minint", "-2**63 is math.mininteger", math.mininteger},
  {"uint64_max", "2**64-1 (uint64) is a float", 2.0^64},
  {"float_1", "floats stay floats: 1.0", 1.0}, {"float_third", "1/3 is exact", 1 / 3},
  {"neg_zero", "-0.0 keeps its sign", -0.0}, {"nan", "NaN is NaN", 0/0},
  {"inf", "inf is math.huge", math.huge}, {"ninf", "-inf is -math.huge", -math.huge},
  {"float32_1_5", "a float32 1.5 is the float 1.5", 1.5},
  {"float32_0_1", "a float32 0.1 is that float32's value", string.unpack("f", string.pack("f", 0.1))},
  {"str", "a str is a string", "h\u{e9}llo"}, {"str16", "a str16 is a string", string.rep("x", 300)},
  {"bin", "a bin is a string", "\0\255"}, {"bin_empty", "an empty bin is the empty string", ""},
  {"bin32", "a 70000-byte bin32 is a string", string.rep("\1", 70000)},
  {"array", "a list keeps None as a hole", {1, "two", 3.0, nil, true}},
  {"map", "a dict drops None values", {a = 1, c = {1, {d = {}}}}},
  {"int_keys", "int keys are integer keys", {[1] = "a", [2] = "b"}},
  {"array16", "an array16 is a sequence", array16}, {"map16", "a map16 is a table", map16},
  {"deep", "100 nested lists are 100 nested tables", deep},
}
local got = {}
for line in io.lines(os.getenv("INTEROP_FILE")) do
  local id, h = line:match("^(.-)\t(%x*)$")
  got[id] = unhex(h)
end
for _, c in ipairs(cases) do
  local id, what, want = c[1], c[2], c[3]
  local why
  if got[id] == nil then
    why = "python wrote no message " .. id
  else
    local ok, v = pcall(mp._decode, got[id])
    if ok then why = differ(v, want, "value") else why = "decode raised: " .. tostring(v) end
  end
  if why then
    print("FAIL\tluamp reads python's bytes: " .. what .. "\t" .. why)
  else
    print("PASS\tluamp reads python's bytes: " .. what)
  end
end
EOF

INTEROP_FILE="$dir/from_luamp.txt"
export INTEROP_FILE
half "luamp writes its messages" "$dir/write.out" "$LUAMP" "$dir/write.lua"
half "python reads them" "$dir/check.out" "$py" "$top_srcdir/tests/interop.py" check "$dir/from_luamp.txt"
report "$dir/check.out"

half "python writes its messages" "$dir/pywrite.out" "$py" "$top_srcdir/tests/interop.py" write "$dir/from_python.txt"
INTEROP_FILE="$dir/from_python.txt"
half "luamp reads them" "$dir/read.out" "$LUAMP" "$dir/read.lua"
report "$dir/read.out"

done_testing
