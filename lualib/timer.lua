-- timer.lua: setTimeout / setInterval / setImmediate and their clear* (also globals).
-- Each timeout is one libuv timer; immediates share one check handle and run, in the
-- order they were set, after the loop's next poll.
local core = require('_core')
local class = require('_class')

local Timer = class()

function Timer:_init(fn, ms, rep, args)
  self._fn = fn
  self._args = args
  self._repeat = rep
  self._h = core.timer(function()
    if not rep then
      self:close()
    end
    fn(unpack(args, 1, args.n))
  end)
  ms = tonumber(ms) or 0
  if ms < 1 then
    ms = rep and 1 or 0
  end
  self._ms = ms
  self._h:start(ms, rep and ms or 0)
end

function Timer:close()
  if self._h then
    self._h:close()
    self._h = nil
  end
  return self
end

function Timer:unref()
  if self._h then
    self._h:unref()
  end
  return self
end

function Timer:ref()
  if self._h then
    self._h:ref()
  end
  return self
end

function Timer:hasRef()
  return self._h ~= nil and self._h:has_ref()
end

-- Restarts the countdown from now (Node's timeout.refresh()), for a timeout as for an
-- interval (libuv's again restarts only repeating timers).
function Timer:refresh()
  if self._h then
    self._h:start(self._ms, self._repeat and self._ms or 0)
  end
  return self
end

local function checkFn(fn, name)
  if type(fn) ~= 'function' and not (type(fn) == 'table' and getmetatable(fn) and getmetatable(fn).__call) then
    error(('ERR_INVALID_ARG_TYPE: %s expects a function, got %s'):format(name, type(fn)), 3)
  end
end

local M = {}

function M.setTimeout(fn, ms, ...)
  checkFn(fn, 'setTimeout')
  return Timer.new(fn, ms, false, { n = select('#', ...), ... })
end

function M.setInterval(fn, ms, ...)
  checkFn(fn, 'setInterval')
  return Timer.new(fn, ms, true, { n = select('#', ...), ... })
end

function M.clearTimeout(t)
  -- As Node, anything but a timer is ignored (clearTimeout(nil) is common).
  if type(t) == 'table' and t.close then
    t:close()
  end
end
M.clearInterval = M.clearTimeout

-- Immediates: a FIFO drained once per loop turn. Ones set while draining run next turn.
local queue, head, tail = {}, 1, 0
local check

local Immediate = class()
function Immediate:ref()
  return self
end
function Immediate:unref()
  return self
end
function Immediate:hasRef()
  return not self._cancelled
end

local function drain()
  local last = tail
  while head <= last do
    local im = queue[head]
    queue[head] = nil
    head = head + 1
    if not im._cancelled then
      im._cancelled = true
      im._fn(unpack(im._args, 1, im._args.n))
    end
  end
  if head > tail then
    check:stop()
    queue, head, tail = {}, 1, 0
  end
end

function M.setImmediate(fn, ...)
  checkFn(fn, 'setImmediate')
  if not check then
    check = core.check(drain)
  end
  local im = setmetatable({ _fn = fn, _args = { n = select('#', ...), ... } }, Immediate)
  tail = tail + 1
  queue[tail] = im
  if tail == head then
    check:start()
  end
  return im
end

function M.clearImmediate(im)
  if im then
    im._cancelled = true
  end
end

M.Timer = Timer
-- Dot calls (`t.unref()`) raise ERR_INVALID_THIS at the caller (_class.lua).
class.guard(Timer, 'timer')
class.guard(Immediate, 'immediate')

return M
