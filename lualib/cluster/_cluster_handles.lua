-- _cluster_handles.lua: user handle passing (API.md, `worker:send(msg, handle)` and
-- `process.send(msg, handle)`). Registers packers for net sockets, net servers and dgram
-- sockets with _cluster_ipc, so the receiver's 'message' gets a live object of the same kind:
--   net.Socket   the connection's fd; the receiver reads at once. The sender's copy is closed
--                once the message is handed to the channel (Node's default; keepOpen = true in
--                an options table, `send(msg, socket, {keepOpen = true} [, fn])`, keeps it).
--   net.Server   the listening fd; the received server is listening (Server:_listenOnHandle)
--                and both processes accept on it. A server whose port is shared through the
--                master (a worker's default) has no socket of its own and cannot be sent.
--   dgram.Socket the bound fd; the received socket is bound and receives.
-- Sending a closed (or never opened) socket or server raises, except a socket this process
-- already sent (and so closed): the message then goes without it, as in Node.
local core = require('_core')
local ipc = require('_cluster_ipc')

local function isA(obj, cls)
  if type(obj) ~= 'table' then
    return false
  end
  local mt = getmetatable(obj)
  while mt ~= nil do
    if mt == cls then
      return true
    end
    mt = rawget(mt, 'super')
  end
  return false
end

local function net()
  return require('net')
end

local function dgram()
  return require('dgram')
end

-- A stream handle's kind: tcp handles have nodelay, pipes do not.
local function streamKind(h)
  return h.nodelay ~= nil and 'tcp' or 'pipe'
end

-- Opens a received fd as a handle of kind; closes every fd it does not use. -> handle | nil
local function adopt(kind, fds)
  for i = 2, #fds do
    core.ipc_closefd(fds[i])
  end
  local fd = fds[1]
  if fd == nil then
    return nil
  end
  local h
  if kind == 'pipe' then
    h = core.pipe(false)
  elseif kind == 'udp' then
    h = core.udp()
  else
    h = core.tcp()
  end
  if not h:open(fd) then
    h:close()
    core.ipc_closefd(fd)
    return nil
  end
  return h
end

-- Raises (at `level` of the caller) when handle cannot be sent; returns its packer name.
local function check(handle, level)
  local n = net()
  if isA(handle, n.Socket) then
    local h = handle._handle
    if handle.destroyed or handle.connecting or h == nil or h:is_closing() then
      error('ERR_SOCKET_CLOSED: cannot send a closed socket as a handle', level + 1)
    end
    return 'net.Socket'
  elseif isA(handle, n.Server) then
    if handle._handle == nil then
      if handle.listening then
        error('ERR_INVALID_HANDLE_TYPE: this server shares its port through the master and has no '
          .. 'socket of its own to send (listen with exclusive = true)', level + 1)
      end
      error('ERR_SERVER_NOT_RUNNING: cannot send a server that is not listening', level + 1)
    end
    return 'net.Server'
  elseif isA(handle, dgram().Socket) then
    if handle._state == 'closed' or handle._handle == nil or handle._handle:is_closing() then
      error('ERR_SOCKET_DGRAM_NOT_RUNNING: cannot send a closed or unbound dgram socket', level + 1)
    end
    return 'dgram.Socket'
  end
  return nil
end

ipc.registerHandleType('net.Socket', {
  test = function(h)
    return isA(h, net().Socket)
  end,
  pack = function(s)
    check(s, 3)
    return { kind = streamKind(s._handle), allowHalfOpen = s.allowHalfOpen == true },
      { s._handle:fileno() }
  end,
  unpack = function(desc, fds)
    local h = adopt(desc.kind, fds)
    return h and net().Socket._wrap(h, { allowHalfOpen = desc.allowHalfOpen == true })
  end,
})

ipc.registerHandleType('net.Server', {
  test = function(h)
    return isA(h, net().Server)
  end,
  pack = function(s)
    check(s, 3)
    local opts = s._opts or {}
    return { kind = streamKind(s._handle), path = opts.path, backlog = opts.backlog,
      allowHalfOpen = s.allowHalfOpen, pauseOnConnect = s.pauseOnConnect }, { s._handle:fileno() }
  end,
  unpack = function(desc, fds)
    local h = adopt(desc.kind, fds)
    if h == nil then
      return nil
    end
    local server = net().createServer({ allowHalfOpen = desc.allowHalfOpen == true,
      pauseOnConnect = desc.pauseOnConnect == true })
    server._opts = { backlog = type(desc.backlog) == 'number' and desc.backlog or 511,
      path = type(desc.path) == 'string' and desc.path or nil }
    server:_listenOnHandle(h)
    return server
  end,
})

ipc.registerHandleType('dgram.Socket', {
  test = function(h)
    return isA(h, dgram().Socket)
  end,
  pack = function(s)
    check(s, 3)
    return { socketType = s.type }, { s._handle:fileno() }
  end,
  unpack = function(desc, fds)
    local h = adopt('udp', fds)
    if h == nil then
      return nil
    end
    local s = dgram().createSocket(desc.socketType == 'udp6' and 'udp6' or 'udp4')
    s:_bindOnHandle(h)
    return s
  end,
})

-- Wraps a send function (worker:send or process.send; `self` is passed through) with the
-- handle checks and the closing of a sent socket. send(msg, handle, [options], [fn]).
local function wrap(send)
  return function(self, msg, handle, opts, fn)
    if type(handle) == 'function' then
      handle, opts, fn = nil, nil, handle
    elseif type(opts) == 'function' then
      opts, fn = nil, opts
    end
    if opts ~= nil and type(opts) ~= 'table' then
      error('ERR_INVALID_ARG_TYPE: options must be a table', 2)
    end
    if handle ~= nil and type(handle) == 'table' and handle._sentAsHandle then
      -- Already handed to another process (and closed here): as in Node, the message goes
      -- without it rather than failing.
      handle = nil
    end
    if handle == nil then
      return send(self, msg, nil, fn) -- a tail call: errors still name the caller's line
    end
    -- Everything that can raise does so here, at the caller's level, before anything is sent.
    local kind = check(handle, 2)
    ipc.pack(msg, handle, 2)
    local ok = send(self, msg, handle, fn)
    if ok and kind == 'net.Socket' and not (opts and opts.keepOpen) then
      handle._sentAsHandle = true
      handle:destroy()
    end
    return ok
  end
end

return function(cluster)
  if cluster.isWorker then
    local raw = process.send
    local send = wrap(function(_, msg, handle, fn)
      return raw(msg, handle, fn)
    end)
    process.send = function(msg, handle, opts, fn)
      if msg == process then
        error('ERR_INVALID_THIS: process:send: use a dot call (process.send(...))', 2)
      end
      return send(nil, msg, handle, opts, fn)
    end
    if cluster.worker then
      cluster.worker.send = function(_, msg, handle, opts, fn)
        return send(nil, msg, handle, opts, fn)
      end
    end
  else
    cluster.Worker.send = wrap(cluster.Worker.send)
  end
end
