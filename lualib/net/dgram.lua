-- dgram.lua: UDP sockets (Node's `dgram` in Lua's idiom).
--
-- Cluster hook (nil in a standalone process): dgram._bindHook(socket, opts, fn(err, handle))
-- is called by Socket:bind with the normalised options {address, port, family, exclusive,
-- reuseAddr, ipv6Only} unless opts.exclusive; fn(nil, udpHandle) adopts a bound handle
-- (Socket:_bindOnHandle), fn(err) emits 'error' (err is an error table, events.makeError).
local core = require('_core')
local class = require('_class')
local events = require('events')
local timer = require('timer')
local net = require('net')

local Emitter = events.Emitter
local makeError, fromUv = events.makeError, events.fromUv
local setImmediate = timer.setImmediate

local dgram = {}

local Socket = class(Emitter)

local types = { udp4 = 'IPv4', udp6 = 'IPv6' }
local createOptions = { type = true, reuseAddr = true, ipv6Only = true, recvBufferSize = true,
  sendBufferSize = true, lookup = true }

function Socket:_init(kind, fn, level)
  local opts = kind
  if type(kind) == 'string' then
    opts = { type = kind }
  elseif type(kind) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: createSocket expects a type string or an options table, got '
      .. type(kind), level)
  end
  for k in pairs(opts) do
    if not createOptions[k] then
      error(("ERR_INVALID_ARG_VALUE: unknown dgram option '%s'"):format(tostring(k)), level)
    end
  end
  local family = types[opts.type]
  if family == nil then
    error(("ERR_SOCKET_BAD_TYPE: bad socket type specified, valid types are 'udp4' and 'udp6', got %s")
      :format(tostring(opts.type)), level)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: the message listener must be a function', level)
  end
  self.type = opts.type
  self._family = family
  self._reuseAddr = opts.reuseAddr == true
  self._ipv6Only = opts.ipv6Only == true
  self._state = 'unbound' -- 'binding', 'bound', 'closed'
  if fn then
    self:on('message', fn)
  end
end

function Socket:_callback()
  local cb = self._cb
  if cb == nil then
    cb = function(ev, a, b)
      if ev == 'message' then
        return self:emit('message', a, b)
      elseif ev == 'error' then
        return self:emit('error', fromUv(a, b, { syscall = 'recvmsg' }))
      end
    end
    self._cb = cb
  end
  return cb
end

function Socket:_handleOrCreate()
  local h = self._handle
  if h == nil then
    h = core.udp(self:_callback())
    self._handle = h
  end
  return h
end

local function checkOpen(self, level)
  if self._state == 'closed' then
    error('ERR_SOCKET_DGRAM_NOT_RUNNING: not running', level + 1)
  end
end

local function anyAddress(family)
  return family == 'IPv6' and '::' or '0.0.0.0'
end

-- bind([port] [, address] [, fn]) / bind({port=, address=, exclusive=} [, fn])
function Socket:bind(a1, a2, a3)
  checkOpen(self, 2)
  if self._state ~= 'unbound' then
    error('ERR_SOCKET_ALREADY_BOUND: socket is already bound', 2)
  end
  local port, address, exclusive, fn, fdName
  if type(a1) == 'table' then
    for k in pairs(a1) do
      if k ~= 'port' and k ~= 'address' and k ~= 'exclusive' and k ~= 'fd' and k ~= 'fdName' then
        error(("ERR_INVALID_ARG_VALUE: unknown bind option '%s'"):format(tostring(k)), 2)
      end
    end
    port, address, exclusive, fn = a1.port, a1.address, a1.exclusive == true, a2
    fdName = a1.fdName
    if fdName ~= nil and type(fdName) ~= 'string' then
      error('ERR_INVALID_ARG_TYPE: fdName must be a string, got ' .. type(fdName), 2)
    end
  else
    if type(a1) == 'function' then
      a1, a2, a3 = nil, nil, a1
    elseif type(a2) == 'function' then
      a2, a3 = nil, a2
    end
    port, address, fn = a1, a2, a3
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  if address ~= nil and type(address) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: address must be a string, got ' .. type(address), 2)
  end
  port = net._checkPort(port == nil and 0 or port, 2, true)
  if fn then
    self:once('listening', fn)
  end
  self._state = 'binding'
  local opts = { address = address or anyAddress(self._family), port = port, family = self._family,
    exclusive = exclusive == true, reuseAddr = self._reuseAddr, ipv6Only = self._ipv6Only,
    fdName = fdName }
  local fam = core.isip(opts.address)
  if fam == 0 then
    local ok, err, code = core.getaddrinfo(opts.address, nil, self._family, function(err2, list, code2)
      if self._state ~= 'binding' then
        return
      end
      if err2 ~= nil or #list == 0 then
        return self:_bindError(net._resolveError(err2, code2 or 'EAI_NONAME', opts.address))
      end
      opts.address = list[1].address
      self:_bind(opts)
    end)
    if not ok then
      setImmediate(Socket._bindError, self, net._resolveError(err, code, opts.address))
    end
    return self
  end
  if (fam == 4) ~= (self._family == 'IPv4') then
    setImmediate(Socket._bindError, self, makeError('EINVAL',
      ('address %s is not of the socket family %s'):format(opts.address, self._family),
      { syscall = 'bind', address = opts.address, port = port }))
    return self
  end
  self:_bind(opts)
  return self
