-- net.lua: TCP and Unix-socket servers and connections (Node's `net` in Lua's idiom).
--
-- A Socket keeps its C stream in `socket[HANDLE]` (net._SOCK_HANDLE; `socket._handle` reads it
-- too); every stream's events go to one function,
-- `dispatch(socket, event, ...)` (the socket is the stream's context, see stream:set_ctx),
-- which calls a method (`_onData`, `_onEnd`, `_onError`, `_onDrain`, `_onConnect`,
-- `_onShutdown`), so a C read hook (http.c) can take over the bytes while 'end'/'error' still
-- arrive here. Accepting a connection creates one table (the socket) and no closure, reading
-- and writing none; closing creates one closure (the close callback).
--
-- A socket's owner (`socket[OWNER]`: the server that accepted it, or http's connection once
-- it takes the socket over) is told of the socket's end, finish, drain, error and close
-- (`owner:_sockEnd()` ...) before the socket's listeners, as the first listener would be,
-- without a closure and a listener list per connection, and of the close after them
-- (`owner:_sockClosed()`: the server counts its connections there).
--
-- Cluster hooks (nil in a standalone process):
--   net._listenHook(server, opts, fn(err, handle, address)) is called by Server:listen with the
--     normalised options unless opts.exclusive. fn(nil, handle) makes the server accept on an
--     already-bound handle (Server:_listenOnHandle); fn(nil, nil, address) marks it listening
--     with connections arriving through Server:_addConnection(tcpHandle); fn(err) emits 'error'
--     (err is an error table, events.makeError).
--   server._closeHook(server), when set by the hook's owner, is called once by server:close().
--   net._bindListen(opts, cb) binds and listens locally (what the master needs too).
-- Size: over 800 lines on purpose: Socket and Server share `dispatch`, the stream glue and
-- the cluster hooks as locals, on the accept and read paths that bench/conn/ir measures.
local core = require('_core')
local class = require('_class')
local events = require('events')
local timer = require('timer')
-- Connection counters for metrics (runtime/metrics.h), bumped through the FFI.
local counters = require('_metrics').c
local gcramp = require('_gcramp')
-- Connections open in this process (the most it had open at once is gcramp.high): a Lua
-- number (the counters are int64 cdata, boxed when the interpreter reads them).
local connsOpen = 0

local Emitter = events.Emitter
local makeError, fromUv = events.makeError, events.fromUv
local setImmediate = timer.setImmediate
local type, tonumber, tostring, select = type, tonumber, tostring, select

local net = {}

-- Bytes a socket buffers while connecting before write() returns false.
local HWM = 16 * 1024

---------------------------------------------------------------------------------------------
-- Argument checks: programmer errors raise with a code.

local function describe(v)
  if type(v) == 'string' then
    return ("'%s'"):format(v)
  end
  return tostring(v)
end

-- Returns the port as a number or raises ERR_SOCKET_BAD_PORT at `level` (of the caller).
local function checkPort(port, level, allowZero)
  local n = port
  if type(port) == 'string' and port:match('^%s*%d+%s*$') then
    n = tonumber(port)
  end
  if type(n) ~= 'number' or n ~= n or n % 1 ~= 0 or n < 0 or n > 65535 or (n == 0 and not allowZero) then
    error(('ERR_SOCKET_BAD_PORT: port should be %s 0 and < 65536, got %s'):format(
      allowZero and '>=' or '>', describe(port)), level + 1)
  end
  return n
end

local function checkType(v, want, name, level)
  if v ~= nil and type(v) ~= want then
    error(('ERR_INVALID_ARG_TYPE: %s must be a %s, got %s'):format(name, want, type(v)), level + 1)
  end
end

local function checkKeys(t, allowed, what, level)
  for k in pairs(t) do
    if not allowed[k] then
      error(('ERR_INVALID_ARG_VALUE: unknown %s option %s'):format(what, describe(k)), level + 1)
    end
  end
end

local function isPortLike(v)
  return type(v) == 'number' or (type(v) == 'string' and v:match('^%s*%d+%s*$') ~= nil)
end

local function familyOf(host)
  local f = core.isip(host)
  if f == 4 then
    return 'IPv4'
  elseif f == 6 then
    return 'IPv6'
  end
  return nil
end

function net.isIP(s)
  if type(s) ~= 'string' then
    return 0
  end
  return core.isip(s)
end

function net.isIPv4(s)
  return net.isIP(s) == 4
end

function net.isIPv6(s)
  return net.isIP(s) == 6
end

-- getaddrinfo's "no such name" codes read as Node's.
local function resolveError(msg, code, host)
  if code == 'EAI_NONAME' or code == 'EAI_NODATA' or code == 'EAI_AGAIN' then
    return makeError(code == 'EAI_AGAIN' and 'EAI_AGAIN' or 'ENOTFOUND',
      ('getaddrinfo %s %s'):format(code == 'EAI_AGAIN' and 'EAI_AGAIN' or 'ENOTFOUND', host),
      { hostname = host, syscall = 'getaddrinfo' })
  end
  return fromUv(msg, code, { hostname = host, syscall = 'getaddrinfo' })
end

---------------------------------------------------------------------------------------------
-- Socket

local Socket = class(Emitter)

