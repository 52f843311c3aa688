-- events.lua: the Emitter every object inherits (Node's EventEmitter in Lua's idiom).
-- emitter:on(ev, fn) / once / off / emit / listenerCount / removeAllListeners.
-- An 'error' event with no listener raises its argument: that is an uncaught error.
local class = require('_class')

local Emitter = class()

local function checkListener(ev, fn)
  if type(fn) ~= 'function' then
    error(('ERR_INVALID_ARG_TYPE: listener for "%s" must be a function'):format(tostring(ev)), 3)
  end
end

-- Appends `entry` (the listener, or once's callable wrapper of `fn`) to ev's list.
local function add(self, ev, entry, fn)
  local events = self._events
  if not events then
    events = {}
    self._events = events
  end
  if events.newListener then
    self:emit('newListener', ev, fn)
  end
  local list = events[ev]
  if list == nil then
    events[ev] = { entry }
  else
    -- Copy on write: an emit in progress keeps iterating the list it started with.
    local copy = { unpack(list) }
    copy[#copy + 1] = entry
    events[ev] = copy
  end
  return self
end

function Emitter:on(ev, fn)
  checkListener(ev, fn)
  return add(self, ev, fn, fn)
end
Emitter.addListener = Emitter.on

function Emitter:once(ev, fn)
  checkListener(ev, fn)
  local fired = false
  local wrapper
  -- A callable table, so off(ev, fn) can find it by its listener.
  wrapper = setmetatable({ listener = fn }, {
    __call = function(_, ...)
      if fired then
        return
      end
      fired = true
      self:off(ev, wrapper)
      return fn(...)
    end,
  })
  return add(self, ev, wrapper, fn)
end

function Emitter:off(ev, fn)
  local events = self._events
  local list = events and events[ev]
  if not list then
    return self
  end
  for i = #list, 1, -1 do
    local l = list[i]
    if l == fn or (type(l) == 'table' and l.listener == fn) then
      local copy = { unpack(list) }
      table.remove(copy, i)
      events[ev] = #copy > 0 and copy or nil
      if events.removeListener then
        self:emit('removeListener', ev, fn)
      end
      break
    end
  end
  return self
end
Emitter.removeListener = Emitter.off

function Emitter:removeAllListeners(ev)
  local events = self._events
  if not events then
    return self
  end
  local names = {}
  if ev == nil then
    for k in pairs(events) do
      names[#names + 1] = k
    end
  else
    names[1] = ev
  end
  for _, name in ipairs(names) do
    events[name] = nil
    if events.removeListener and name ~= 'removeListener' then
      self:emit('removeListener', name)
    end
  end
  return self
end

function Emitter:listenerCount(ev)
  local list = self._events and self._events[ev]
  return list and #list or 0
end

function Emitter:listeners(ev)
  local list = self._events and self._events[ev]
  local out = {}
  for i, l in ipairs(list or {}) do
    out[i] = type(l) == 'table' and l.listener or l
  end
  return out
end

-- emit(ev, ...) -> true when a listener ran.
function Emitter:emit(ev, ...)
  local list = self._events and self._events[ev]
  if not list then
    -- A dot call (`obj.emit('ev')`) passes the event name as self; checked here, off the
    -- path of an emit that reaches listeners (emit is not wrapped: lualib emits constantly).
    if type(self) ~= 'table' then
      class.invalidThis('emitter', 'emit', self, 2)
    end
    if ev == 'error' then
      local err = ...
      if err == nil then
        err = 'unhandled error event'
      end
      error(err, 0)
    end
    return false
  end
  local n = #list
  if n == 1 then
    list[1](...)
  else
    for i = 1, n do
      list[i](...)
    end
  end
  return true
end

-- Makes a module table an emitter with dot calls (`cluster.on('exit', fn)`), keeping
-- colon calls working too.
local function bind(module)
  local inst = module
  for _, name in ipairs({ 'on', 'once', 'off', 'emit', 'listenerCount', 'listeners',
    'removeListener', 'removeAllListeners', 'addListener' }) do
    local method = class.raw(Emitter[name])
    module[name] = function(first, ...)
      if first == module then
        return method(inst, ...)
      end
      return method(inst, first, ...)
    end
  end
  return module
end

-- The error value of asynchronous errors: a table {code=, message=} that prints well.
local ErrorMeta = {
  __tostring = function(e)
    return e.message or e.code or 'error'
  end,
}
local function makeError(code, message, extra)
  local e = extra or {}
  e.code = code
  if message and code and not message:find('^' .. code) then
    message = code .. ': ' .. message
  end
  e.message = message or code
  return setmetatable(e, ErrorMeta)
end

-- Turns a binding's `nil, "ECODE: message", "ECODE"` into an error table. With an address
-- in `extra` (listen, bind, connect) the message names it, as Node's do:
-- "EADDRINUSE: address already in use (listen 127.0.0.1:8000)".
local function fromUv(msg, code, extra)
  local addr = extra and extra.address
  if type(addr) == 'string' and type(msg) == 'string' and not msg:find(addr, 1, true) then
    local where = addr
    if extra.port ~= nil then
      where = (addr:find(':', 1, true) and '[' .. addr .. ']' or addr) .. ':' .. tostring(extra.port)
    end
    msg = ('%s (%s%s)'):format(msg, extra.syscall and extra.syscall .. ' ' or '', where)
  end
  return makeError(code or (msg and msg:match('^(%u[%u_]+):')) or 'EUNKNOWN', msg, extra)
end

class.guard(Emitter, 'emitter', { emit = true }, true)

return {
  Emitter = Emitter,
  EventEmitter = Emitter,
  bind = bind,
  makeError = makeError,
  fromUv = fromUv,
  ErrorMeta = ErrorMeta,
}
