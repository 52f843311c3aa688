-- _cluster_worker.lua: the worker side of `cluster` (a process started by cluster.fork):
-- cluster.worker, process.send / process.connected / process.disconnect, process 'message'.
--
-- The channel is fd LCLUSTER_IPC_FD (inherited). The worker never outlives its master: it
-- exits when the channel reaches EOF without a disconnect having been asked for, and the
-- kernel sends it SIGTERM when the master dies (PR_SET_PDEATHSIG; the default action kills,
-- even a busy loop, unless the script listens for SIGTERM).
local core = require('_core')
local class = require('_class')
local events = require('events')
local timer = require('timer')
local ipc = require('_cluster_ipc')

return function(cluster)
  local process = require('process')
  local id = tonumber(process.env.LCLUSTER_WORKER_ID)
  local fd = tonumber(process.env.LCLUSTER_IPC_FD)
  local masterPid = tonumber(process.env.LCLUSTER_MASTER_PID)
  -- The variables describe this process only: a program the worker starts must not take
  -- itself for a worker of our master.
  -- The cluster's TLS session-ticket key (tls.lua) stays in memory, never in a child's
  -- environment.
  cluster._tlsTicketKey = process.env.LCLUSTER_TLS_TICKET_KEY or false
  for _, name in ipairs({ 'LCLUSTER_WORKER_ID', 'LCLUSTER_IPC_FD', 'LCLUSTER_MASTER_PID',
    'LCLUSTER_TLS_TICKET_KEY' }) do
    process.env[name] = nil
    core.setenv(name, nil)
  end

  cluster.isMaster, cluster.isPrimary, cluster.isWorker = false, false, true

  local internal = {}
  cluster._internal = internal
  -- Functions that close this worker's servers on a disconnect: fn(done). net adds to it.
  cluster._closers = {}

  local Worker = class(events.Emitter)
  local worker = Worker.new()
  worker.id = id
  worker.process = process
  worker.state = 'online'
  worker.exitedAfterDisconnect = nil
  cluster.worker = worker

  -- As in Node, the worker object re-emits the process's 'error' (and 'message', below). An
  -- error nobody listens for on either stays an uncaught error.
  process.on('error', function(err)
    if worker:listenerCount('error') > 0 then
      worker:emit('error', err)
    elseif process.listenerCount('error') == 1 then
      error(err, 0)
    end
  end)
  -- Runtime errors (a closed channel) are emitted only when the script listens for them.
  local function emitError(err)
    if process.listenerCount('error') > 1 or worker:listenerCount('error') > 0 then
      process.emit('error', err)
    end
  end

  local channel
  local pending = {} -- user messages waiting for a 'message' listener: {msg, handle}
  local flushScheduled = false

  local function listeners()
    return process.listenerCount('message') + worker:listenerCount('message')
  end

  local function deliver(msg, handle, from)
    process.emit('message', msg, handle, from or 'master')
    worker:emit('message', msg, handle, from or 'master')
  end

  local function flushPending()
    flushScheduled = false
    while #pending > 0 and listeners() > 0 do
      local m = table.remove(pending, 1)
      deliver(m[1], m[2], m[3])
    end
  end

  local function onUserMessage(msg, handle, from)
    -- Queued until someone listens, and kept in order behind what is already queued.
    if #pending > 0 or listeners() == 0 then
      pending[#pending + 1] = { msg, handle, from }
      return
    end
    deliver(msg, handle, from)
  end
  -- Messages relayed by the master from another worker or the agent (_cluster_messaging).
  cluster._deliverUser = onUserMessage

  -- The channel holds the loop while someone listens for messages or for the disconnect, or
  -- while servers listen through the master (cluster._holds: connections arrive on it).
  cluster._holds = 0
  local function updateRef()
    if channel then
      channel:setRef(listeners() + process.listenerCount('disconnect') + cluster._holds > 0)
    end
  end
  function cluster._hold(delta)
    cluster._holds = cluster._holds + delta
    updateRef()
  end

  local function onNewListener(ev)
    if ev == 'message' or ev == 'disconnect' then
      timer.setImmediate(updateRef)
      if ev == 'message' and #pending > 0 and not flushScheduled then
        flushScheduled = true
        timer.setImmediate(flushPending)
      end
    end
  end
  process.on('newListener', onNewListener)
  worker:on('newListener', onNewListener)
  process.on('removeListener', function(ev)
    if ev == 'message' or ev == 'disconnect' then
      updateRef()
    end
  end)
  worker:on('removeListener', function(ev)
    if ev == 'message' then
      updateRef()
    end
  end)

  local owner = {}
  local disconnectEmitted = false

  local function onDisconnected()
    if disconnectEmitted then
      return
    end
    disconnectEmitted = true
    process.connected = false
    if worker.state ~= 'dead' then
      worker.state = 'disconnected'
    end
    if cluster._onChannelClosed then
      cluster._onChannelClosed()
    end
    process.emit('disconnect')
    worker:emit('disconnect')
    if cluster._stopCode then
      -- The end of the stop sequence (_worker_lifecycle): exit even if timers remain, with
      -- the status a 'disconnect' listener chose (process.exitCode) after a clean stop.
      process.exit(cluster._stopStatus())
    elseif cluster._draining then
      -- The master went away while this worker drains: the sequence still finishes what is
      -- in flight (bounded by its deadline), then exits.
      return
    elseif not worker.exitedAfterDisconnect then
      -- The master went away (or process.disconnect() was called): nothing more to serve.
      process.exit(0)
    end
  end

  local function closeChannel(graceful, err)
    if not channel then
      return
    end
    local ch = channel
    channel = nil
    process.connected = false
    if err then
      process._writeErr(('lcluster: worker %d: IPC channel to the master closed: %s\n'):format(
        id, tostring(err)))
    end
    local function closed()
      if err then
        emitError(err)
      end
      onDisconnected()
    end
    if graceful then
      ch:finish(closed)
    else
      ch:close(closed)
    end
  end

  function owner._onFrame(_, kind, value, fds, lost)
    if kind == ipc.KIND_USER then
      onUserMessage(value, nil)
    elseif kind == ipc.KIND_HANDLE then
      if lost then
        -- The handle could not be received (this worker is at its fd limit): the message
        -- comes without it.
        onUserMessage(value[2], nil)
      else
        onUserMessage(ipc.unpackHandle(value, fds))
      end
    else
      local fn = type(value) == 'table' and internal[value.cmd]
      if fn then
        fn(value, fds, lost)
      else
        for _, f in ipairs(fds or {}) do
          core.ipc_closefd(f)
        end
      end
    end
  end

  function owner._onDrain()
    process.emit('drain')
  end

  function owner._onChannelEnd(_, err)
    closeChannel(false, err)
  end

  local function sendInternal(msg, fds)
    return channel ~= nil and channel:sendInternal(msg, fds) == true
  end
  cluster._sendInternal = sendInternal
  -- sendInternal for a body already encoded (ipc.encodeWrapped), which it releases.
  function cluster._sendEncoded(body)
    local ok = channel ~= nil and channel:send(ipc.KIND_INTERNAL, body) == true
    ipc.release(body)
    return ok
  end

  -- Closes the servers (cluster._closers), then the channel once its queue is written.
  local function closeServersThenChannel()
    local closers = cluster._closers
    local left = #closers
    local function done()
      left = left - 1
      if left <= 0 then
        closeChannel(true)
      end
    end
    if left == 0 then
      return closeChannel(true)
    end
    for i = #closers, 1, -1 do
      closers[i](done)
    end
  end

  -- The master's watchdog (_watchdog.lua): answering shows this worker's loop still turns.
  internal.ping = function()
    sendInternal({ cmd = 'pong' })
  end

  -- The master asks this worker to stop, with the reason ('reload', 'stop', ...): the stop
  -- sequence of _worker_lifecycle. A worker already draining (a signal, an uncaught error)
  -- just goes on.
  internal.disconnect = function(msg)
    worker.exitedAfterDisconnect = true
    cluster._shutdown(type(msg.reason) == 'string' and msg.reason or 'stop', 0, false)
  end

  -- The last step of the stop sequence: the channel closes once its queue is written (what
  -- 'shutdown' listeners sent arrives), then 'disconnect' and the exit (onDisconnected).
  function cluster._closeChannelForStop()
    if channel then
      closeChannel(true)
    else
      onDisconnected()
      process.exit(cluster._stopStatus())
    end
  end

  -- The stop sequence's exit status: 1 after an uncaught error, else what a 'disconnect'
  -- listener chose (process.exitCode), else 0.
  function cluster._stopStatus()
    local code = cluster._stopCode or 0
    return code ~= 0 and code or process.exitCode or 0
  end

  local function closedError(fn)
    timer.setImmediate(function()
      local err = events.makeError('ERR_IPC_CHANNEL_CLOSED', 'channel closed')
      if fn then
        fn(err)
      end
      emitError(err)
    end)
    return false
  end

  -- process.send(msg [, handle] [, fn]) -> boolean
  function process.send(msg, handle, fn)
    if fn == nil and type(handle) == 'function' then
      handle, fn = nil, handle
    end
    local ok = ipc.sendUser(channel, msg, handle, 2)
    if ok == nil then
      return closedError(fn)
    end
    if fn then
      timer.setImmediate(fn, nil)
    end
    -- false: queued over the high-water mark; process emits 'drain' once it is written.
    return ok
  end

  -- process.disconnect(): closes the channel; the worker exits (as in Node, a disconnect the
  -- master did not ask for ends a worker).
  function process.disconnect()
    closeChannel(true)
  end

  -- process.ready(): tells the master this worker is ready (for reloads) without listening.
  function process.ready()
    sendInternal({ cmd = 'ready' })
  end

  function worker.send(_, msg, handle, fn)
    return process.send(msg, handle, fn)
  end

  function worker.isConnected()
    return channel ~= nil
  end

  function worker.isDead()
    return false
  end

  -- cluster.worker:disconnect(): tells the master this exit is wanted, closes the servers,
  -- then the channel; the worker exits once its loop is empty.
  function worker.disconnect()
    if not channel then
      return worker
    end
    worker.exitedAfterDisconnect = true
    worker.state = 'disconnecting'
    sendInternal({ cmd = 'exitedAfterDisconnect' })
    closeServersThenChannel()
    return worker
  end

  -- cluster.worker:kill(): a wanted exit with status 0, after the master was told.
  function worker.kill()
    worker.exitedAfterDisconnect = true
    if not channel then
      process.exit(0)
    end
    sendInternal({ cmd = 'exitedAfterDisconnect' })
    process.once('disconnect', function()
      process.exit(0)
    end)
    closeChannel(true)
  end
  worker.destroy = worker.kill

  -- The address a server listens on, for the master's 'listening' event (net calls this).
  function cluster._notifyListening(address, udp)
    worker.state = 'listening'
    sendInternal({ cmd = 'listening', address = address, udp = udp or nil })
  end

  -- Never outlive the master: SIGKILL when it dies (a SIGTERM would start the stop sequence,
  -- which a busy worker never runs: _worker_lifecycle handles SIGTERM), and a check for a
  -- master already gone.
  core.pdeathsig(core.signals.SIGKILL)
  if masterPid and core.ppid() ~= masterPid then
    process.exit(0)
  end

  if not fd then
    process._writeErr('lcluster: worker ' .. tostring(id) .. ' has no IPC channel\n')
    process.connected = false
    return
  end
  channel = ipc.Channel.new(fd, owner)
  channel:setRef(false)
  process.connected = true
  sendInternal({ cmd = 'online' })

  -- Messages still queued when the process exits are written out (bounded wait), so a
  -- worker's last `process.send` before `process.exit` arrives.
  process.on('exit', function()
    if channel then
      channel:flushSync(1000)
    end
  end)
end