-- A socket's internal fields: indices into its table's array part (see newSocket). http.lua,
-- tls.lua and _sendfile.lua read some of them (net._SOCK_OWNER, _SOCK_READ_ENDED,
-- _SOCK_HANDLE).
local OWNER, TIMEOUT_MS, READ_ENDED, WRITE_ENDED = 1, 2, 3, 4
-- The public `connecting` and `destroyed` too: read from outside through getters (below).
local CONNECTING, DESTROYED = 5, 6
-- The socket's C stream (or tls.lua's Handle over one), nil when it has none: `_handle`, as
-- other modules (the cluster's handle passing, a script) read it, answers through a getter.
local HANDLE = 7
net._SOCK_OWNER, net._SOCK_READ_ENDED, net._SOCK_HANDLE = OWNER, READ_ENDED, HANDLE
net._SOCK_DESTROYED = DESTROYED
-- net's fields are the first _SOCK_FIELDS slots; a server with `_connRoom` set (http's)
-- gets accepted sockets with _SOCK_ROOM more, allocated with the table, for its own fields.
net._SOCK_FIELDS, net._SOCK_ROOM = 7, 7

-- Read-only properties computed on demand (Node's getters), so an accepted connection costs
-- no getpeername/getsockname unless asked.
local getters = {}

function getters.remoteAddress(s)
  local p = s:_peer()
  return p and p.address
end
function getters.remotePort(s)
  local p = s:_peer()
  return p and p.port
end
function getters.remoteFamily(s)
  local p = s:_peer()
  return p and p.family
end
function getters.localAddress(s)
  local a = s:_sockname()
  return type(a) == 'table' and a.address or nil
end
function getters.localPort(s)
  local a = s:_sockname()
  return type(a) == 'table' and a.port or nil
end
function getters.localFamily(s)
  local a = s:_sockname()
  return type(a) == 'table' and a.family or nil
end
function getters.bytesRead(s)
  local r = s:_bytes()
  return r
end
function getters.bytesWritten(s)
  local _, w = s:_bytes()
  return w
end
-- socket.connecting and socket.destroyed (API): kept in the array part (newSocket).
function getters.connecting(s)
  return s[CONNECTING]
end
function getters.destroyed(s)
  return s[DESTROYED]
end
function getters._handle(s)
  return s[HANDLE]
end
-- Node's definition: no handle (not connected yet, or destroyed: Node drops the handle
-- then), or connecting.
function getters.pending(s)
  return not s[HANDLE] or s[CONNECTING] or s[DESTROYED]
end
-- A socket's own allowHalfOpen is stored only when set (a client's option); an accepted one
-- has its owner's (the server's, or http's connection: true).
function getters.allowHalfOpen(s)
  local owner = s[OWNER]
  return owner and owner.allowHalfOpen == true or false
end
function getters.readyState(s)
  if s[CONNECTING] then
    return 'opening'
  elseif s[DESTROYED] or not s[HANDLE] then
    return 'closed'
  elseif s[READ_ENDED] then
    return s[WRITE_ENDED] and 'closed' or 'writeOnly'
  elseif s[WRITE_ENDED] then
    return 'readOnly'
  end
  return 'open'
end

Socket._events = false -- a socket's own once a listener is added (newSocket)

Socket.__index = function(self, k)
  local v = Socket[k]
  if v ~= nil then
    return v
  end
  local g = getters[k]
  if g ~= nil then
    return g(self)
  end
  return nil
end

-- A socket's table, built by one constructor with every field read on a connection's common
-- path (false rather than nil: a missing field costs a call of the __index function above),
-- so creating one costs one allocation and no rehash. `handle` may be nil.
-- Constant values only in the constructor, variable ones stored after: the embedded bytecode
-- (string.dump) keeps only a template's constant-valued keys, so `{ k = variable }` would add
-- k as a new key (growing, even rehashing, the table) instead of filling a slot.
-- Every idle connection holds this table, so it is kept small: no named key, so no hash
-- part (a table with any named key has at least 2 nodes of 24 bytes, allocated apart), and
-- its fields in its array part, by index (8 bytes a slot): socket[OWNER], [TIMEOUT_MS],
-- [READ_ENDED], [WRITE_ENDED], [CONNECTING], [DESTROYED] (the last two are API:
-- socket.connecting and socket.destroyed read them through getters), [HANDLE] (`_handle`
-- through a getter); the emitter's `_events` is the class's false until a listener is added
-- (Emitter:on stores it then). A connection's socket is 184 bytes in one allocation,
-- against 224 in two with `_handle` and `_events` as named keys, 256 as an 8-key hash. Keep
-- it so: a named key stored on every connection's socket brings the hash part back (+48
-- bytes, +64 with the allocator's header and rounding).
-- Fields no common path reads are stored only when set, and read with rawget where a miss
-- must not call __index: _timer (with setTimeout), _paused (pause, pauseOnCreate/Connect),
-- allowHalfOpen (a client's option; an accepted socket has its owner's), _pendingBytes
-- (writes queued while connecting). `pending` is computed (getters), the byte counts stay
-- readable on the closed handle (stream:bytes()), "the shutdown is done" is
-- socket[WRITE_ENDED] == 'flushed', and the server that accepted the socket is its first
-- owner. With `room`, the array part has net._SOCK_ROOM slots more for the owner's fields
-- (http's connection keeps its fields in its socket: no table of its own per connection).
local function newSocket(handle, allowHalfOpen, owner, room)
  local self
  if room then
    self = {
      false, false, false, false, false, false, false, -- OWNER ... HANDLE
      false, false, false, false, false, false, false, -- the owner's
    }
  else
    self = {
      false, -- OWNER
      false, -- TIMEOUT_MS
      false, -- READ_ENDED
      false, -- WRITE_ENDED: true once finish() was called, 'flushed' once the shutdown is done
      false, -- CONNECTING
      false, -- DESTROYED
      false, -- HANDLE
    }
  end
  self[HANDLE], self[OWNER] = handle, owner
  if allowHalfOpen and not owner then
    self.allowHalfOpen = true
  end
  return setmetatable(self, Socket)
end
Socket._new = newSocket

-- The one callback of every socket's C handle, called with the socket (the handle's
-- context): events become method calls.
local function dispatch(self, ev, a, b)
  if ev == 'data' then
    return self:_onData(a)
  elseif ev == 'end' then
    return self:_onEnd()
  elseif ev == 'shutdown' then
    return self:_onShutdown(a)
  elseif ev == 'drain' then
    return self:_onDrain()
  elseif ev == 'error' then
    return self:_onError(a, b)
  elseif ev == 'connect' then
    return self:_onConnect(a, b)
  end