end

function Socket:_bind(opts)
  local hook = dgram._bindHook
  if hook ~= nil and not opts.exclusive then
    hook(self, opts, function(err, handle)
      if self._state ~= 'binding' then
        if handle then
          handle:close()
        end
        return
      end
      if err ~= nil then
        return self:_bindError(err)
      end
      self:_bindOnHandle(handle)
    end)
    return
  end
  if opts.fdName then
    setImmediate(Socket._bindError, self, makeError('ENOTSUP', 'ENOTSUP: bind{fdName=} needs a '
      .. 'cluster worker (sockets inherited from systemd are taken by the master)', { syscall = 'bind' }))
    return
  end
  local h = self:_handleOrCreate()
  local ok, err, code = h:bind(opts.address, opts.port, { reuseaddr = opts.reuseAddr,
    ipv6only = opts.ipv6Only })
  if ok then
    ok, err, code = h:recv_start()
  end
  if not ok then
    setImmediate(Socket._bindError, self, fromUv(err, code, { syscall = 'bind',
      address = opts.address, port = opts.port }))
    return
  end
  setImmediate(Socket._onListening, self)
end

function Socket:_bindError(err)
  if self._state ~= 'binding' then
    return
  end
  self._state = 'unbound'
  self:emit('error', err)
end

function Socket:_onListening()
  if self._state ~= 'binding' then
    return
  end
  self._state = 'bound'
  self:emit('listening')
end

