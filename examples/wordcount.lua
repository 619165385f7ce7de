-- SPDX-License-Identifier: MIT
-- wordcount.lua: a batch job.  Counts the words of every .txt file under a
-- directory, one pool task per file, and prints the 10 most frequent words
-- as "count word" lines (ties in alphabetical order).
--
--   luamp examples/wordcount.lua [DIR]        (DIR defaults to examples/texts)
--
-- A word is a run of ASCII letters, lowercased.  Each task returns a table
-- word -> count for its file; imap_unordered hands the tables back as the
-- files are finished, whichever worker finishes first, and the parent adds
-- them up.  The order does not matter for a sum, so no worker waits for
-- another.
local mp = require "luamp"

local dir = arg[1] or "examples/texts"

-- The file list comes from find(1), one path per line: a name with a
-- newline in it would be read as two paths (and counted as missing).
local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function list_files(root)
  local find = assert(io.popen("find " .. quote(root) .. " -type f -name '*.txt'"))
  local files = {}
  for path in find:lines() do files[#files + 1] = path end
  if not find:close() then
    error("cannot list the files under " .. root .. " (see find's message above)", 0)
  end
  table.sort(files)
  return files
end

-- Runs in a worker: the counts for one file.
local function count_words(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local counts = {}
  for word in text:gmatch("[A-Za-z]+") do
    word = word:lower()
    counts[word] = (counts[word] or 0) + 1
  end
  return counts
end

local files = list_files(dir)
local pool <close> = mp.Pool()

local total, words = {}, 0
for _, counts in pool:imap_unordered(count_words, files) do
  for word, n in pairs(counts) do
    total[word] = (total[word] or 0) + n
    words = words + n
  end
end

local ranking = {}
for word in pairs(total) do ranking[#ranking + 1] = word end
table.sort(ranking, function(a, b)
  if total[a] ~= total[b] then return total[a] > total[b] end
  return a < b
end)

print(string.format("%d files, %d words, %d distinct", #files, words, #ranking))
for i = 1, math.min(10, #ranking) do
  print(total[ranking[i]] .. " " .. ranking[i])
end
