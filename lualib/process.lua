-- process.lua: the `process` global (pid, argv, env, exit, signals, uncaught errors,
-- hrtime, memoryUsage). cluster.lua adds send/connected/disconnect in workers.
local core = require('_core')
local events = require('events')

local process = events.bind({})

process.pid = core.pid()
process.ppid = core.ppid()
process.argv = {}
process.execPath = core.exepath()
process.version = core.version
process.platform = 'linux'
process.exitCode = nil

-- env is a plain table (so pairs() works); spawned children get its current contents.
process.env = core.environ()

function process.cwd()
  return assert(core.cwd())
end

function process.chdir(dir)
  if type(dir) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: process.chdir: the directory must be a string, got ' .. type(dir), 2)
  end
  local ok, err = core.chdir(dir)
  if not ok then
    error(tostring(err) .. ': ' .. dir, 2)
  end
end

function process.hrtime()
  return core.hrtime()
end

function process.uptime()
  return (core.hrtime() - process._started) / 1e9
end
process._started = core.hrtime()

function process.memoryUsage()
  return { rss = core.rss(), heapUsed = math.floor(collectgarbage('count') * 1024) }
end

function process.kill(pid, sig)
  if type(pid) ~= 'number' or pid % 1 ~= 0 then
    error('ERR_INVALID_ARG_TYPE: process.kill: pid must be an integer, got ' .. type(pid), 2)
  end
  local num = type(sig) == 'number' and sig or core.signals[sig or 'SIGTERM']
  if not num then
    error('ERR_UNKNOWN_SIGNAL: unknown signal: ' .. tostring(sig), 2)
  end
  local ok, err = core.kill(pid, num)
  if not ok then
    error(err, 2)
  end
  return true
end

local exiting = false
-- process.exit([code]): runs the 'exit' listeners once, then ends the process.
function process.exit(code)
  code = code or process.exitCode or 0
  if type(code) ~= 'number' then
    error('ERR_INVALID_ARG_TYPE: exit code must be a number', 2)
  end
  if not exiting then
    exiting = true
    process.exitCode = code
    pcall(process.emit, 'exit', code)
    code = process.exitCode or code
  end
  core.exit(code)
end

-- Called by _main when the loop ran dry.
function process._emitExit()
  if not exiting then
    exiting = true
    local code = process.exitCode or 0
    process.emit('exit', code)
  end
  return process.exitCode or 0
end

-- Signals: a listener replaces the default action; the libuv handle exists while at least
-- one listener does, and is unref'd so it never keeps the loop alive by itself.
local signalHandles = {}
process.on('newListener', function(ev)
  local num = type(ev) == 'string' and ev:match('^SIG%u+') and core.signals[ev]
  if num and not signalHandles[ev] then
    local h = core.signal(function()
      process.emit(ev, ev)
    end)
    h:start(num)
    h:unref()
    signalHandles[ev] = h
  end
end)
process.on('removeListener', function(ev)
  local h = signalHandles[ev]
  if h and process.listenerCount(ev) == 0 then
    h:close()
    signalHandles[ev] = nil
  end
end)

-- Uncaught errors: the 'uncaughtException' listeners decide; without one, the hooks that
-- cluster/lifecycle install get a chance (graceful exit in workers), else traceback + exit 1.
process._uncaughtHooks = {}
-- Called first, each of them, before the hooks decide (http answers a failed request 500).
process._uncaughtFirst = {}
local function writeErr(s)
  core.write(2, s)
end
process._writeErr = writeErr

core.set_uncaught(function(err, tb)
  if process.listenerCount('uncaughtException') > 0 then
    process.emit('uncaughtException', err, tb)
    return true
  end
  for i = 1, #process._uncaughtFirst do
    process._uncaughtFirst[i](err)
  end
  writeErr('lcluster: uncaught error: ' .. tostring(tb) .. '\n')
  for i = #process._uncaughtHooks, 1, -1 do
    if process._uncaughtHooks[i](err, tb) then
      return true
    end
  end
  process.exit(1)
end)

-- nextTick: as Node's, but run as an immediate (before timers of the next turn).
function process.nextTick(fn, ...)
  return require('timer').setImmediate(fn, ...)
end

-- process.stdout:write(s) / process.stderr:write(s): strings and numbers, colon calls.
local function stdWriter(fd, name)
  local stream = { isTTY = core.isatty(fd) }
  stream.write = function(self, s)
    if self ~= stream then
      error(('ERR_INVALID_THIS: process.%s:write: use a colon call (process.%s:write(...))'):format(name, name), 2)
    end
    if type(s) ~= 'string' then
      if type(s) ~= 'number' then
        error(('ERR_INVALID_ARG_TYPE: process.%s:write: data must be a string, got %s'):format(name, type(s)), 2)
      end
      s = tostring(s)
    end
    return core.write(fd, s)
  end
  return stream
end
process.stdout = stdWriter(1, 'stdout')
process.stderr = stdWriter(2, 'stderr')

return process
