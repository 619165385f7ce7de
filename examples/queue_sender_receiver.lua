-- SPDX-License-Identifier: MIT
-- queue_sender_receiver.lua: two processes talking through a Queue.
--
-- A sender process puts a few messages on the queue and then an END
-- sentinel; a receiver process takes messages off until it sees END.  The
-- queue is made before the processes start, so both inherit it.  Any value
-- that can be an argument can be a message, tables included; nil cannot
-- (get returns nil only to say that nothing came), hence the sentinel.
--
--   luamp examples/queue_sender_receiver.lua
local mp = require "luamp"

local END = "END"

local function sender(q)
  for i = 1, 3 do
    q:put("message " .. i)
  end
  q:put({ from = mp.current_process().name, text = "a table travels too" })
  q:put(END)
end

local function receiver(q)
  while true do
    local msg = q:get()
    if msg == END then break end
    if type(msg) == "table" then
      print("received a table from " .. msg.from .. ": " .. msg.text)
    else
      print("received " .. msg)
    end
  end
  print("receiver: END seen, stopping")
end

local q = mp.Queue()
local p_send = mp.Process{ target = sender, args = { q }, name = "sender" }
local p_recv = mp.Process{ target = receiver, args = { q }, name = "receiver" }
p_recv:start()        -- the receiver may start first: get() waits for items
p_send:start()
p_send:join()
p_recv:join()
-- Only the receiver printed, so the output is the same on every run.
print(string.format("exit codes: sender %d, receiver %d", p_send.exitcode, p_recv.exitcode))