end

local socketOptions = { allowHalfOpen = true, handle = true, pauseOnCreate = true, readable = true,
  writable = true, fd = true }

-- net.Socket.new([options]): options allowHalfOpen; handle (a connected tcp/pipe handle to
-- adopt); fd (a connected socket descriptor to wrap); pauseOnCreate (do not start reading).
function Socket.new(options)
  local self = newSocket(nil, false, false)
  if options ~= nil then
    checkType(options, 'table', 'options', 2)
    checkKeys(options, socketOptions, 'socket', 2)
    if options.allowHalfOpen == true then
      self.allowHalfOpen = true
    end
    local h = options.handle
    if options.fd ~= nil then
      checkType(options.fd, 'number', 'options.fd', 2)
      h = core.tcp()
      local ok, err = h:open(options.fd)
      if not ok then
        h:close()
        error(err, 2)
      end
    end
    if h ~= nil then
      self:_attach(h)
      if not options.pauseOnCreate then
        h:read_start()
      else
        self._paused = true
      end
    end
  end
  return self
end

-- Adopts a connected handle: its events come to this socket.
function Socket:_attach(h)
  h:set_callback(dispatch)
  h:set_ctx(self)
  self[HANDLE] = h
end

-- Wraps a connected tcp or pipe handle (e.g. received from another process) in a Socket
-- that reads at once unless opts.pauseOnCreate.
function Socket._wrap(handle, opts)
  local s = newSocket(nil, opts ~= nil and opts.allowHalfOpen == true, false)
  s:_attach(handle)
  if opts ~= nil and opts.pauseOnCreate then
    s._paused = true
  else
    handle:read_start()
  end
  return s
end

function Socket:_peer()
  local p = self._peername
  if p == nil then
    local h = self[HANDLE]
    if h == nil or self[DESTROYED] or h.getpeername == nil or self[CONNECTING] then
      return nil
    end
    p = h:getpeername() or false
    self._peername = p
  end
  return p or nil
end

function Socket:_sockname()
  local a = self._socknameCache
  if a == nil then
    local h = self[HANDLE]
    if h == nil or self[DESTROYED] or self[CONNECTING] then
      return nil
    end
    a = h:getsockname() or false
    self._socknameCache = a
  end
  return a or nil
end

function Socket:_bytes()
  local h = self[HANDLE]
  local pend = rawget(self, '_pendingBytes') or 0
  if h and h.bytes then
    local r, w = h:bytes() -- a closed stream keeps its counts
    return r, w + pend
  end
  return 0, pend
end