-- Adopts a bound udp handle (e.g. the master's shared socket) and starts receiving.
function Socket:_bindOnHandle(handle)
  local old = self._handle
  if old ~= nil and old ~= handle then
    old:close()
  end
  self._handle = handle
  self._state = 'binding'
  handle:set_callback(self:_callback())
  local ok, err, code = handle:recv_start()
  if not ok then
    return setImmediate(Socket._bindError, self, fromUv(err, code, { syscall = 'recvmsg' }))
  end
  setImmediate(Socket._onListening, self)
end

-- Binds to the any-address and port 0 before a first send, as Node does.
function Socket:_autoBind()
  local h = self:_handleOrCreate()
  local ok, err, code = h:bind(anyAddress(self._family), 0, { reuseaddr = self._reuseAddr,
    ipv6only = self._ipv6Only })
  if ok then
    ok, err, code = h:recv_start()
  end
  if not ok then
    return nil, fromUv(err, code, { syscall = 'bind' })
  end
  self._state = 'binding'
  setImmediate(Socket._onListening, self)
  return true
end

-- A send that failed at once: fn(err) or an 'error' event, on the next turn as libuv would.
local function sendFailed(self, fn, e)
  if fn then
    setImmediate(fn, e)
  else
    setImmediate(Emitter.emit, self, 'error', e)
  end
end

function Socket:_sendTo(msg, address, port, fn)
  if self._state == 'closed' then
    if fn then
      fn(makeError('ERR_SOCKET_DGRAM_NOT_RUNNING', 'not running'))
    end
    return
  end
  local ok, err, code = self._handle:send(msg, address, port, fn)
  if not ok then
    sendFailed(self, fn, fromUv(err, code, { syscall = 'send', address = address, port = port }))
  end
end

-- send(msg, port [, address] [, fn(err)]): msg is a string or a list of strings. Without an
-- address, sends to the loopback address of the socket's family.
function Socket:send(msg, port, address, fn)
  checkOpen(self, 2)
  if type(address) == 'function' then
    address, fn = nil, address
  end
  if type(msg) == 'table' then
    for i = 1, #msg do
      if type(msg[i]) ~= 'string' then
        error('ERR_INVALID_ARG_TYPE: msg must be a string or a list of strings', 2)
      end
    end
    msg = table.concat(msg)
  elseif type(msg) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: msg must be a string or a list of strings, got ' .. type(msg), 2)
  end
  port = net._checkPort(port, 2, false)
  if address ~= nil and type(address) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: address must be a string, got ' .. type(address), 2)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  if self._handle == nil or self._state == 'unbound' then
    local ok, err = self:_autoBind()
    if not ok then
      if fn then
        setImmediate(fn, err)
      else
        setImmediate(Emitter.emit, self, 'error', err)
      end
      return
    end
  end
  address = address or (self._family == 'IPv6' and '::1' or '127.0.0.1')
  if core.isip(address) ~= 0 then
    return self:_sendTo(msg, address, port, fn)
  end
  local ok, err, code = core.getaddrinfo(address, nil, self._family, function(err2, list, code2)
    local e
    if err2 ~= nil or #list == 0 then
      e = net._resolveError(err2, code2 or 'EAI_NONAME', address)
    else
      return self:_sendTo(msg, list[1].address, port, fn)
    end
    if fn then
      fn(e)
    elseif self._state ~= 'closed' then
      self:emit('error', e)
    end
  end)
  if not ok then
    sendFailed(self, fn, net._resolveError(err, code, address))
  end
end

-- close([fn]): 'close' once the handle is closed.
function Socket:close(fn)
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  checkOpen(self, 2)
  if fn then
    self:once('close', fn)
  end
  self._state = 'closed'
  local h = self._handle
  self._handle = nil
  if h ~= nil then
    h:close(function()
      self:emit('close')
    end)
  else
    setImmediate(Emitter.emit, self, 'close')
  end
  return self
end

local function bound(self, level)
  local h = self._handle
  if h == nil or self._state ~= 'bound' and self._state ~= 'binding' then
    error('ERR_SOCKET_DGRAM_NOT_RUNNING: not running', level + 1)
  end
  return h
end

-- address() -> {address=, family=, port=}; raises when the socket is not bound.
function Socket:address()
  local h = bound(self, 2)
  local a, err = h:getsockname()
  if not a then
    error(err, 2)
  end
  return a
end

local function call(self, method, ...)
  local h = bound(self, 3)
  local ok, err = h[method](h, ...)
  if not ok then
    error(err, 3)
  end
  return self
end

function Socket:setBroadcast(flag)
  call(self, 'set_broadcast', flag == true) -- not a tail call: errors name the caller's line
  return self
end

local function checkTTL(ttl, level)
  if type(ttl) ~= 'number' or ttl % 1 ~= 0 then
    error('ERR_INVALID_ARG_TYPE: ttl must be an integer, got ' .. type(ttl), level + 1)
  end
  if ttl < 1 or ttl > 255 then
    error('ERR_OUT_OF_RANGE: ttl must be >= 1 and <= 255, got ' .. ttl, level + 1)
  end
end

function Socket:setTTL(ttl)
  checkTTL(ttl, 2)
  call(self, 'set_ttl', ttl)
  return ttl
end

function Socket:setMulticastTTL(ttl)
  if type(ttl) ~= 'number' or ttl % 1 ~= 0 or ttl < 0 or ttl > 255 then
    error('ERR_OUT_OF_RANGE: ttl must be an integer >= 0 and <= 255, got ' .. tostring(ttl), 2)
  end
  call(self, 'set_multicast_ttl', ttl)
  return ttl
end

function Socket:setMulticastLoopback(flag)
  call(self, 'set_multicast_loopback', flag == true)
  return flag
end

local function checkGroup(group, iface, level)
  if type(group) ~= 'string' then
    error('ERR_MISSING_ARGS: the multicast address must be a string', level + 1)
  end
  if iface ~= nil and type(iface) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: interface must be a string, got ' .. type(iface), level + 1)
  end
end

function Socket:addMembership(group, iface)
  checkGroup(group, iface, 2)
  call(self, 'add_membership', group, iface) -- not a tail call: errors name the caller's line
  return self
end

function Socket:dropMembership(group, iface)
  checkGroup(group, iface, 2)
  call(self, 'drop_membership', group, iface) -- not a tail call: errors name the caller's line
  return self
end

function Socket:ref()
  if self._handle then
    self._handle:ref()
  end
  return self
end

function Socket:unref()
  if self._handle then
    self._handle:unref()
  end
  return self
end

dgram.Socket = Socket

-- createSocket('udp4' | 'udp6' | {type=, reuseAddr=, ipv6Only=} [, fn(msg, rinfo)]) -> socket
function dgram.createSocket(kind, fn)
  if kind == dgram then
    error('ERR_INVALID_THIS: dgram:createSocket: use a dot call (dgram.createSocket(...))', 2)
  end
  local socket = Socket.new(kind, fn, 4) -- not a tail call: errors name the caller's line
  return socket
end

-- Dot calls (`socket.bind(41234)`) raise ERR_INVALID_THIS at the caller (_class.lua).
class.guard(Socket, 'socket', { emit = true })

return dgram
