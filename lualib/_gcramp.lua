-- _gcramp.lua: a low GC pause while a process's connections ramp up to a new high.
--
-- Why: pages the Lua heap touched stay resident (LuaJIT's allocator keeps freed memory
-- mapped), so what an idle connection costs in RSS is its live objects plus its share of
-- the heap's peak. With the steady pause (200, lualib/_main.lua) a cycle starts when the heap
-- is twice what the last one left live, so while connections pile up the heap runs up to
-- twice their live objects with the garbage of the requests that brought them in: at 14,300
-- idle connections per worker that slack was ~250 bytes per connection on ~310 live
-- (bench/realistic/idle_objects; docs/benchmarks.md "Idle connections").
--
-- What: net.lua calls ramp(high) when the process's open connections pass their highest
-- count so far (a counter compare per new connection, nothing per request). Once the high
-- has grown by a step (below) since the last ramp, the pause drops to RAMP_PAUSE and the step
-- multiplier rises to RAMP_STEPMUL, and both go back to the steady ones (those before the
-- ramp; a value a script set during the ramp stays) at the end of the first GC cycle in
-- which the high grew by less than a step, found by a sentinel's finalizer (one per cycle
-- while ramping, none otherwise). The step, 1/128 of the high (at least 16 connections),
-- keeps a count that creeps up between cycles, as a busy server's may for hours, from
-- holding the low pause, whose GC work on every request grows with the heap: a burst of
-- connections passes it every cycle (at pause 110 a cycle lets the heap grow 10%, ~2% more
-- connections). In steady state nothing changes, so the instructions per request and per
-- connection are the same; a ramp pays more GC cycles for the connections it adds
-- (measured: within the spread of the workers' CPU time per connection, ~40 us, which the
-- kernel's accept and the request dominate).
--
-- Caveat: once the ramp is over, a worker that keeps serving requests at the steady pause
-- lets its heap reach twice its live size again within a few cycles (what it did before);
-- the saving holds for connections that stay idle, which is what they cost. Measured at
-- 14,300 idle connections per worker: slack ~250 -> ~80 bytes per connection with the
-- pause, ~35 with the step multiplier too.
local M = {}

-- A cycle starts once the heap is 10% over what the last one left live; 100 (cycles back to
-- back) measured no lower.
local RAMP_PAUSE = 110
-- And a cycle does its work in 2.5x less allocation than at the steady 400, so less of the
-- garbage made during it floats to the next: ~-45 bytes per connection at 14,300 per worker
-- (2000 measured the same). The same work per cycle, in larger steps (~10 KB of it each).
local RAMP_STEPMUL = 1000

local steady, steadyMul -- the pause and step multiplier to go back to, nil when not ramping
-- M.high: the most connections open at once so far (net.lua compares its count with it)
M.high = 0
local from = 0 -- the high when the current cycle of a ramp started, or the last ramp ended

local function step(n)
  return n >= 2048 and math.floor(n / 128) or 16
end

local function watch()
  -- A userdata with a finalizer, referenced by nothing: collected by a coming cycle.
  local sentinel = newproxy(true)
  getmetatable(sentinel).__gc = function()
    if M.high >= from + step(from) then -- still ramping
      from = M.high
      watch()
      return
    end
    -- Back to the steady pause and multiplier, unless a script set its own meanwhile.
    local now = collectgarbage('setpause', steady)
    if now ~= RAMP_PAUSE then
      collectgarbage('setpause', now)
    end
    now = collectgarbage('setstepmul', steadyMul)
    if now ~= RAMP_STEPMUL then
      collectgarbage('setstepmul', now)
    end
    steady, steadyMul, from = nil, nil, M.high
  end
end

-- The process's open connections reached a new high, n (> M.high).
function M.ramp(n)
  M.high = n
  if steady == nil and n >= from + step(from) then
    steady = collectgarbage('setpause', RAMP_PAUSE)
    steadyMul = collectgarbage('setstepmul', RAMP_STEPMUL)
    from = n
    watch()
  end
end

-- For specs: whether the ramp's pause and multiplier are in force.
function M.ramping()
  return steady ~= nil
end

-- For specs: forgets the highs (not during a ramp), as if no connection had been open.
function M._reset()
  assert(steady == nil, 'not during a ramp')
  M.high, from = 0, 0
end

return M
