-- child_process.lua: Node's `child_process` (spawn, exec, execFile) on luv's uv.spawn and
-- pipes, on the runtime's loop. Children are plain programs, not workers: the cluster's
-- LCLUSTER_* variables that mark a worker or configure a master are left out of the
-- environment they inherit.
--
-- Backpressure both ways: child.stdout/stderr read only while flowing (a 'data' listener, or
-- pipe()/resume()), and pause() stops reading, so a child that floods a pipe the parent does
-- not drain blocks in write(2) instead of filling the parent's memory; child.stdin:write()
-- returns false once highWaterMark bytes wait, and 'drain' follows when they are written.
local uv = require('luv')
local core = require('_core')
local class = require('_class')
local events = require('events')
local stream = require('_stream')

local M = {}

local makeError = events.makeError

-- The variables that make a process a worker, an agent or a master: never inherited.
local CLUSTER_ENV = {
  LCLUSTER_WORKER_ID = true, LCLUSTER_IPC_FD = true, LCLUSTER_MASTER_PID = true, LCLUSTER_AGENT = true,
  LCLUSTER_WORKER_SLOT = true, LCLUSTER_WORKERS = true,
}

-- A luv error string ('EPIPE: broken pipe') as an error table with its code.
local function uvError(msg)
  return makeError(msg:match('^(%u+)') or 'EIO', msg)
end

local function argError(msg, level)
  error('ERR_INVALID_ARG_TYPE: ' .. msg, level + 1)
end

local function signum(sig, level)
  if sig == nil then
    return core.signals.SIGTERM
  end
  if type(sig) == 'number' then
    return sig
  end
  local n = type(sig) == 'string' and core.signals[sig:upper()]
  if not n then
    error('ERR_UNKNOWN_SIGNAL: unknown signal: ' .. tostring(sig), level + 1)
  end
  return n
end

---------------------------------------------------------------------------------------------
-- Pipe streams

-- Readable side of a pipe: 'data'(chunk), 'end', 'close', 'error'. As Node's, it reads at
-- once and keeps up to highWaterMark bytes until someone consumes them (a 'data' listener,
-- pipe() or resume()), then stops reading; pause() stops reading too. A program's short
-- output is thus taken in (and its end seen) even when nobody listens, and a flood waits.
local Readable = class(events.Emitter)
M.Readable = Readable

function Readable:_init(pipe, hwm)
  self._pipe = pipe
  self._hwm = hwm or 65536
  self._buf = {}
  self._bufLen = 0
  self._flowing = false
  self._explicitPause = false
  self._reading = false
  self._eof = false
  self.readableEnded = false
  self.destroyed = false
  self._onRead = function(err, data)
    self:_read(err, data)
  end
  stream.autoFlow(self)
  -- Reading starts once the pipe is connected to the child (spawn calls _startReading).
end

function Readable:_startReading()
  local p = self._pipe
  if not self._reading and not self._eof and not self.destroyed and not p:is_closing() then
    self._reading = true
    p:read_start(self._onRead)
  end
end

function Readable:_stopReading()
  local p = self._pipe
  if self._reading and not p:is_closing() then
    p:read_stop()
  end
  self._reading = false
end

