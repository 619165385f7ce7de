-- SPDX-License-Identifier: MIT
-- luamp/cluster.lua: STUB, being written (mp.cluster(), cluster Pools).
local core, part = ...
return { info = function() return nil end }
