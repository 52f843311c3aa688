-- lctest.lua: helpers for busted specs that drive real lcluster processes (used by the
-- project's own suite and by users' `lcluster test`). Everything waits on a condition with a
-- deadline; nothing sleeps. Processes started here are stopped by lctest.cleanup() and, as a
-- last resort, when the test process exits.
local core = require('_core')

local M = {}

M.binary = core.exepath()

-- Built-in masters started from specs keep their control sockets (lcluster status ...) in a
-- run folder of this test process, so suites that run side by side never share a name.
if (process.env.LCLUSTER_RUN_DIR or '') == '' then
  local dir = os.tmpname()
  os.remove(dir)
  process.env.LCLUSTER_RUN_DIR = dir
  process.on('exit', function()
    os.execute("rm -rf '" .. dir .. "'")
  end)
end

-- What `lcluster test --help` prints about this module.
M.HELP = [[
lctest: helpers for specs that drive real lcluster processes (local lctest = require('lctest'))
  lctest.spawn(script, args, {flags=, env=, cwd=, binary=, stdin=}) -> child
      starts `lcluster [flags] script args`; the child has .pid .stdout .stderr .exited
      .code .signal, :waitOutput(pattern [, ms] [, 'stdout'|'stderr'|'both']) -> captures,
      :waitExit([ms]) -> code, signal, :kill([sig]), :stop([ms]), :write(data)
  lctest.waitFor(fn, ms, what)   run the loop until fn() is truthy (raises after ms)
  lctest.timeScale               every deadline above is multiplied by it: the environment's
                                 LCTEST_TIME_SCALE (default 1), for slow or loaded machines
  lctest.turn(ms)                run the loop for ms ("nothing else happens" checks)
  lctest.cleanup()               in after_each: stop every process the spec started
  lctest.track(obj), lctest.closeTracked([ms])
                                 servers and sockets opened in the spec: close what is
                                 left and wait for every 'close'
  lctest.poll(fn, ms, what)      waitFor, waking every 20 ms: for conditions no event
                                 announces (a file's content, another process's exit)
  lctest.get(port [, path] [, {host=, headers=, onDone=fn(r)}]) -> r
                                 one HTTP GET; r.done, r.status, r.body, r.err fill in later
  lctest.getSync(port [, path] [, {host=, headers=, ms=}]) -> r
                                 lctest.get, waited for
  lctest.waitAll(list [, ms] [, what])  wait until every r in list is done
  lctest.capture(socket) -> r    what a net or tls socket receives: r.data, r.ended,
                                 r.closed, r.err
  lctest.waitPids(child, pattern, n [, ms] [, what]) -> list, set
                                 wait for n distinct pids (pattern's capture) in the child's
                                 stdout: numbers in order seen, and a set of their strings
  lctest.freePort([host])  lctest.childPids(pid)  lctest.isAlive(pid)
  lctest.tmpdir()  lctest.rmrf(dir)  lctest.writeFile(path, text)
Specs run inside the runtime: process, timers, net, http, dgram and cluster work with the
real loop. Wait on conditions (lctest.waitFor), never sleep.
]]

local children = {}

-- Deadlines only turn a hang into a failure; a slow or loaded machine (CI, a sanitizer
-- build) needs them longer, never shorter: every one goes through waitFor and is multiplied
-- by LCTEST_TIME_SCALE (the project's `make test` sets it). lctest.turn's time is not a
-- deadline and is not scaled.
M.timeScale = tonumber(process.env.LCTEST_TIME_SCALE or '') or 1
if M.timeScale < 1 then
  M.timeScale = 1
end

-- Runs the loop until cond() returns a truthy value (returned), or raises after ms
-- (times lctest.timeScale).
function M.waitFor(cond, ms, what)
  ms = math.floor((ms or 5000) * M.timeScale)
  local v = cond()
  if v then
    return v
  end
  local timedOut = false
  local t = core.timer(function()
    timedOut = true
  end)
  t:start(ms, 0)
  while true do
    core.run('once')
    v = cond()
    if v then
      break
    end
    if timedOut then
      t:close()
      error(('timed out after %d ms waiting for %s'):format(ms, what or 'a condition'), 2)
    end
  end
  t:close()
  return v
end

-- Runs the loop for the given ms (for "nothing else happens" checks; never to synchronise).
function M.turn(ms)
  local done = false
  local t = core.timer(function()
    done = true
  end)
  t:start(ms or 0, 0)
  while not done do
    core.run('once')
  end
  t:close()
end

local Child = {}
Child.__index = Child

local function envList(extra)
  local env = {}
  for k, v in pairs(process.env) do
    if extra == nil or extra[k] == nil then
      env[#env + 1] = k .. '=' .. v
    end
  end
  for k, v in pairs(extra or {}) do
    if v ~= false then
      env[#env + 1] = k .. '=' .. tostring(v)
    end
  end
  return env
end

-- Starts `lcluster [opts.flags...] script args...`. opts: env (table added to ours), cwd,
-- flags (list of lcluster options before the script), binary (another executable),
-- stdin ('pipe' to write to it). The child's stdout/stderr are captured in .stdout/.stderr.
function M.spawn(script, args, opts)
  opts = opts or {}
  local argv = { opts.binary or M.binary }
  for _, f in ipairs(opts.flags or {}) do
    argv[#argv + 1] = f
  end
  if script then
    argv[#argv + 1] = script
  end
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = tostring(a)
  end
  local child = setmetatable({ stdout = '', stderr = '', exited = false, argv = argv }, Child)
  local function reader(field)
    local p
    p = core.pipe(false, function(ev, data)
      if ev == 'data' then
        child[field] = child[field] .. data
      else
        p:close()
        child[field .. 'Closed'] = true
      end
    end)
    return p
  end
  local out, err = reader('stdout'), reader('stderr')
  local stdin = 'ignore'
  if opts.stdin == 'pipe' then
    stdin = core.pipe(false, function() end)
    child._stdin = stdin
  elseif opts.stdin == 'inherit' then
    stdin = 'inherit'
  end
  local proc, pid = core.spawn({
    file = argv[1],
    args = argv,
    env = envList(opts.env),
    cwd = opts.cwd,
    stdio = { stdin, out, err },
  }, function(code, signal)
    child.exited = true
    child.code = code
    child.signal = signal ~= 0 and (core.signals[signal] or signal) or nil
    child._proc:close()
  end)
  if not proc then
    out:close()
    err:close()
    error('cannot start ' .. argv[1] .. ': ' .. tostring(pid), 2)
  end
  child._proc = proc
  child.pid = pid
  out:read_start()
  err:read_start()
  children[child] = true
  return child
end

-- Waits until the output (stdout by default, or 'stderr' / 'both') matches a Lua pattern;
-- returns the captures (or the match).
function Child:waitOutput(pattern, ms, which)
  which = which or 'stdout'
  local function text()
    if which == 'both' then
      return self.stdout .. self.stderr
    end
    return self[which]
  end
  local res
  local ok, err = pcall(M.waitFor, function()
    res = { text():match(pattern) }
    return #res > 0 or self.exited and (self.stdoutClosed and self.stderrClosed)
  end, ms or 5000, 'output matching ' .. pattern)
  if not ok or #res == 0 then
    error(('%s\n--- stdout:\n%s\n--- stderr:\n%s'):format(
      ok and ('process exited (code ' .. tostring(self.code) .. ') before output matched ' .. pattern) or err,
      self.stdout, self.stderr), 2)
  end
  return unpack(res)
end

-- Waits for the process to exit; returns code, signal name. Output is fully read first.
function Child:waitExit(ms)
  local ok, err = pcall(M.waitFor, function()
    return self.exited and self.stdoutClosed and self.stderrClosed
  end, ms or 5000, 'process ' .. tostring(self.pid) .. ' to exit')
  if not ok then
    error(('%s\n--- stdout:\n%s\n--- stderr:\n%s'):format(err, self.stdout, self.stderr), 2)
  end
  children[self] = nil
  return self.code, self.signal
end

function Child:kill(sig)
  if self.exited then
    return false
  end
  local num = type(sig) == 'number' and sig or core.signals[sig or 'SIGTERM']
  return self._proc:kill(num) == true
end

function Child:write(data)
  assert(self._stdin, 'spawn with stdin = "pipe" to write to the child')
  return self._stdin:write(data)
end

-- Stops the child: SIGTERM, then SIGKILL after ms (default 3000). Returns code, signal.
function Child:stop(ms)
  if not self.exited then
    self:kill('SIGTERM')
    local ok = pcall(M.waitFor, function()
      return self.exited
    end, ms or 3000)
    if not ok then
      self:kill('SIGKILL')
    end
  end
  return self:waitExit(5000)
end

-- Pids of the processes whose parent is `pid` (workers of a master), from /proc.
function M.childPids(pid)
  local out = {}
  local f = io.popen('ps -o pid= --ppid ' .. tonumber(pid) .. ' 2>/dev/null')
  if f then
    for line in f:lines() do
      local p = tonumber(line)
      if p then
        out[#out + 1] = p
      end
    end
    f:close()
  end
  return out
end

-- True while the process runs; a zombie (exited, not yet reaped: PID 1 in a container may
-- never reap orphans) counts as dead.
function M.isAlive(pid)
  local f = io.open('/proc/' .. tonumber(pid) .. '/stat')
  if not f then
    return false
  end
  local stat = f:read('*a') or ''
  f:close()
  local state = stat:match('^%d+ %b() (%a)')
  return state ~= nil and state ~= 'Z' and state ~= 'X'
end

-- The start of the kernel's ephemeral range (bind to port 0 and every connect() take local
-- ports from there up).
local function ephemeralLow()
  local f = io.open('/proc/sys/net/ipv4/ip_local_port_range')
  local lo
  if f then
    lo = (f:read('*l') or ''):match('^(%d+)')
    f:close()
  end
  return tonumber(lo) or 32768
end

local given = {} -- ports freePort returned in this process
local rng

-- Binds and listens on host:port with a throwaway handle, closes it, and says whether it
-- could (libuv reports EADDRINUSE at listen, not at bind).
local function probe(host, port)
  local h = core.tcp(function() end)
  local ok = h:bind(host, port) and h:listen(1)
  local addr = ok and h:getsockname()
  local closed = false
  h:close(function()
    closed = true
  end)
  M.waitFor(function()
    return closed
  end, 1000, 'port probe to close')
  return addr and addr.port
end

-- A TCP port free on host (127.0.0.1) right now, which this process has not been given
-- before. It is taken from below the kernel's ephemeral range: a port the kernel hands out
-- for bind(0) can, before the caller's server binds it, become the local port of any
-- client's connect() in the same run, and a second probe may be given the same port.
function M.freePort(host)
  assert(core.tcp, 'the tcp binding is not built')
  host = host or '127.0.0.1'
  local lo = ephemeralLow()
  local base = math.max(1024, lo - 12000)
  if lo - base >= 1000 then
    if not rng then
      -- Park-Miller (MINSTD): its products stay below 2^47, exact in a double. (An LCG
      -- modulo 2^31 with a 2^30 multiplier is not: the product's low bits are rounded off,
      -- and it gave ~600 ports, the same ones in every process.)
      local seed = process.pid * 7919 + math.floor(core.hrtime() % 1e9)
      seed = seed % 2147483646 + 1
      rng = function(n)
        seed = seed * 48271 % 2147483647
        return seed % n
      end
    end
    for _ = 1, 200 do
      local port = base + rng(lo - base)
      if not given[port] and probe(host, port) then
        given[port] = true
        return port
      end
    end
  end
  for _ = 1, 20 do -- no room below the ephemeral range: let the kernel choose
    local port = probe(host, 0)
    if port and not given[port] then
      given[port] = true
      return port
    end
  end
  error('no free port found on ' .. host)
end

-- Stops every process started with lctest.spawn that is still running. Call in after_each.
function M.cleanup()
  for child in pairs(children) do
    if not child.exited then
      child:kill('SIGKILL')
    end
  end
  for child in pairs(children) do
    pcall(child.waitExit, child, 5000)
    children[child] = nil
  end
end

-- Objects a spec opens in this process (net servers and sockets, dgram sockets, anything
-- that emits 'close'): lctest.track(obj) registers one; lctest.closeTracked() (in after_each)
-- closes what is still open and waits until every one has emitted 'close', so a spec that
-- leaks a handle fails there instead of hanging a later one.
local tracked = {}

function M.track(obj)
  local entry = { obj = obj, closed = false }
  tracked[#tracked + 1] = entry
  obj:on('close', function()
    entry.closed = true
  end)
  return obj
end

function M.closeTracked(ms)
  -- Taken out first so one case that leaks does not fail every later one.
  local list = tracked
  tracked = {}
  for _, e in ipairs(list) do
    local o = e.obj
    if not e.closed then
      if o.destroy then
        o:on('error', function() end)
        o:destroy()
      elseif o.listening or o._listenPending or (o._state ~= nil and o._state ~= 'closed') then
        o:close()
      else
        e.closed = true -- never opened: nothing will close
      end
    end
  end
  M.waitFor(function()
    for _, e in ipairs(list) do
      if not e.closed then
        return false
      end
    end
    return true
  end, ms or 3000, 'every tracked server and socket to close')
end

-- Runs the loop until cond() holds, waking it every 20 ms: for conditions that no event of
-- this process announces (a file's content, another process's exit, /proc).
function M.poll(cond, ms, what)
  local t = setInterval(function() end, 20)
  local ok, v = pcall(M.waitFor, cond, ms, what)
  clearInterval(t)
  if not ok then
    error(v, 0)
  end
  return v
end

-- One HTTP GET to 127.0.0.1:port (opts: host=, headers=, onDone=fn(r)); returns a record
-- {done, status, body, err} filled in when it completes (err: the error as a string).
function M.get(port, path, opts)
  opts = opts or {}
  local r = { done = false }
  local function finish()
    r.done = true
    if opts.onDone then
      opts.onDone(r)
    end
  end
  local req = require('http').get({ host = opts.host or '127.0.0.1', port = port, path = path or '/',
    headers = opts.headers }, function(res)
    local parts = {}
    res:on('data', function(c)
      parts[#parts + 1] = c
    end)
    res:on('end', function()
      r.status, r.body = res.statusCode, table.concat(parts)
      finish()
    end)
  end)
  req:on('error', function(e)
    r.err = tostring(e)
    finish()
  end)
  return r
end

-- lctest.get and wait for it (opts.ms, default 5000): the record.
function M.getSync(port, path, opts)
  local r = M.get(port, path, opts)
  M.waitFor(function()
    return r.done
  end, opts and opts.ms or 5000, 'GET ' .. (path or '/'))
  return r
end

-- Records what a stream socket (net or tls) receives: r.data (every byte so far), r.ended
-- ('end' seen), r.closed ('close' seen), r.err (its 'error'), r.socket. Returns r.
function M.capture(socket)
  local r = { data = '', closed = false, socket = socket }
  socket:on('data', function(d)
    r.data = r.data .. d
  end)
  socket:on('error', function(e)
    r.err = e
  end)
  socket:on('end', function()
    r.ended = true
  end)
  socket:on('close', function()
    r.closed = true
  end)
  return r
end

-- Waits until the child's stdout shows n distinct pids, each the capture of pattern (as
-- 'worker ready pid (%d+)'); returns them as a list of numbers in the order first seen and as
-- a set {['pid'] = true}.
function M.waitPids(child, pattern, n, ms, what)
  local list, set
  M.waitFor(function()
    list, set = {}, {}
    for pid in child.stdout:gmatch(pattern) do
      if not set[pid] then
        set[pid] = true
        list[#list + 1] = tonumber(pid)
      end
    end
    return #list >= n
  end, ms or 5000, what or (n .. ' pids matching ' .. pattern))
  return list, set
end

-- Waits until every record in list (lctest.get's) is done.
function M.waitAll(list, ms, what)
  M.waitFor(function()
    for _, r in ipairs(list) do
      if not r.done then
        return false
      end
    end
    return true
  end, ms or 5000, what or 'every response')
  return list
end

-- Writes a file (fixture generation in specs); returns its path.
function M.writeFile(path, text)
  local f = assert(io.open(path, 'wb'))
  f:write(text)
  f:close()
  return path
end

-- A fresh temporary folder, removed by M.cleanup()? No: by the caller with M.rmrf.
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute('mkdir -p ' .. p) == 0)
  return p
end

function M.rmrf(path)
  if path and path:match('^/tmp/') then
    os.execute('rm -rf ' .. path)
  end
end

-- Dot calls (`child.waitOutput('x')`) raise ERR_INVALID_THIS at the caller (_class.lua).
require('_class').guard(Child, 'child')

process.on('exit', function()
  for child in pairs(children) do
    if not child.exited then
      pcall(child.kill, child, 'SIGKILL')
    end
  end
end)

return M