function Readable:_read(err, data)
  if err then
    return self:destroy(uvError(err))
  end
  if data == nil then
    self._eof = true
    self:_stopReading()
    return self:_maybeEnd()
  end
  if self._flowing then
    return self:emit('data', data)
  end
  self._buf[#self._buf + 1] = data
  self._bufLen = self._bufLen + #data
  if self._bufLen >= self._hwm then
    self:_stopReading()
  end
end

function Readable:_maybeEnd()
  if self._eof and self._bufLen == 0 and not self.readableEnded then
    self.readableEnded = true
    self:emit('end')
    self:destroy()
  end
end

function Readable:resume()
  self._flowing = true
  self._explicitPause = false
  while self._flowing and #self._buf > 0 do
    local chunk = table.remove(self._buf, 1)
    self._bufLen = self._bufLen - #chunk
    self:emit('data', chunk)
  end
  if self._flowing then
    self:_maybeEnd()
    self:_startReading()
  end
  return self
end

function Readable:pause()
  self._flowing = false
  self._explicitPause = true
  self:_stopReading()
  return self
end

function Readable:isPaused()
  return not self._flowing
end

function Readable:setEncoding()
  return self
end

function Readable:destroy(err)
  if self.destroyed then
    return self
  end
  self.destroyed = true
  self._reading = false
  local p = self._pipe
  stream.closed(self, err, not p:is_closing() and function(done)
    p:close(done)
  end or nil)
  return self
end

-- pipe(dest [, {['end']=false}]) -> dest, pausing while dest:write() returns false.
function Readable:pipe(dest, opts)
  local d = stream.pipe(self, dest, opts, false)
  return d
end

-- Writable side of a pipe: write() -> boolean, 'drain', finish() (or ['end']), 'finish',
-- 'close', 'error' (only when someone listens: a child that exits before reading its stdin
-- gives EPIPE, which is no reason to crash the parent).
local Writable = class(events.Emitter)
M.Writable = Writable

function Writable:_init(pipe, hwm)
  self._pipe = pipe
  self._hwm = hwm or 16384
  self._needDrain = false
  self.writableEnded = false
  self.destroyed = false
end

function Writable:_error(err)
  if self:listenerCount('error') > 0 then
    self:emit('error', err)
  end
  self:destroy()
end

function Writable:write(data, cb)
  if type(data) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: the "chunk" argument must be a string, got ' .. type(data), 2)
  end
  local p = self._pipe
  if self.writableEnded or self.destroyed or p:is_closing() then
    return stream.writeAfterEnd(cb, function(err)
      self:_error(err)
    end)
  end
  local _, werr = p:write(data, function(err)
    if cb then
      cb(err and uvError(err) or nil)
    end
    if err then
      return self:_error(uvError(err))
    end
    if self._needDrain and p:get_write_queue_size() == 0 then
      self._needDrain = false
      self:emit('drain')
    end
  end)
  if werr then
    setImmediate(function()
      self:_error(uvError(werr))
    end)
    return false
  end
  if p:get_write_queue_size() >= self._hwm then
    self._needDrain = true
    return false
  end
  return true
end

function Writable:finish(data, cb)
  cb = stream.finishArgs(self, data, cb)
  if self.writableEnded then
    return self
  end
  self.writableEnded = true
  local p = self._pipe
  if p:is_closing() then
    return self
  end
  p:shutdown(function()
    self:emit('finish')
    if cb then
      cb()
    end
    self:destroy()
  end)
  return self
end
Writable['end'] = Writable.finish

function Writable:destroy()
  if self.destroyed then
    return self
  end
  self.destroyed = true
  local p = self._pipe
  if not p:is_closing() then
    p:close(function()
      self:emit('close')
    end)
  end
  return self
end

---------------------------------------------------------------------------------------------
-- ChildProcess

local ChildProcess = class(events.Emitter)
M.ChildProcess = ChildProcess

local function buildEnv(env)
  local list = {}
  if env == nil then
    for k, v in pairs(process.env) do
      if not CLUSTER_ENV[k] then
        list[#list + 1] = k .. '=' .. tostring(v)
      end
    end
  else
    for k, v in pairs(env) do
      list[#list + 1] = tostring(k) .. '=' .. tostring(v)
    end
  end
  return list
end

-- stdio: 'pipe' (default), 'ignore', 'inherit', or a list of three of those or fd numbers.
local function stdioOf(opt, level)
  if opt == nil or type(opt) == 'string' then
    opt = { opt or 'pipe', opt or 'pipe', opt or 'pipe' }
  end
  if type(opt) ~= 'table' then
    argError('the "options.stdio" option must be a string or a table, got ' .. type(opt), level + 1)
  end
  local out = {}
  for i = 1, 3 do
    local v = opt[i]
    if v == nil or v == 'pipe' then
      out[i] = 'pipe'
    elseif v == 'ignore' or v == false then
      out[i] = 'ignore'
    elseif v == 'inherit' then
      out[i] = i - 1
    elseif type(v) == 'number' then
      out[i] = v
    else
      error(('ERR_INVALID_ARG_VALUE: stdio[%d] must be "pipe", "ignore", "inherit" or a file descriptor'):format(i),
        level + 1)
    end
  end
  return out
end

function ChildProcess:_init()
  self.pid = nil
  self.exitCode = nil
  self.signalCode = nil
  self.killed = false
  self.connected = false
end

-- spawn(command [, args] [, {cwd=, env=, stdio=, detached=, uid=, gid=}]) -> ChildProcess
function M.spawn(cmd, args, opts)
  if type(cmd) ~= 'string' or cmd == '' then
    argError('the "command" argument must be a non-empty string, got ' .. type(cmd), 2)
  end
  if type(args) == 'table' and args[1] == nil and next(args) ~= nil then
    args, opts = nil, args
  end
  args = args or {}
  opts = opts or {}
  if type(args) ~= 'table' then
    argError('the "args" argument must be a table, got ' .. type(args), 2)
  end
  if type(opts) ~= 'table' then
    argError('the "options" argument must be a table, got ' .. type(opts), 2)
  end
  local sargs = {}
  for i, a in ipairs(args) do
    if type(a) ~= 'string' and type(a) ~= 'number' then
      argError(('args[%d] must be a string, got %s'):format(i, type(a)), 2)
    end
    sargs[i] = tostring(a)
  end
  if opts.cwd ~= nil and type(opts.cwd) ~= 'string' then
    argError('the "options.cwd" option must be a string, got ' .. type(opts.cwd), 2)
  end
  if opts.env ~= nil and type(opts.env) ~= 'table' then
    argError('the "options.env" option must be a table, got ' .. type(opts.env), 2)
  end
  local stdio = stdioOf(opts.stdio, 2)

  local child = ChildProcess.new()
  child.spawnfile = cmd
  child.spawnargs = { cmd, unpack(sargs) }
  local uvStdio, pipes = {}, {}
  for i = 1, 3 do
    if stdio[i] == 'pipe' then
      pipes[i] = uv.new_pipe(false)
      uvStdio[i] = pipes[i]
    elseif type(stdio[i]) == 'number' then
      uvStdio[i] = stdio[i]
    end
  end
  if pipes[1] then
    child.stdin = Writable.new(pipes[1])
  end
  if pipes[2] then
    child.stdout = Readable.new(pipes[2])
  end
  if pipes[3] then
    child.stderr = Readable.new(pipes[3])
  end

  -- 'close' waits for the exit and for every piped stream to close.
  local waiting = 1
  local function oneClosed()
    waiting = waiting - 1
    if waiting == 0 then
      child:emit('close', child.exitCode, child.signalCode)
    end
  end
  for _, s in ipairs({ child.stdout, child.stderr }) do
    waiting = waiting + 1
    s:once('close', oneClosed)
  end

  local handle, pidOrErr = uv.spawn(cmd, {
    args = sargs,
    stdio = { uvStdio[1], uvStdio[2], uvStdio[3] },
    env = buildEnv(opts.env),
    cwd = opts.cwd,
    detached = opts.detached and true or false,
    uid = opts.uid,
    gid = opts.gid,
  }, function(code, sig)
    if sig ~= 0 then
      child.signalCode = core.signals[sig] or sig
    else
      child.exitCode = code
    end
    child._handle:close()
    child:emit('exit', child.exitCode, child.signalCode)
    oneClosed()
  end)
  if not handle then
    local msg = tostring(pidOrErr)
    local code = msg:match('^(%u+)') or 'EIO'
    local err = makeError(code, ("%s, spawn '%s'"):format(msg, cmd),
      { syscall = 'spawn ' .. cmd, path = cmd, spawnargs = sargs })
    for _, p in pairs(pipes) do
      p:close()
    end
    child.stdin, child.stdout, child.stderr = nil, nil, nil
    setImmediate(function()
      child:emit('error', err)
    end)
    return child
  end
  child._handle = handle
  child.pid = pidOrErr
  for _, s in ipairs({ child.stdout, child.stderr }) do
    s:_startReading()
  end
  return child
end

-- child:kill([sig='SIGTERM']) -> true when the signal was sent.
function ChildProcess:kill(sig)
  local n = signum(sig, 2)
  local h = self._handle
  if not h or h:is_closing() then
    return false
  end
  local ok = h:kill(n)
  if ok then
    self.killed = true
    return true
  end
  return false
end

function ChildProcess:ref()
  if self._handle and not self._handle:is_closing() then
    self._handle:ref()
  end
end

function ChildProcess:unref()
  if self._handle and not self._handle:is_closing() then
    self._handle:unref()
  end
end

---------------------------------------------------------------------------------------------
-- execFile / exec

local MAXBUFFER = 1024 * 1024

-- execFile(file [, args] [, {cwd=, env=, timeout=, maxBuffer=, killSignal=}], cb(err, stdout,
-- stderr)) -> ChildProcess. err is nil on exit status 0; else a table with code (the exit
-- status, a number, or 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER' / the spawn error code), killed,
-- signal, cmd, and a message with the child's stderr.
function M.execFile(file, args, opts, cb)
  if type(args) == 'function' then
    args, opts, cb = nil, nil, args
  elseif type(opts) == 'function' then
    opts, cb = nil, opts
  end
  if type(args) == 'table' and args[1] == nil and next(args) ~= nil and opts == nil then
    args, opts = nil, args
  end
  opts = opts or {}
  if cb ~= nil and type(cb) ~= 'function' then
    argError('the "callback" argument must be a function, got ' .. type(cb), 2)
  end
  local maxBuffer = opts.maxBuffer or MAXBUFFER
  local timeout = opts.timeout or 0
  if type(maxBuffer) ~= 'number' or maxBuffer < 0 then
    argError('the "options.maxBuffer" option must be a non-negative number', 2)
  end
  if type(timeout) ~= 'number' or timeout < 0 then
    argError('the "options.timeout" option must be a non-negative number', 2)
  end
  local killSignal = opts.killSignal or 'SIGTERM'
  signum(killSignal, 2)
  local child = M.spawn(file, args or {}, { cwd = opts.cwd, env = opts.env, uid = opts.uid, gid = opts.gid,
    stdio = { 'ignore', 'pipe', 'pipe' } })
  local cmd = opts._cmd or table.concat(child.spawnargs, ' ')
  local out, err, outLen, errLen = {}, {}, 0, 0
  local ex, timer, finished = nil, nil, false

  local function finish(code, signal)
    if finished then
      return
    end
    finished = true
    if timer then
      clearTimeout(timer)
    end
    local so, se = table.concat(out), table.concat(err)
    if not cb then
      return
    end
    if ex == nil and code == 0 and signal == nil then
      return cb(nil, so, se)
    end
    if ex == nil then
      local msg = 'Command failed: ' .. cmd .. (se ~= '' and ('\n' .. se) or '')
      ex = setmetatable({ code = code, signal = signal, killed = child.killed, cmd = cmd, message = msg },
        events.ErrorMeta)
    else
      ex.killed, ex.signal, ex.cmd = child.killed, signal, cmd
    end
    cb(ex, so, se)
  end

  -- After a kill for the timeout or maxBuffer, the exit is the end: a grandchild (the shell's
  -- command) may still hold the output pipes open, so our ends are closed at the exit.
  local killedByUs = false
  local function kill()
    killedByUs = true
    child:kill(killSignal)
  end
  child:on('exit', function()
    if killedByUs then
      for _, st in ipairs({ child.stdout, child.stderr }) do
        st:destroy()
      end
    end
  end)

  local function collect(list, which)
    return function(chunk)
      local len = (which == 1 and outLen or errLen) + #chunk
      if which == 1 then
        outLen = len
      else
        errLen = len
      end
      if len > maxBuffer then
        local keep = #chunk - (len - maxBuffer)
        if keep > 0 then
          list[#list + 1] = chunk:sub(1, keep)
        end
        if ex == nil then
          ex = makeError('ERR_CHILD_PROCESS_STDIO_MAXBUFFER',
            (which == 1 and 'stdout' or 'stderr') .. ' maxBuffer length exceeded')
          kill()
        end
        return
      end
      list[#list + 1] = chunk
    end
  end

  child:on('error', function(e)
    ex = e
    finish(nil, nil)
  end)
  if child.stdout then
    child.stdout:on('data', collect(out, 1))
    child.stderr:on('data', collect(err, 2))
  end
  child:on('close', function(code, signal)
    finish(code, signal)
  end)
  if timeout > 0 and child.pid then
    timer = setTimeout(kill, timeout)
  end
  return child
end

-- exec(command [, opts], cb): the command line run by /bin/sh -c (opts.shell another shell).
function M.exec(command, opts, cb)
  if type(opts) == 'function' then
    opts, cb = nil, opts
  end
  if type(command) ~= 'string' then
    argError('the "command" argument must be a string, got ' .. type(command), 2)
  end
  opts = opts or {}
  if type(opts) ~= 'table' then
    argError('the "options" argument must be a table, got ' .. type(opts), 2)
  end
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  o._cmd = command
  return M.execFile(opts.shell or '/bin/sh', { '-c', command }, o, cb)
end

-- Dot calls (`child.kill('SIGTERM')`) raise ERR_INVALID_THIS at the caller (_class.lua).
class.guard(Readable, 'stream', { emit = true })
class.guard(Writable, 'stream', { emit = true })
class.guard(ChildProcess, 'child', { emit = true })

return M