-- {address=, family=, port=} of the local end (Node's socket.address()).
function Socket:address()
  local a = self:_sockname()
  if type(a) == 'table' then
    return { address = a.address, family = a.family, port = a.port }
  end
  return a
end

function Socket:_onData(chunk)
  if self[TIMEOUT_MS] then
    self._timer:start(self[TIMEOUT_MS], 0)
  end
  self:emit('data', chunk)
end

function Socket:_onEnd()
  self[READ_ENDED] = true
  local owner = self[OWNER]
  if owner then
    owner:_sockEnd()
  end
  self:emit('end')
  if self[DESTROYED] then
    return
  end
  local half = rawget(self, 'allowHalfOpen')
  if half == nil then
    half = owner and owner.allowHalfOpen == true
  end
  if not half and not self[WRITE_ENDED] then
    self:finish() -- destroys once the shutdown is done
  elseif self[WRITE_ENDED] == 'flushed' then
    self:destroy()
  end
end

function Socket:_onDrain()
  if self[TIMEOUT_MS] then
    self._timer:start(self[TIMEOUT_MS], 0)
  end
  local owner = self[OWNER]
  if owner then
    owner:_sockDrain()
  end
  self:emit('drain')
end

function Socket:_onError(msg, code)
  self:destroy(fromUv(msg, code))
end

function Socket:_onConnect(msg, code)
  if self[DESTROYED] then
    return
  end
  local h = self[HANDLE]
  if msg ~= nil then
    local addrs = self._addrs
    if addrs ~= nil and self._addrIndex < #addrs then
      -- Another address of the name may answer (e.g. 'localhost' as ::1 then 127.0.0.1).
      self[HANDLE] = nil
      h:close()
      return self:_connectNext()
    end
    local extra = { syscall = 'connect' }
    if self._connectPath then
      extra.address = self._connectPath
    elseif addrs ~= nil then
      extra.address = addrs[self._addrIndex].address
      extra.port = self._connectPort
    end
    return self:destroy(fromUv(msg, code, extra))
  end
  self[CONNECTING] = false
  self._addrs = nil
  if self._noDelay ~= nil and h.nodelay then
    h:nodelay(self._noDelay)
  end
  if self._keepAlive ~= nil and h.keepalive then
    h:keepalive(self._keepAlive, self._keepAliveSecs)
  end
  local queue = self._queue
  if queue ~= nil then
    self._queue = nil
    self._pendingBytes = nil
    local below = true
    for i = 1, #queue, 2 do
      local ok, err, ecode = h:write(queue[i], queue[i + 1] or nil)
      if ok == nil then
        return self:destroy(fromUv(err, ecode))
      end
      below = ok
    end
    if self._needDrain and below then
      -- The queue drained into the kernel at once: no C 'drain' will follow.
      self._needDrain = nil
      setImmediate(Socket._onDrain, self)
    end
  end
  if self[WRITE_ENDED] then
    self:_shutdown()
  end
  if not rawget(self, '_paused') then
    h:read_start()
  end
  self:emit('connect')
  self:emit('ready')
end

-- write(data [, fn(err)]) -> false when the caller should wait for 'drain'.
function Socket:write(data, fn)
  if type(data) ~= 'string' then
    if type(data) == 'number' then
      data = tostring(data)
    else
      if type(self) ~= 'table' then
        class.invalidThis('socket', 'write', self, 2)
      end
      error('ERR_INVALID_ARG_TYPE: data must be a string, got ' .. type(data), 2)
    end
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  if self[WRITE_ENDED] or self[DESTROYED] then
    local err = self[DESTROYED] and makeError('ERR_STREAM_DESTROYED', 'cannot write after the socket was destroyed')
      or makeError('ERR_STREAM_WRITE_AFTER_END', 'write after end')
    if fn then
      setImmediate(fn, err)
    end
    if not self[DESTROYED] then
      self:destroy(err)
    end
    return false
  end
  local h = self[HANDLE]
  if self[CONNECTING] or h == nil then
    local queue = self._queue
    if queue == nil then
      queue = {}
      self._queue = queue
    end
    queue[#queue + 1] = data
    queue[#queue + 1] = fn or false
    local n = (self._pendingBytes or 0) + #data
    self._pendingBytes = n
    if n >= HWM then
      self._needDrain = true
      return false
    end
    return true
  end
  if self[TIMEOUT_MS] then
    self._timer:start(self[TIMEOUT_MS], 0)
  end
  local ok, err, code = h:write(data, fn)
  if ok == nil then
    local e = fromUv(err, code)
    if fn then
      setImmediate(fn, e)
    end
    self:destroy(e)
    return false
  end
  return ok
end

function Socket:_shutdown()
  -- The stream's callback gets 'shutdown' (dispatch -> _onShutdown).
  if not self[HANDLE]:shutdown(true) then
    self:destroy()
  end
end

function Socket:_onShutdown(err)
  if self[DESTROYED] then
    return
  end
  self[WRITE_ENDED] = 'flushed'
  local owner = self[OWNER]
  if owner then
    owner:_sockFinish()
  end
  self:emit('finish')
  if err ~= nil or self[READ_ENDED] then
    self:destroy()
  end
end

-- finish([data] [, fn]): half-close once everything written is flushed (Node's end()).
function Socket:finish(data, fn)
  if type(self) ~= 'table' then
    class.invalidThis('socket', 'finish', self, 2)
  end
  if type(data) == 'function' then
    data, fn = nil, data
  end
  if data ~= nil then
    if type(data) ~= 'string' and type(data) ~= 'number' then
      error('ERR_INVALID_ARG_TYPE: socket:finish: data must be a string, got ' .. type(data), 2)
    end
    self:write(data)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: socket:finish: the callback must be a function, got ' .. type(fn), 2)
  end
  if self[WRITE_ENDED] or self[DESTROYED] then
    return self
  end
  self[WRITE_ENDED] = true
  if fn then
    self:once('finish', fn)
  end
  if self[CONNECTING] or self[HANDLE] == nil then
    return self -- _onConnect shuts down
  end
  self:_shutdown()
  return self
end
Socket['end'] = Socket.finish

-- destroy([err]): closes at once; emits 'error'(err) when given, then 'close'(hadError).
function Socket:destroy(err)
  if type(self) ~= 'table' then
    class.invalidThis('socket', 'destroy', self, 2)
  end
  if self[DESTROYED] then
    return self
  end
  self[DESTROYED] = true
  self[CONNECTING] = false
  self[READ_ENDED] = true
  self[WRITE_ENDED] = true
  local t = rawget(self, '_timer')
  if t then
    t:close()
    self._timer = false
    self[TIMEOUT_MS] = false
  end
  local h = self[HANDLE]
  if h ~= nil and not h:is_closing() then
    h:close(function()
      self:_onClose(err)
    end)
  else
    setImmediate(Socket._onClose, self, err)
  end
  return self
end
Socket.destroySoon = Socket.finish

function Socket:_onClose(err)
  local owner = self[OWNER]
  if err ~= nil then
    if owner and owner:_sockError(err) then
      -- The owner took it, so it counts as a listener: no listener of the socket's own is
      -- not uncaught.
      local evs = self._events
      if evs and evs.error then
        self:emit('error', err)
      end
    else
      self:emit('error', err)
    end
  end
  if owner then
    owner:_sockClose()
  end
  self:emit('close', err ~= nil)
  if owner then
    owner:_sockClosed()
  end
end

function Socket:pause()
  self._paused = true
  local h = self[HANDLE]
  if h ~= nil and not self[CONNECTING] and not self[READ_ENDED] then
    h:read_stop()
  end
  return self
end

function Socket:resume()
  if rawget(self, '_paused') then
    self._paused = false
  end
  local h = self[HANDLE]
  if h ~= nil and not self[CONNECTING] and not self[READ_ENDED] then
    h:read_start()
  end
  return self
end

function Socket:isPaused()
  return rawget(self, '_paused') == true
end

function Socket:setNoDelay(enable)
  if type(self) ~= 'table' then
    class.invalidThis('socket', 'setNoDelay', self, 2)
  end
  enable = enable == nil or enable == true
  local h = self[HANDLE]
  if h ~= nil and not self[CONNECTING] then
    if h.nodelay then
      h:nodelay(enable)
    end
  else
    self._noDelay = enable
  end
  return self
end

-- setKeepAlive([enable] [, initialDelayMs])
function Socket:setKeepAlive(enable, ms)
  if type(enable) == 'number' then
    enable, ms = false, enable
  end
  enable = enable == true
  local secs = math.floor((tonumber(ms) or 0) / 1000)
  local h = self[HANDLE]
  if h ~= nil and not self[CONNECTING] then
    if h.keepalive then
      h:keepalive(enable, secs)
    end
  else
    self._keepAlive, self._keepAliveSecs = enable, secs
  end
  return self
end

function Socket:_onTimeout()
  self:emit('timeout')
end

-- setTimeout(ms [, fn]): 'timeout' after ms without activity (the socket stays open); 0 stops.
function Socket:setTimeout(ms, fn)
  local n = tonumber(ms)
  if n == nil or n < 0 or n ~= n then
    error(('ERR_OUT_OF_RANGE: timeout must be a number >= 0, got %s'):format(describe(ms)), 2)
  end
  if fn ~= nil then
    checkType(fn, 'function', 'callback', 2)
    if n == 0 then
      self:off('timeout', fn)
    else
      self:once('timeout', fn)
    end
  end
  if n == 0 then
    self[TIMEOUT_MS] = false
    local t = rawget(self, '_timer')
    if t then
      t:stop()
    end
    return self
  end
  if self[DESTROYED] then
    return self
  end
  self[TIMEOUT_MS] = n
  local t = rawget(self, '_timer')
  if not t then
    t = core.timer(function()
      self:_onTimeout()
    end)
    t:unref()
    self._timer = t
  end
  t:start(n, 0)
  return self
end

function Socket:ref()
  if self[HANDLE] and not self[DESTROYED] then
    self[HANDLE]:ref()
  end
  return self
end

function Socket:unref()
  if self[HANDLE] and not self[DESTROYED] then
    self[HANDLE]:unref()
  end
  return self
end

local connectOptions = { port = true, host = true, path = true, family = true, allowHalfOpen = true,
  timeout = true, noDelay = true, keepAlive = true, keepAliveInitialDelay = true }

-- (port [, host] [, fn]) | (path [, fn]) | (options [, fn]) -> options, fn
local function normalizeConnect(level, ...)
  local a1, a2, a3 = ...
  local opts, fn
  if type(a1) == 'table' then
    opts, fn = a1, a2
    checkKeys(opts, connectOptions, 'connect', level + 1)
    checkType(opts.host, 'string', 'options.host', level + 1)
    checkType(opts.path, 'string', 'options.path', level + 1)
    if opts.path == nil then
      checkPort(opts.port, level + 1, false)
    end
    if opts.family ~= nil and opts.family ~= 4 and opts.family ~= 6 and opts.family ~= 0
      and opts.family ~= 'IPv4' and opts.family ~= 'IPv6' then
      error('ERR_INVALID_ARG_VALUE: options.family must be 4, 6 or 0, got ' .. describe(opts.family),
        level + 1)
    end
  elseif type(a1) == 'string' and not isPortLike(a1) and a1:find('/') then
    opts, fn = { path = a1 }, a2
  else
    if type(a2) == 'function' then
      a2, a3 = nil, a2
    end
    checkType(a2, 'string', 'host', level + 1)
    opts, fn = { port = a1, host = a2 }, a3
    checkPort(a1, level + 1, false)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', level + 1)
  end
  return opts, fn
end

-- socket:connect(port [, host] [, fn]) / (path [, fn]) / (options [, fn])
function Socket:connect(...)
  local opts, fn = normalizeConnect(2, ...)
  return self:_connect(opts, fn)
end

function Socket:_connect(opts, fn)
  if self[CONNECTING] or self[HANDLE] then
    error('ERR_SOCKET_CONNECTING: socket is already connecting or connected', 3)
  end
  if fn then
    self:once('connect', fn)
  end
  if opts.allowHalfOpen ~= nil then
    self.allowHalfOpen = opts.allowHalfOpen == true
  end
  if opts.timeout then
    self:setTimeout(opts.timeout)
  end
  if opts.noDelay then
    self._noDelay = true
  end
  if opts.keepAlive then
    self._keepAlive = true
    self._keepAliveSecs = math.floor((opts.keepAliveInitialDelay or 0) / 1000)
  end
  self[CONNECTING] = true
  if opts.path then
    self._connectPath = opts.path
    local h = core.pipe(false, dispatch)
    h:set_ctx(self)
    self[HANDLE] = h
    h:connect(opts.path)
    return self
  end
  local port = checkPort(opts.port, 3, false)
  self._connectPort = port
  local host = opts.host or 'localhost'
  local fam = familyOf(host)
  if fam then
    self._addrs = { { address = host, family = fam } }
    self._addrIndex = 0
    self:_connectNext()
    return self
  end
  local family = opts.family
  if family == 0 then
    family = nil
  end
  local ok, err, code = core.getaddrinfo(host, nil, family, function(err2, list, code2)
    if self[DESTROYED] then
      return
    end
    if err2 ~= nil or #list == 0 then
      return self:destroy(resolveError(err2, code2 or 'EAI_NONAME', host))
    end
    self:emit('lookup', nil, list[1].address, list[1].family, host)
    self._addrs = list
    self._addrIndex = 0
    self:_connectNext()
  end)
  if not ok then
    self:destroy(resolveError(err, code, host))
  end
  return self
end

function Socket:_connectNext()
  local i = self._addrIndex + 1
  self._addrIndex = i
  local a = self._addrs[i]
  local h = core.tcp(dispatch)
  h:set_ctx(self)
  self[HANDLE] = h
  self._peername, self._socknameCache = nil, nil
  local ok, err, code = h:connect(a.address, self._connectPort)
  if not ok then
    -- Reported like an asynchronous failure so the next address is tried the same way.
    setImmediate(Socket._onConnect, self, err, code)
  end
end

net.Socket = Socket
net.Stream = Socket

---------------------------------------------------------------------------------------------
-- Server

local Server = class(Emitter)

local serverOptions = { allowHalfOpen = true, pauseOnConnect = true, noDelay = true, keepAlive = true,
  keepAliveInitialDelay = true }

Server._connRoom = false -- true: accepted sockets have net._SOCK_ROOM more array slots

function Server:_init(options, fn)
  if type(options) == 'function' then
    options, fn = nil, options
  end
  if options ~= nil then
    checkType(options, 'table', 'options', 4)
    checkKeys(options, serverOptions, 'server', 4)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: connection listener must be a function', 4)
  end
  options = options or {}
  self.allowHalfOpen = options.allowHalfOpen == true
  self.pauseOnConnect = options.pauseOnConnect == true
  self.noDelay = options.noDelay == true
  self.keepAlive = options.keepAlive == true
  self.keepAliveInitialDelay = options.keepAliveInitialDelay
  self.listening = false
  self._connections = 0
  if fn then
    self:on('connection', fn)
  end
end

local listenOptions = { port = true, host = true, path = true, backlog = true, exclusive = true,
  ipv6Only = true, balance = true, readableAll = true, writableAll = true, fdName = true }
local balances = { rr = true, none = true, reuseport = true, sticky = true, least = true }

-- listen's forms -> opts {host, port, family, backlog, path, exclusive, balance, ipv6Only}, fn.
local function normalizeListen(level, ...)
  local n = select('#', ...)
  local args = { ... }
  local fn
  while n > 0 and args[n] == nil do
    n = n - 1
  end
  if n > 0 and type(args[n]) == 'function' then
    fn = args[n]
    args[n] = nil
    n = n - 1
  end
  local a1 = args[1]
  local o
  if type(a1) == 'table' then
    if n > 1 then
      error('ERR_INVALID_ARG_TYPE: listen(options [, fn]) takes no other argument', level + 1)
    end
    checkKeys(a1, listenOptions, 'listen', level + 1)
    o = a1
    if o.port == nil and o.path == nil and o.fdName == nil then
      error('ERR_INVALID_ARG_VALUE: listen options must have the property "port", "path" or "fdName"',
        level + 1)
    end
  elseif type(a1) == 'string' and not isPortLike(a1) and a1:find('/') then
    o = { path = a1, backlog = args[2] }
  else
    local host, backlog = args[2], args[3]
    if type(host) == 'number' then
      host, backlog = nil, host
    end
    if n > 3 or (n == 3 and type(args[2]) == 'number') then
      error('ERR_INVALID_ARG_TYPE: listen(port [, host] [, backlog] [, fn])', level + 1)
    end
    o = { port = a1 == nil and 0 or a1, host = host, backlog = backlog }
  end
  checkType(o.host, 'string', 'host', level + 1)
  checkType(o.path, 'string', 'path', level + 1)
  checkType(o.fdName, 'string', 'fdName', level + 1)
  if o.backlog ~= nil and (type(o.backlog) ~= 'number' or o.backlog < 0 or o.backlog % 1 ~= 0) then
    error('ERR_INVALID_ARG_VALUE: backlog must be an integer >= 0, got ' .. describe(o.backlog), level + 1)
  end
  if o.balance ~= nil and not balances[o.balance] then
    error("ERR_INVALID_ARG_VALUE: balance must be 'rr', 'none', 'reuseport', 'sticky' or 'least', got "
      .. describe(o.balance), level + 1)
  end
  local opts = {
    backlog = o.backlog or 511,
    exclusive = o.exclusive == true,
    balance = o.balance,
    ipv6Only = o.ipv6Only == true,
    fdName = o.fdName, -- a socket inherited from systemd, by name (_systemd.lua)
  }
  if o.path ~= nil then
    if o.path == '' then
      error('ERR_INVALID_ARG_VALUE: path must not be empty', level + 1)
    end
    opts.path = o.path
  else
    opts.port = checkPort(o.port == nil and 0 or o.port, level + 1, true)
    if o.host == nil or o.host == '' then
      -- Node's default: every address, dual-stack where IPv6 exists (see bindListen).
      opts.host, opts.family, opts.anyHost = '::', 'IPv6', true
    else
      opts.host = o.host
      opts.family = familyOf(o.host) -- nil: a name, resolved before binding
    end
  end
  return opts, fn
end

local function bindTcp(opts, cb, host)
  local h = core.tcp(cb)
  local ok, err, code = h:bind(host, opts.port, { ipv6only = opts.ipv6Only,
    reuseport = opts.balance == 'reuseport' })
  if ok then
    ok, err, code = h:listen(opts.backlog or 511)
  end
  if not ok then
    h:close()
    return nil, err, code
  end
  return h
end

-- Binds and listens locally: -> tcp or pipe handle whose events go to cb, or nil, err, code.
-- opts.host must be numeric. The default host '::' falls back to 0.0.0.0 without IPv6.
function net._bindListen(opts, cb)
  if opts.path then
    local h = core.pipe(false, cb)
    local ok, err, code = h:bind(opts.path)
    if ok then
      ok, err, code = h:listen(opts.backlog or 511)
    end
    if not ok then
      h:close()
      return nil, err, code
    end
    return h
  end
  local h, err, code = bindTcp(opts, cb, opts.host)
  if h == nil and opts.anyHost and (code == 'EAFNOSUPPORT' or code == 'EADDRNOTAVAIL'
    or code == 'EINVAL') then
    h, err, code = bindTcp(opts, cb, '0.0.0.0')
  end
  return h, err, code
end

function Server:_callback()
  local cb = self._cb
  if cb == nil then
    cb = function(ev, err, code)
      if ev == 'connection' then
        return self:_onConnection(err, code)
      end
    end
    self._cb = cb
  end
  return cb
end

function Server:listen(...)
  if self.listening or self._listenPending then
    error('ERR_SERVER_ALREADY_LISTEN: listen was already called; close the server first', 2)
  end
  local opts, fn = normalizeListen(2, ...)
  if fn then
    self:once('listening', fn)
  end
  self._listenPending = true
  self._closing, self._closeEmitted, self._handleClosed = nil, nil, nil
  self._opts = opts
  self._address = nil
  if opts.path == nil and opts.family == nil then
    local ok, err, code = core.getaddrinfo(opts.host, nil, nil, function(err2, list, code2)
      if not self._listenPending then
        return
      end
      if err2 ~= nil or #list == 0 then
        return self:_listenError(resolveError(err2, code2 or 'EAI_NONAME', opts.host))
      end
      opts.host, opts.family = list[1].address, list[1].family
      self:_listen(opts)
    end)
    if not ok then
      setImmediate(Server._listenError, self, resolveError(err, code, opts.host))
    end
    return self
  end
  self:_listen(opts)
  return self
end

function Server:_listen(opts)
  local hook = net._listenHook
  if hook ~= nil and not opts.exclusive then
    hook(self, opts, function(err, handle, address)
      if not self._listenPending then
        -- Closed while the master was binding: let go of what arrived.
        if handle then
          handle:close()
        end
        return
      end
      if err ~= nil then
        return self:_listenError(err)
      end
      if address ~= nil then
        self:_setAddress(address)
      end
      if handle ~= nil then
        return self:_listenOnHandle(handle)
      end
      self:_onListening()
    end)
    return
  end
  local h, err, code
  if opts.fdName then
    -- Inherited sockets are the master's, shared with its workers: a process that shares
    -- no port through a master has none to take.
    err, code = 'ENOTSUP: listen{fdName=} needs a cluster worker (sockets inherited from '
      .. 'systemd are taken by the master)', 'ENOTSUP'
  else
    h, err, code = net._bindListen(opts, self:_callback())
  end
  if h == nil then
    local extra = { syscall = 'listen', address = opts.path or opts.host, port = opts.port }
    setImmediate(Server._listenError, self, fromUv(err, code, extra))
    return
  end
  self._handle = h
  setImmediate(Server._onListening, self)
end

function Server:_listenError(err)
  if not self._listenPending then
    return
  end
  self._listenPending = false
  self:emit('error', err)
end

function Server:_onListening()
  if not self._listenPending then
    return
  end
  self._listenPending = false
  self.listening = true
  self:emit('listening')
end

-- Starts accepting on an already bound (and possibly listening) tcp or pipe handle, e.g. one
-- received from the master (the shared-handle policy). Emits 'listening' or 'error'.
function Server:_listenOnHandle(handle)
  handle:set_callback(self:_callback())
  local ok, err, code = handle:listen(self._opts and self._opts.backlog or 511)
  if not ok then
    handle:close()
    setImmediate(Server._listenError, self, fromUv(err, code, { syscall = 'listen' }))
    return
  end
  self._listenPending = true
  self._handle = handle
  setImmediate(Server._onListening, self)
end

-- The address reported by address() when the socket lives in another process.
function Server:_setAddress(addr)
  self._address = addr
end

function Server:_onConnection(err, code)
  if err ~= nil then
    return self:emit('error', fromUv(err, code, { syscall = 'accept' }))
  end
  local h = self._handle
  if h == nil then
    return
  end
  local sock = newSocket(nil, self.allowHalfOpen, self, self._connRoom)
  local ch = h:accept(dispatch, sock, self._connRoom) -- room: the stream keeps the parser
  if ch == nil then
    return -- another process sharing the socket took it first
  end
  sock[HANDLE] = ch
  self:_newConnection(sock, ch)
end

-- Adopts a connected tcp handle (e.g. an fd the master accepted and passed) as if accepted.
function Server:_addConnection(handle)
  local sock = newSocket(handle, self.allowHalfOpen, self, self._connRoom)
  handle:set_callback(dispatch, sock)
  self:_newConnection(sock, handle)
  return sock
end

function Server:_newConnection(sock, h)
  self._connections = self._connections + 1
  counters.conns_accepted = counters.conns_accepted + 1
  counters.conns_open = counters.conns_open + 1
  connsOpen = connsOpen + 1
  if connsOpen > gcramp.high then -- a new high: a lower GC pause while they ramp up
    gcramp.ramp(connsOpen)
  end
  if self.noDelay and h.nodelay then
    h:nodelay(true)
  end
  if self.keepAlive and h.keepalive then
    h:keepalive(true, math.floor((self.keepAliveInitialDelay or 0) / 1000))
  end
  if self.pauseOnConnect then
    sock._paused = true
  else
    h:read_start()
  end
  self:emit('connection', sock)
end

-- The owner hooks of the sockets this server accepted (see the top of this file): it counts
-- them, and their errors are theirs (an 'error' without a listener is uncaught).
function Server._sockEnd() end
function Server._sockFinish() end
function Server._sockDrain() end
function Server._sockError()
  return false
end
function Server._sockClose() end
function Server:_sockClosed()
  self:_connectionClosed()
end

function Server:_connectionClosed()
  self._connections = self._connections - 1
  counters.conns_open = counters.conns_open - 1
  connsOpen = connsOpen - 1
  if self._closing then
    self:_maybeClose()
  end
end

function Server:_maybeClose()
  if self._handleClosed and self._connections <= 0 and not self._closeEmitted then
    self._closeEmitted = true
    self:emit('close')
  end
end

-- close([fn]): stops accepting; 'close' once every connection has ended. fn(err) gets
-- ERR_SERVER_NOT_RUNNING when the server was not listening.
function Server:close(fn)
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  if not (self.listening or self._listenPending) then
    if fn then
      setImmediate(fn, makeError('ERR_SERVER_NOT_RUNNING', 'the server is not running'))
    end
    return self
  end
  if fn then
    self:once('close', fn)
  end
  self._closing = true
  self.listening = false
  self._listenPending = false
  local hook = self._closeHook
  if hook then
    self._closeHook = nil
    hook(self)
  end
  local h = self._handle
  self._handle = nil
  if h ~= nil then
    h:close(function()
      self._handleClosed = true
      self:_maybeClose()
    end)
  else
    self._handleClosed = true
    setImmediate(Server._maybeClose, self)
  end
  return self
end

-- address() -> {address=, family=, port=}, the path for a Unix socket, or nil.
function Server:address()
  if self._address ~= nil then
    return self._address
  end
  local h = self._handle
  if h == nil then
    return nil
  end
  if self._opts and self._opts.path then
    return self._opts.path
  end
  return h:getsockname()
end

function Server:getConnections(fn)
  checkType(fn, 'function', 'callback', 2)
  if fn then
    setImmediate(fn, nil, self._connections)
  end
  return self
end

function Server:ref()
  self._unref = false
  if self._handle then
    self._handle:ref()
  end
  return self
end

function Server:unref()
  self._unref = true
  if self._handle then
    self._handle:unref()
  end
  return self
end

net.Server = Server

---------------------------------------------------------------------------------------------

function net.createServer(options, fn)
  if options == net then
    error('ERR_INVALID_THIS: net:createServer: use a dot call (net.createServer(...))', 2)
  end
  local server = Server.new(options, fn) -- not a tail call: errors name the caller's line
  return server
end

-- net.connect(port [, host] [, fn]) / (path [, fn]) / (options [, fn]) -> socket
function net.connect(...)
  if (...) == net then
    error('ERR_INVALID_THIS: net:connect: use a dot call (net.connect(...))', 2)
  end
  local opts, fn = normalizeConnect(2, ...)
  local sock = newSocket(nil, false, false)
  return sock:_connect(opts, fn)
end
net.createConnection = net.connect

-- Exposed for dgram and the cluster module.
net._checkPort = checkPort
net._resolveError = resolveError

-- Dot calls (`server.listen(8000)`) raise ERR_INVALID_THIS at the caller (_class.lua).
-- The per-connection methods check self themselves.
class.guard(Socket, 'socket', { write = true, finish = true, destroy = true, setNoDelay = true, emit = true })
class.guard(Server, 'server', { emit = true })

return net
