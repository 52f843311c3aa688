-- _cluster_shared.lua: listening ports shared through the master (ARCHITECTURE.md).
--
-- A worker's server:listen / socket:bind asks the master (queryServer). The master keeps one
-- socket per key (address, port, family or path, and the worker's index for that key, so a
-- worker's second concurrent listen(0) gets a port of its own while every worker's first
-- listen(0) shares one, as in Node). Policies, per server (`balance` option) or cluster-wide
-- (cluster.settings.balance, cluster.schedulingPolicy):
--   rr, least, sticky  the master accepts and hands connections out in C (runtime/rr.c)
--   none               the master binds; each worker gets the listening fd and accepts itself
--   reuseport          each worker binds its own SO_REUSEPORT socket on a port the master
--                      reserves; the kernel balances
-- UDP: the master binds one socket per key and sends the same fd to every worker.
local core = require('_core')
local events = require('events')
local setImmediate = require('timer').setImmediate
local counters = require('_metrics').c -- hand-offs received, for metrics

local M = {}

local BALANCES = { rr = true, none = true, reuseport = true, sticky = true, least = true }

local function keyOf(kind, opts)
  if opts.fdName then
    return kind .. ':fd:' .. opts.fdName
  end
  if opts.path then
    return kind .. ':' .. opts.path
  end
  return ('%s:%s:%d:%s'):format(kind, tostring(opts.host), opts.port or 0, tostring(opts.family))
end

---------------------------------------------------------------------------------------------
-- Worker side

