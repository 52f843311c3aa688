-- _cluster_primary.lua: the master side of `cluster`: fork, settings, the Worker object and
-- its events. Each worker gets its own socketpair channel (runtime/ipc.c), inherited as fd 3.
--
-- Event order is fixed: 'fork' before 'online'; a worker's 'disconnect' always before its
-- 'exit' (the process exit is held back until the channel is closed, after its last messages
-- were read).
local core = require('_core')
local class = require('_class')
local events = require('events')
local timer = require('timer')
local ipc = require('_cluster_ipc')

local CHILD_FD = 3

-- The cluster's TLS session-ticket key, 80 bytes as hex (tls.lua reads it as
-- cluster._tlsTicketKey, in the master too), from the kernel's random source rather than
-- OpenSSL: a master that never serves TLS must not load the TLS module to fork a worker.
local function clusterTicketKey(cluster)
  if not cluster._tlsTicketKey then
    local f = assert(io.open('/dev/urandom', 'rb'))
    local bytes = f:read(80)
    f:close()
    cluster._tlsTicketKey = bytes:gsub('.', function(c)
      return ('%02x'):format(c:byte())
    end)
  end
  return cluster._tlsTicketKey
end

return function(cluster)
  cluster.isMaster, cluster.isPrimary, cluster.isWorker = true, true, false
  cluster.workers = {}
  cluster.settings = {}
  cluster.Worker = nil -- set below

  local ids = 0
  local retryStart -- defined with cluster.fork

  -- Internal commands from workers: cmd -> function(worker, msg, fds). net adds its own
  -- (queryServer, ...) through cluster._internal.
  local internal = {}
  cluster._internal = internal

  local function writeErr(s)
    process._writeErr(s)
  end

  -- A stream over a silent worker's stdout or stderr: an emitter with 'data'(string), 'end'
  -- and 'close'.
  local Output = class(events.Emitter)
  function Output:_init()
    self.readable = true
    self._pipe = core.pipe(false, function(ev, data)
      if ev == 'data' then
        self:emit('data', data)
      elseif ev == 'end' or ev == 'error' then
        self:_close()
      end
    end)
  end
  function Output:_close()
    if self._pipe then
      local p = self._pipe
      self._pipe = nil
      self.readable = false
      p:close(function()
        self:emit('end')
        self:emit('close')
      end)
    end
  end
  function Output:setEncoding()
    return self
  end
  function Output:pause()
    if self._pipe then
      self._pipe:read_stop()
    end
    return self
  end
  function Output:resume()
    if self._pipe then
      self._pipe:read_start()
    end
    return self
  end
  -- Writes every chunk to dest (anything with :write(s)).
  function Output:pipe(dest)
    self:on('data', function(d)
      dest:write(d)
    end)
    return dest
  end

  class.guard(Output, 'stdout', { emit = true })

  local Worker = class(events.Emitter)
  cluster.Worker = Worker

  function Worker:_init(id)
    self.id = id
    self.state = 'none'
    self.exitedAfterDisconnect = nil
    self.process = { connected = false }
  end

  function Worker:isConnected()
    return self._channel ~= nil
  end

  function Worker:isDead()
    return self.process.exitCode ~= nil or self.process.signalCode ~= nil
  end

  -- The agent's events stay on its worker object: a script's cluster.on('exit') respawn
  -- logic must not take the agent for one of its workers.
  local function emitBoth(worker, ev, ...)
    worker:emit(ev, ...)
    if not worker.isAgent then
      cluster.emit(ev, worker, ...)
    end
  end
  cluster._emitBoth = emitBoth

  local function emitFork(worker)
    if not worker._forkEmitted then
      worker._forkEmitted = true
      cluster.emit('fork', worker)
    end
  end

  -- Send failures on a closed channel: false, and 'error' later if someone listens.
  local function closedSend(worker, fn)
    timer.setImmediate(function()
      local err = events.makeError('ERR_IPC_CHANNEL_CLOSED', 'channel closed')
      if fn then
        fn(err)
      end
      if worker:listenerCount('error') > 0 then
        worker:emit('error', err)
      end
    end)
    return false
  end

  -- worker:send(msg [, handle] [, fn]) -> boolean. Values JSON cannot carry raise here,
  -- before anything is written. false: the channel is closed, or its queue is over the
  -- high-water mark (the message is queued; wait for the worker's 'drain'). fn(err) runs
  -- once the message is handed to the kernel or queued in order behind earlier ones.
  function Worker:send(msg, handle, fn)
    if fn == nil and type(handle) == 'function' then
      handle, fn = nil, handle
    end
    local ok = ipc.sendUser(self._channel, msg, handle, 2)
    if ok == nil then
      return closedSend(self, fn)
    end
    if fn then
      timer.setImmediate(fn, nil)
    end
    return ok
  end

  -- The channel's queue went over the high-water mark (send returned false) and is written.
  function Worker:_onDrain()
    self:emit('drain')
  end

  -- Sends a runtime message ({cmd=...}); returns true or false (closed).
  function Worker:_sendInternal(msg, fds)
    local ch = self._channel
    return ch ~= nil and ch:sendInternal(msg, fds) == true
  end

  -- Called once the channel handle is closed: 'disconnect', then a held-back 'exit'.
  function Worker:_onDisconnected()
    if self._disconnected then
      return
    end
    self._disconnected = true
    self.state = 'disconnected'
    if self.exitedAfterDisconnect == nil then
      self.exitedAfterDisconnect = false
    end
    if self._exit then
      cluster.workers[self.id] = nil
    end
    emitBoth(self, 'disconnect')
    if self._exit then
      self:_emitExit()
    end
  end

  function Worker:_closeChannel(err)
    local ch = self._channel
    if not ch then
      return
    end
    self._channel = nil
    self.process.connected = false
    if err then
      writeErr(('lcluster: IPC channel of worker %d (pid %s) closed: %s\n'):format(
        self.id, tostring(self.process.pid), tostring(err)))
    end
    ch:close(function()
      if err and self:listenerCount('error') > 0 then
        self:emit('error', err)
      end
      self:_onDisconnected()
    end)
  end

  function Worker:_onChannelEnd(err)
    self:_closeChannel(err)
  end

  function Worker:_onFrame(kind, value, fds, lost)
    if kind == ipc.KIND_USER then
      emitBoth(self, 'message', value)
    elseif kind == ipc.KIND_HANDLE then
      if lost then
        -- The master is at its fd limit: the message comes without its handle.
        return emitBoth(self, 'message', value[2], nil)
      end
      local msg, handle = ipc.unpackHandle(value, fds)
      emitBoth(self, 'message', msg, handle)
    else
      local fn = type(value) == 'table' and internal[value.cmd]
      if fn then
        fn(self, value, fds)
      else
        for _, fd in ipairs(fds or {}) do
          core.ipc_closefd(fd)
        end
      end
    end
  end

  function Worker:_emitExit()
    -- The built-in master reads a dead worker's output to EOF first (_logs.lua).
    local hold = self._holdExit
    if hold then
      self._holdExit = nil
      return hold(function()
        self:_emitExit()
      end)
    end
    local e = self._exit
    self._exit = nil
    self.state = 'dead'
    cluster.workers[self.id] = nil
    emitBoth(self, 'exit', e.code, e.signal)
  end

  function Worker:_onExit(status, signum)
    local signal = signum ~= 0 and (core.signals[signum] or signum) or nil
    local code = (signal == nil) and status or nil
    self.process.exitCode = code
    self.process.signalCode = signal
    if self._proc then
      self._proc:close()
      self._proc = nil
    end
    if self.exitedAfterDisconnect == nil then
      self.exitedAfterDisconnect = false
    end
    self._exit = { code = code, signal = signal }
    local ch = self._channel
    if ch then
      -- The worker is gone, so everything it wrote is in the socket: read it (its last
      -- messages, then EOF) before reporting the exit.
      ch:pump()
      self:_closeChannel(nil)
    elseif self._disconnected then
      self:_emitExit()
    end
    -- else: the channel is closing; _onDisconnected emits the exit after 'disconnect'.
  end

  -- worker:disconnect(): the worker closes its servers and its channel, then exits when its
  -- loop is empty. exitedAfterDisconnect becomes true.
  function Worker:disconnect()
    return self:_stop('stop')
  end

  -- Asks the worker to run its stop sequence (_worker_lifecycle) for `reason` ('reload',
  -- 'stop', 'scale', 'memory', 'watchdog'): its 'shutdown' listeners get the reason.
  function Worker:_stop(reason)
    self.exitedAfterDisconnect = true
    if self._startTimer then
      self:_abandonStart(0, nil)
      return self
    end
    if self._channel and not self._disconnecting then
      self._disconnecting = true
      self:_sendInternal({ cmd = 'disconnect', reason = reason })
    end
    return self
  end

  -- worker:kill([signal]): closes the channel at once (the worker may be too busy to take
  -- part in a disconnect) and sends the signal (default SIGTERM).
  function Worker:kill(signal)
    signal = signal or 'SIGTERM'
    local num = type(signal) == 'number' and signal or core.signals[signal]
    if not num then
      error('ERR_UNKNOWN_SIGNAL: unknown signal: ' .. tostring(signal), 2)
    end
    if self:isDead() then
      return
    end
    self.exitedAfterDisconnect = true
    if self._startTimer then
      return self:_abandonStart(nil, core.signals[num] or num)
    end
    self:_closeChannel(nil)
    if self._proc then
      self._proc:kill(num)
    end
  end
  Worker.destroy = Worker.kill

  internal.online = function(w)
    emitFork(w)
    if w.state == 'none' then
      w.state = 'online'
    end
    emitBoth(w, 'online')
  end
  -- The 'listening' address as Node gives it: address, port, and addressType (4 or 6 for
  -- TCP, -1 for a Unix socket path, 'udp4' or 'udp6' for a dgram socket).
  local function listeningInfo(msg)
    local a = msg.address
    if type(a) == 'string' then
      return { address = a, addressType = -1 }
    elseif type(a) ~= 'table' then
      return {}
    end
    local v6 = a.family == 'IPv6'
    local t
    if msg.udp then
      t = v6 and 'udp6' or 'udp4'
    else
      t = v6 and 6 or 4
    end
    return { address = a.address, port = a.port, family = a.family, addressType = t }
  end
  internal.listening = function(w, msg)
    w.state = 'listening'
    emitBoth(w, 'listening', listeningInfo(msg))
  end
  internal.ready = function(w)
    emitBoth(w, 'ready')
  end
  internal.exitedAfterDisconnect = function(w)
    w.exitedAfterDisconnect = true
  end
  -- The worker hit an uncaught error and is draining before it exits (_worker_lifecycle).
  -- The worker stops on its own: reason 'error' (an uncaught error) or 'signal' (SIGTERM or
  -- SIGINT sent straight to it); detail is the error or the signal's name.
  internal.stopping = function(w, msg)
    w._stopping = true
    w._stopReason = type(msg.reason) == 'string' and msg.reason or 'error'
    w:emit('stopping', w._stopReason, type(msg.detail) == 'string' and msg.detail or nil)
  end

  local function defaults()
    local args = {}
    for i = 3, #process.argv do
      args[#args + 1] = process.argv[i]
    end
    return { exec = process.argv[2], args = args, execArgv = {}, silent = false }
  end

  -- cluster.setupPrimary([settings]): merges settings (exec, args, execArgv, silent, cwd,
  -- uid, gid, env) into cluster.settings and emits 'setup'(settings) on the next turn.
  function cluster.setupPrimary(opts)
    if opts ~= nil and type(opts) ~= 'table' then
      error('ERR_INVALID_ARG_TYPE: settings must be a table', 2)
    end
    local s = defaults()
    for k, v in pairs(cluster.settings) do
      s[k] = v
    end
    for k, v in pairs(opts or {}) do
      s[k] = v
    end
    cluster.settings = s
    timer.setImmediate(function()
      cluster.emit('setup', s)
    end)
  end
  cluster.setupMaster = cluster.setupPrimary

  local function absolute(path)
    if path:sub(1, 1) == '/' then
      return path
    end
    return process.cwd() .. '/' .. path
  end

  -- Failures to start a worker that pass (out of fds, processes or memory): the start is
  -- retried with backoff instead of raising, so a master at its limits never dies of one.
  local TRANSIENT = { EMFILE = true, ENFILE = true, EAGAIN = true, ENOMEM = true }
  local RETRY_FIRST, RETRY_CAP = 100, 5000

  -- Creates the channel and spawns the worker's process: true, or nil, err, code.
  local function startProcess(worker, s, argv, envList)
    local pfd, cfd, ccode = core.ipc_pair()
    if not pfd then
      return nil, cfd, ccode
    end
    local stdio
    if s.silent then
      worker.process.stdout = Output.new()
      worker.process.stderr = Output.new()
      stdio = { 'ignore', worker.process.stdout._pipe, worker.process.stderr._pipe, cfd }
    else
      stdio = { 'inherit', 'inherit', 'inherit', cfd }
    end
    local proc, pid, code = core.spawn({
      file = process.execPath,
      args = argv,
      env = envList,
      cwd = s.cwd,
      detached = s.detached,
      uid = s.uid,
      gid = s.gid,
      stdio = stdio,
    }, function(status, signum)
      worker:_onExit(status, signum)
    end)
    core.ipc_closefd(cfd)
    if not proc then
      core.ipc_closefd(pfd)
      if s.silent then
        worker.process.stdout:_close()
        worker.process.stderr:_close()
      end
      return nil, (code and pid) or ('cannot start a worker: ' .. tostring(pid)), code
    end
    worker._proc = proc
    worker.process.pid = pid
    worker.process.connected = true
    -- As Node's ChildProcess: kill only sends the signal (exitedAfterDisconnect stays false,
    -- so a master that respawns unwanted exits respawns this one); disconnect cuts the
    -- channel and the worker, which did not ask for it, exits 0.
    worker.process.kill = function(self, sig)
      if self ~= worker.process then
        error('ERR_INVALID_THIS: worker.process:kill: use a colon call (worker.process:kill(...))', 2)
      end
      sig = sig or 'SIGTERM'
      local num = type(sig) == 'number' and sig or core.signals[sig]
      if not num then
        error('ERR_UNKNOWN_SIGNAL: unknown signal: ' .. tostring(sig), 2)
      end
      if not worker._proc then
        return false
      end
      return worker._proc:kill(num) == true
    end
    worker.process.disconnect = function(self)
      if self ~= worker.process then
        error('ERR_INVALID_THIS: worker.process:disconnect: use a colon call (worker.process:disconnect())', 2)
      end
      worker:_closeChannel(nil)
    end
    worker._channel = ipc.Channel.new(pfd, worker)
    -- A live worker's channel does not hold the loop: its process handle does.
    worker._channel:setRef(false)
    if s.silent then
      worker.process.stdout._pipe:read_start()
      worker.process.stderr._pipe:read_start()
      if cluster._onSpawn then
        cluster._onSpawn(worker) -- the built-in master's logs (_logs.lua)
      end
    end
    timer.setImmediate(emitFork, worker)
    return true
  end

  -- Retries a start that failed for want of fds, processes or memory, with backoff (logged
  -- once per attempt). A start that fails for another reason, or a kill/disconnect while
  -- waiting, ends the worker with 'exit'.
  retryStart = function(worker, s, argv, envList, err)
    local delay = RETRY_FIRST
    local function attempt()
      worker._startTimer = nil
      local ok, e, code = startProcess(worker, s, argv, envList)
      if ok then
        return
      end
      if not TRANSIENT[code] then
        writeErr(('lcluster: cannot start worker %d: %s\n'):format(worker.id, tostring(e)))
        return worker:_abandonStart(1, nil)
      end
      delay = math.min(delay * 2, RETRY_CAP)
      writeErr(('lcluster: cannot start worker %d: %s; retrying in %d ms\n'):format(worker.id,
        tostring(e), delay))
      worker._startTimer = timer.setTimeout(attempt, delay)
    end
    writeErr(('lcluster: cannot start worker %d: %s; retrying in %d ms\n'):format(worker.id,
      tostring(err), delay))
    worker._startTimer = timer.setTimeout(attempt, delay)
  end

  -- A worker whose start was still being retried is given up: 'exit'(code, signal).
  function Worker:_abandonStart(code, signal)
    if self._startTimer then
      timer.clearTimeout(self._startTimer)
      self._startTimer = nil
    end
    self._disconnected = true
    self.process.exitCode = code
    self.process.signalCode = signal
    if self.exitedAfterDisconnect == nil then
      self.exitedAfterDisconnect = false
    end
    self._exit = { code = code, signal = signal }
    timer.setImmediate(function()
      emitFork(self)
      self:_emitExit()
    end)
  end

  -- cluster.fork([env]) -> worker. Raises when the process cannot be started, except for a
  -- lack of fds, processes or memory (EMFILE, ENFILE, EAGAIN, ENOMEM): then the start is
  -- retried with backoff and 'fork' comes once the process exists.
  function cluster.fork(env)
    if env == cluster then
      error('ERR_INVALID_THIS: cluster:fork: use a dot call (cluster.fork(...))', 2)
    end
    local w = cluster._fork(env) -- not a tail call: errors name the caller's line
    return w
  end

  -- The fork behind cluster.fork and cluster.forkAgent (agent = { exec = script }).
  function cluster._fork(env, agent)
    if env ~= nil and type(env) ~= 'table' then
      error('ERR_INVALID_ARG_TYPE: env must be a table', 3)
    end
    cluster.setupPrimary()
    local s = cluster.settings
    if agent then
      local copy = {}
      for k, v in pairs(s) do
        copy[k] = v
      end
      copy.exec, copy.args = agent.exec, agent.args or {}
      s = copy
    end
    if type(s.exec) ~= 'string' then
      error('ERR_INVALID_ARG_TYPE: cluster.settings.exec must be a script path', 3)
    end
    ids = ids + 1
    local worker = Worker.new(ids)
    worker.isAgent = agent ~= nil
    worker._env = env

    local vars = {}
    for k, v in pairs(process.env) do
      vars[k] = v
    end
    for k, v in pairs(s.env or {}) do
      vars[k] = v
    end
    for k, v in pairs(env or {}) do
      vars[k] = v
    end
    vars.LCLUSTER_WORKER_ID = tostring(worker.id)
    vars.LCLUSTER_AGENT = agent and '1' or false
    vars.LCLUSTER_IPC_FD = tostring(CHILD_FD)
    vars.LCLUSTER_MASTER_PID = tostring(process.pid)
    -- The bound of the worker's stop sequence (_worker_lifecycle).
    if tonumber(s.killTimeout) then
      vars.LCLUSTER_KILL_TIMEOUT = tostring(tonumber(s.killTimeout))
    end
    -- One TLS session-ticket key for the whole cluster, so a client resumes on any worker.
    vars.LCLUSTER_TLS_TICKET_KEY = vars.LCLUSTER_TLS_TICKET_KEY or clusterTicketKey(cluster)
    local envList = {}
    for k, v in pairs(vars) do
      if v ~= false and v ~= nil then
        envList[#envList + 1] = k .. '=' .. tostring(v)
      end
    end

    local argv = { process.execPath }
    for _, a in ipairs(s.execArgv or {}) do
      argv[#argv + 1] = tostring(a)
    end
    argv[#argv + 1] = absolute(s.exec)
    for _, a in ipairs(s.args or {}) do
      argv[#argv + 1] = tostring(a)
    end

    if not worker.isAgent then
      cluster.workers[worker.id] = worker
      cluster._watchdogAdd(worker)
    end
    local ok, err, code = startProcess(worker, s, argv, envList)
    if not ok then
      if not TRANSIENT[code] then
        cluster.workers[worker.id] = nil
        error(err, 2)
      end
      retryStart(worker, s, argv, envList, err)
    end
    return worker
  end

  -- cluster.disconnect([fn]): disconnects every worker; fn once all have disconnected and
  -- exited.
  function cluster.disconnect(fn)
    local pending = 0
    local function done()
      pending = pending - 1
      if pending == 0 and fn then
        -- After the last 'exit' has reached every listener (cluster's come after the worker's).
        timer.setImmediate(fn)
      end
    end
    for _, w in pairs(cluster.workers) do
      if not w:isDead() then
        pending = pending + 1
        w:once('exit', done)
        w:disconnect()
      end
    end
    if pending == 0 and fn then
      timer.setImmediate(fn)
    end
  end

  -- Messages still queued for workers when the master exits are written out (bounded), so a
  -- last broadcast before process.exit arrives.
  process.on('exit', function()
    local deadline = process.hrtime() + 1e9
    for _, w in pairs(cluster.workers) do
      local left = math.floor((deadline - process.hrtime()) / 1e6)
      if w._channel and left > 0 then
        w._channel:flushSync(left)
      end
    end
  end)

  -- Beyond Node: a message to every live worker.
  function cluster.broadcast(msg, level)
    local kind, body = ipc.pack(msg, nil, level or 2) -- level: _cluster_messaging wraps this
    for _, w in pairs(cluster.workers) do
      if w._channel then
        w._channel:send(kind, body)
      end
    end
    ipc.release(body)
  end
end