function M.worker(cluster)
  local net = require('net')
  local dgram = require('dgram')
  local sendInternal = cluster._sendInternal
  local internal = cluster._internal

  local seq = 0
  local waiting = {} -- seq -> fn(reply, fds)
  local servers = {} -- key -> server (rr family: connections arrive as newconn)
  local indexes = {} -- base key -> { [index] = true } in use by this worker
  local live = {} -- server or udp socket -> true while shared through the master

  -- The channel does not keep a worker alive; a pending query does (a timer that also bounds
  -- the wait, should the master never answer).
  local function query(msg, fn)
    seq = seq + 1
    msg.cmd = 'queryServer'
    msg.seq = seq
    local mySeq = seq
    local t = setTimeout(function()
      local f = waiting[mySeq]
      waiting[mySeq] = nil
      if f then
        f.fn({ err = 'ETIMEDOUT', message = 'ETIMEDOUT: the master did not answer the listen request' })
      end
    end, 30000)
    waiting[seq] = { fn = fn, timer = t }
    if not sendInternal(msg) then
      waiting[seq] = nil
      clearTimeout(t)
      fn({ err = 'ERR_IPC_CHANNEL_CLOSED', message = 'the channel to the master is closed' })
    end
  end

  -- Once the channel is closed no answer can come: as in Node, pending listens are dropped
  -- (their servers never emit 'listening' nor 'error'), so a worker disconnected while its
  -- listen was pending exits at once instead of waiting for the timeout.
  cluster._onChannelClosed = function()
    for s, w in pairs(waiting) do
      waiting[s] = nil
      clearTimeout(w.timer)
    end
  end

  internal.queryReply = function(msg, fds)
    local w = msg.seq ~= nil and waiting[msg.seq]
    if w then
      waiting[msg.seq] = nil
      clearTimeout(w.timer)
      w.fn(msg, fds)
    else
      for _, fd in ipairs(fds or {}) do
        core.ipc_closefd(fd)
      end
    end
  end

  local function takeIndex(base)
    local used = indexes[base] or {}
    indexes[base] = used
    local i = 0
    while used[i] do
      i = i + 1
    end
    used[i] = true
    return i
  end

  local function releaseIndex(base, i)
    if indexes[base] then
      indexes[base][i] = nil
    end
  end

  local function abandon(base, index, key, fds)
    releaseIndex(base, index)
    sendInternal({ cmd = 'closeServer', key = key })
    for _, fd in ipairs(fds or {}) do
      core.ipc_closefd(fd)
    end
  end

  local function replyError(reply)
    return events.fromUv(reply.message or reply.err, reply.err, {
      syscall = reply.syscall, address = reply.address_, port = reply.port })
  end

  -- Closing all shared servers is what a disconnect does first (cluster._closers).
  table.insert(cluster._closers, function(done)
    local left = 0
    for obj in pairs(live) do
      left = left + 1
      obj:once('close', function()
        left = left - 1
        if left == 0 then
          done()
        end
      end)
      obj:close()
    end
    if left == 0 then
      done()
    end
  end)

  -- 'least': the master needs each worker's open-connection count for the key. Reported when
  -- connections open or close, at most once per loop turn and only when it changed.
  local function reportLoad(server, key)
    local scheduled, lastSent = false, 0
    local function send()
      scheduled = false
      if servers[key] ~= server then
        return
      end
      local n = server._connections
      if n ~= lastSent then
        lastSent = n
        sendInternal({ cmd = 'load', key = key, n = n })
      end
    end
    local function schedule()
      if not scheduled then
        scheduled = true
        setImmediate(send)
      end
    end
    server._connLoadReport = schedule
    -- Per instance, so servers of other policies pay nothing per connection.
    local closed = server._connectionClosed
    server._connectionClosed = function(s)
      closed(s)
      schedule()
    end
    server:once('close', function()
      server._connLoadReport = nil
      server._connectionClosed = nil
    end)
  end

  net._listenHook = function(server, opts, cb)
    local balance = opts.balance
    if balance ~= nil and not BALANCES[balance] then
      return cb(events.makeError('ERR_INVALID_ARG_VALUE',
        ("balance must be 'rr', 'none', 'reuseport', 'sticky' or 'least', got '%s'"):format(tostring(balance))))
    end
    local base = keyOf('tcp', opts)
    local index = takeIndex(base)
    local key = base .. ':' .. index
    query({ key = key, kind = 'tcp', host = opts.host, port = opts.port, family = opts.family,
      path = opts.path, backlog = opts.backlog, ipv6Only = opts.ipv6Only, balance = balance,
      anyHost = opts.anyHost, fdName = opts.fdName }, function(reply, fds)
      if reply.err then
        releaseIndex(base, index)
        return cb(replyError(reply))
      end
      if not server._listenPending then
        -- Closed while the master was binding: give the key back at once, or the master
        -- would keep it (and hand this worker connections it can only refuse).
        return abandon(base, index, key, fds)
      end
      local function onListening()
        live[server] = true
        -- Connections come over the channel (rr family): it must keep the worker alive.
        local held = reply.balance ~= 'none' and reply.balance ~= 'reuseport'
        if held then
          cluster._hold(1)
        end
        server:once('close', function()
          live[server] = nil
          if held then
            cluster._hold(-1)
          end
        end)
        if cluster._notifyListening then
          cluster._notifyListening(server:address())
        end
      end
      server._closeHook = function()
        releaseIndex(base, index)
        servers[key] = nil
        sendInternal({ cmd = 'closeServer', key = key })
      end
      server:once('listening', onListening)
      if reply.balance == 'none' then
        local h = core.tcp()
        local ok, err, code = h:open(fds[1])
        if not ok then
          h:close()
          return cb(events.fromUv(err, code))
        end
        return cb(nil, h, reply.address)
      elseif reply.balance == 'reuseport' then
        local h = core.tcp()
        local ok, err, code = h:bind(reply.address.address, reply.address.port, { reuseport = true,
          ipv6only = opts.ipv6Only })
        if not ok then
          h:close()
          sendInternal({ cmd = 'closeServer', key = key })
          return cb(events.fromUv(err, code))
        end
        return cb(nil, h, reply.address)
      end
      servers[key] = server
      if reply.balance == 'least' then
        reportLoad(server, key)
      end
      cb(nil, nil, reply.address)
    end)
  end

  -- Acknowledgements go out once per loop turn, one message per rr for every frame read in
  -- that turn (the master keeps a window of 64 unacknowledged hand-offs per worker).
  local acks, ackScheduled = {}, false
  local function flushAcks()
    ackScheduled = false
    for k, n in pairs(acks) do
      acks[k] = nil
      sendInternal({ cmd = 'rrack', k = k, n = n })
    end
  end
  local function ack(k, n)
    if type(k) ~= 'number' then
      return
    end
    acks[k] = (acks[k] or 0) + n
    if not ackScheduled then
      ackScheduled = true
      setImmediate(flushAcks)
    end
  end

  -- Connections the master accepted: one frame carries up to 16 fds for one key. Each is
  -- adopted by the server, or refused (sent back) when this worker has no server for the key
  -- any more; either way the frame is acknowledged so the master can release its copies.
  -- A frame whose fds the kernel dropped (`lost`: this worker is at its fd limit) is
  -- acknowledged as lost, after the acks before it, so the master hands its own copies of
  -- those connections to another worker instead of closing them.
  internal.newconn = function(msg, fds, lost)
    if lost then
      local k = msg.k
      if type(k) == 'number' then
        local n = acks[k]
        if n then
          acks[k] = nil
          sendInternal({ cmd = 'rrack', k = k, n = n })
        end
        sendInternal({ cmd = 'rrack', k = k, n = lost, lost = 1 })
      end
      return
    end
    fds = fds or {}
    local server = servers[msg.key]
    local refused
    counters.handoffs = counters.handoffs + #fds
    for _, fd in ipairs(fds) do
      if server and server.listening then
        local h = core.tcp(nil, server._connRoom) -- room: see net's _connRoom
        if h:open(fd) then
          server:_addConnection(h)
        else
          h:close()
          core.ipc_closefd(fd)
        end
      else
        refused = refused or {}
        refused[#refused + 1] = fd
      end
    end
    if refused then
      sendInternal({ cmd = 'refuse', key = msg.key }, refused)
      for _, fd in ipairs(refused) do
        core.ipc_closefd(fd)
      end
    end
    ack(msg.k, #fds)
    if server and server._connLoadReport then
      server:_connLoadReport()
    end
  end

  dgram._bindHook = function(socket, opts, cb)
    local base = keyOf(socket.type or socket._type or 'udp', { host = opts.address, port = opts.port,
      family = socket._family, fdName = opts.fdName })
    local index = takeIndex(base)
    local key = base .. ':' .. index
    query({ key = key, kind = 'udp', host = opts.address, port = opts.port, family = socket._family,
      reuseAddr = opts.reuseAddr, ipv6Only = opts.ipv6Only, fdName = opts.fdName }, function(reply, fds)
      if reply.err then
        releaseIndex(base, index)
        return cb(replyError(reply))
      end
      if socket._state ~= 'binding' then
        return abandon(base, index, key, fds)
      end
      local h = core.udp()
      local ok, err, code = h:open(fds[1])
      if not ok then
        h:close()
        return cb(events.fromUv(err, code))
      end
      live[socket] = true
      -- The master emits 'listening' for dgram sockets too, as Node does.
      socket:once('listening', function()
        if cluster._notifyListening then
          cluster._notifyListening(socket:address(), true)
        end
      end)
      socket:once('close', function()
        live[socket] = nil
        releaseIndex(base, index)
        sendInternal({ cmd = 'closeServer', key = key })
      end)
      cb(nil, h)
    end)
  end
end

---------------------------------------------------------------------------------------------
-- Master side

function M.primary(cluster)
  local internal = cluster._internal
  local cjson = require('cjson')
  local handles = {} -- key -> { kind=, balance=, address=, rr=, udp=, workers = {id=worker} }

  local function defaultBalance()
    local b = cluster.settings and cluster.settings.balance
    if b then
      return b
    end
    return cluster.schedulingPolicy == cluster.SCHED_NONE and 'none' or 'rr'
  end

  local function reply(worker, msg, extra, fds)
    extra.cmd = 'queryReply'
    extra.seq = msg.seq
    worker:_sendInternal(extra, fds)
  end

  local function failReply(worker, msg, err, code, syscall)
    reply(worker, msg, { err = code or 'EUNKNOWN', message = err, syscall = syscall,
      address_ = msg.path or msg.host, port = msg.port })
    -- The built-in master logs which address could not be used (a port already in use).
    worker:emit('_listenError', { code = code, message = err, address = msg.path or msg.host,
      port = msg.port })
  end

  local function closeHandle(key)
    local h = handles[key]
    if not h then
      return
    end
    handles[key] = nil
    if h.rr then
      h.rr:close()
    end
    if h.udp then
      h.udp:close()
    end
    if h.reserve then
      h.reserve:close()
    end
  end

  -- h holding the UDP socket u once u:open or u:bind said ok; else u is closed (with the
  -- inherited fd ifd, if any) and the error returned.
  local function withUdp(h, u, ifd, ok, err, code)
    if not ok then
      u:close()
      if ifd then
        core.ipc_closefd(ifd)
      end
      return nil, err, code
    end
    h.udp = u
    h.address = u:getsockname()
    return h
  end

  -- Binds what a key needs in the master: -> handle record, or nil, err, code.
  local function create(msg, balance)
    local h = { kind = msg.kind, balance = balance, workers = {}, members = {}, key = msg.key }
    -- Socket activation: a socket systemd handed the master (_systemd.lua) that this listen
    -- asks for (by fdName, or by address and port) is used instead of a new bind.
    local ifd, info, icode = require('_systemd').take(msg.kind, msg)
    if ifd == nil and info ~= nil then
      return nil, info, icode
    end
    if ifd and msg.kind == 'udp' then
      local u = core.udp()
      local ok, err, code = u:open(ifd)
      return withUdp(h, u, ifd, ok, err, code)
    end
    if ifd and balance == 'reuseport' then
      -- Each reuseport worker binds a socket of its own, which the inherited one (bound
      -- without SO_REUSEPORT) would refuse, and connections queued on it would never be
      -- accepted: the master accepts on it instead, round-robin.
      require('_lifecycle').log(("%s: balance 'reuseport' cannot share a socket inherited from "
        .. "systemd (fd %d, %s); using 'rr'"):format(msg.key, info.fd, info.name))
      h.balance, h.asked = 'rr', 'reuseport'
      balance = 'rr'
    end
    if msg.kind == 'udp' then
      local u = core.udp()
      local ok, err, code = u:bind(msg.host, msg.port, { reuseaddr = msg.reuseAddr,
        ipv6only = msg.ipv6Only })
      return withUdp(h, u, nil, ok, err, code)
    end
    if balance == 'reuseport' and not ifd then
      -- Reserve the port (a bound, never listening SO_REUSEPORT socket) so port 0 names one
      -- port every worker binds with SO_REUSEPORT.
      local r = core.tcp()
      local ok, err, code = r:bind(msg.host, msg.port, { reuseport = true, ipv6only = msg.ipv6Only })
      if not ok then
        r:close()
        return nil, err, code
      end
      h.reserve = r
      h.address = r:getsockname()
      return h
    end
    local rr, err, code
    local function onEvent(ev, emsg, ecode)
      if ev == 'stalled' then
        -- rr.c skips a worker whose hand-offs stay unacknowledged (its loop is stuck).
        local w = cluster.workers[emsg]
        if w then
          w:emit('_stalled')
        end
        return
      end
      if ev == 'error' then
        require('_lifecycle').log(('accept on %s failed: %s'):format(msg.key, tostring(emsg)))
        if ecode ~= 'EMFILE' and ecode ~= 'ENFILE' then
          return
        end
      end
    end
    if ifd then
      rr, err, code = core.rr_listen_fd(ifd, msg.backlog or 511, onEvent)
    elseif msg.path then
      rr, err, code = core.rr_listen_path(msg.path, msg.backlog or 511, onEvent)
    else
      local host = msg.host
      rr, err, code = core.rr_listen(host, msg.port, msg.backlog or 511, { ipv6only = msg.ipv6Only }, onEvent)
      if rr == nil and msg.anyHost and (code == 'EAFNOSUPPORT' or code == 'EADDRNOTAVAIL' or code == 'EINVAL') then
        rr, err, code = core.rr_listen('0.0.0.0', msg.port, msg.backlog or 511, nil, onEvent)
      end
    end
    if rr == nil then
      return nil, err, code
    end
    h.rr = rr
    h.address = msg.path or (info and info.path) or rr:getsockname()
    if balance ~= 'none' then
      rr:set_policy(balance)
      rr:set_body(cjson.encode({ cmd = 'newconn', key = msg.key, k = rr:id() }))
    end
    return h
  end

  local function validPort(p)
    return type(p) == 'number' and p >= 0 and p <= 65535 and p % 1 == 0
  end

  internal.queryServer = function(worker, msg)
    if type(msg.seq) ~= 'number' then
      return -- not from _listenHook/_bindHook: nobody waits for an answer
    end
    if worker.exitedAfterDisconnect or worker._channel == nil then
      return -- disconnecting (as in Node): the worker drops the query when its channel closes
    end
    if type(msg.key) ~= 'string' or (msg.kind ~= 'tcp' and msg.kind ~= 'udp')
      or (msg.path ~= nil and (type(msg.path) ~= 'string' or msg.kind ~= 'tcp'))
      or (msg.path == nil and (not validPort(msg.port) or type(msg.host) ~= 'string'))
      or (msg.backlog ~= nil and (type(msg.backlog) ~= 'number' or msg.backlog < 0))
      or (msg.fdName ~= nil and type(msg.fdName) ~= 'string') then
      return failReply(worker, msg, 'ERR_INVALID_ARG_VALUE: malformed queryServer', 'ERR_INVALID_ARG_VALUE')
    end
    local balance = msg.kind == 'udp' and 'udp' or (msg.balance or defaultBalance())
    if msg.kind == 'tcp' and not BALANCES[balance] then
      return failReply(worker, msg, 'ERR_INVALID_ARG_VALUE: unknown balance ' .. tostring(balance),
        'ERR_INVALID_ARG_VALUE')
    end
    local h = handles[msg.key]
    if h and (h.asked or h.balance) ~= balance then
      return failReply(worker, msg, ('ERR_INVALID_ARG_VALUE: %s is already shared with balance %s'):format(
        msg.key, h.balance), 'ERR_INVALID_ARG_VALUE')
    end
    if not h then
      local err, code
      h, err, code = create(msg, balance)
      if not h then
        -- Nothing is kept for the key, so a later retry can succeed.
        return failReply(worker, msg, err, code, msg.kind == 'udp' and 'bind' or 'listen')
      end
      handles[msg.key] = h
    end
    h.workers[worker.id] = worker
    local fds
    if h.udp then
      fds = { h.udp:fileno() }
    elseif h.balance == 'none' then
      fds = { h.rr:fileno() }
    end
    reply(worker, msg, { balance = h.balance, address = h.address }, fds)
    if h.rr and h.balance ~= 'none' then
      h.members[worker.id] = true
      h.rr:add(worker.id, worker._channel._ch, tonumber(worker._slot) or worker.id)
    end
  end

  -- A worker stops listening on key (its server closed) or is gone (its channel closed). A
  -- suspended worker gets no new connections but stays a target of the rr until its channel
  -- closes, so hand-offs it never acknowledged can still go to the others.
  local function leave(worker, key, channelGone)
    local h = handles[key]
    if not h then
      return
    end
    h.workers[worker.id] = nil
    if h.rr and h.balance ~= 'none' and h.members[worker.id] then
      if channelGone then
        h.members[worker.id] = nil
        h.rr:remove(worker.id)
      else
        h.rr:suspend(worker.id)
      end
    end
    if next(h.workers) == nil then
      closeHandle(key)
    end
  end

  internal.closeServer = function(worker, msg)
    if type(msg.key) == 'string' then
      leave(worker, msg.key, false)
    end
  end

  -- A worker sent back connections it could not take (its server had closed).
  internal.refuse = function(worker, msg, fds)
    local h = type(msg.key) == 'string' and handles[msg.key]
    for _, fd in ipairs(fds or {}) do
      if h and h.rr then
        h.rr:dispatch(fd, worker.id)
      else
        core.ipc_closefd(fd)
      end
    end
  end

  -- Open-connection counts for the 'least' policy.
  internal.load = function(worker, msg)
    local h = type(msg.key) == 'string' and handles[msg.key]
    if h and h.rr and type(msg.n) == 'number' then
      h.rr:load(worker.id, msg.n)
    end
  end

  -- The channel is gone: connections the worker never acknowledged go to the others.
  cluster.on('disconnect', function(worker)
    for key in pairs(handles) do
      leave(worker, key, true)
    end
  end)

  -- For `lcluster upgrade` (_upgrade.lua): the listening sockets of the shared keys, handed
  -- to the new master ({key=, fd=, address=, type=}); Unix-socket paths are left out (closing the old rr
  -- removes the file).
  function cluster._sharedSockets()
    local out = {}
    for key, h in pairs(handles) do
      local fd
      if h.udp then
        fd = h.udp:fileno()
      elseif h.rr and type(h.address) ~= 'string' then
        fd = h.rr:fileno()
      end
      if fd then
        out[#out + 1] = { key = key, fd = fd, address = h.address, type = h.udp and 'dgram' or 'stream' }
      end
    end
    table.sort(out, function(a, b)
      return a.key < b.key
    end)
    return out
  end

  -- ... and, once the new master serves, no more accepts here: the rr sockets close (the
  -- new master holds the same sockets, so the ports stay open); workers keep what they were
  -- handed. 'none' and UDP keys stay: their workers read the sockets until they stop.
  function cluster._stopAccepting()
    for key, h in pairs(handles) do
      if h.rr and h.balance ~= 'none' then
        closeHandle(key)
      end
    end
  end

  -- For specs and bench: hand-off counts per key.
  function cluster._handoffStats()
    local out = {}
    for key, h in pairs(handles) do
      if h.rr then
        local sent, inflight, load = h.rr:stats()
        out[key] = { sent = sent, inflight = inflight, load = load, balance = h.balance }
      end
    end
    return out
  end
end

return M
