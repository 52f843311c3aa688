-- _main.lua: reads the command line and runs a script, a busted suite, or the built-in
-- master. Returns the process's exit status to main.c.
local core = require('_core')

local USAGE = [[
usage: lcluster [options] script.lua [args...]
       lcluster test [busted options] [paths...]   run busted specs inside the runtime

options:
  -w, --workers N        run script.lua as the worker of a built-in master that forks N
                         workers (N = 0 or 'auto': one per CPU), respawns them, and
                         reloads them one by one on SIGHUP / SIGUSR2 (env LCLUSTER_WORKERS)
      --agent FILE       (with -w) start FILE as the agent process before the workers
      --kill-timeout MS  (with -w) grace period before SIGKILL on stop/reload (5000;
                         env LCLUSTER_KILL_TIMEOUT)
      --ready-timeout MS (with -w) how long a new worker may take to listen (10000;
                         env LCLUSTER_READY_TIMEOUT)
      --drain-delay MS   (with -w) on a graceful stop, keep serving this long after
                         announcing it (STOPPING=1, GET /health 503) so load balancers
                         take the host out first (0; env LCLUSTER_DRAIN_DELAY)
      --metrics [HOST:]PORT (with -w) serve GET /health there (127.0.0.1)
  -h, --help             this help
  -v, --version          print the version

exit status: the script's process.exit(code); 0 when the loop runs dry; 1 on an uncaught
error; 2 on a usage error or a script that cannot be loaded.
environment:
  LCLUSTER_LUALIB        load lualib/ modules from this folder instead of the binary
  NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
                         systemd's Type=notify and socket activation (docs/api.md)
]]

local function usageError(msg)
  core.write(2, 'lcluster: ' .. msg .. '\n' .. 'try `lcluster --help`\n')
  return 2
end

-- Globals every script sees: process, the timers, print that writes whole lines at once.
local function setupGlobals()
  -- GC pause 400 (LuaJIT's default 200): a cycle starts when the heap reaches 4x (not 2x)
  -- what the last one left live, so marking the live heap happens a third as often per
  -- byte allocated. A keep-alive hello-world request costs ~6% fewer instructions (10.7k ->
  -- 10.1k, bench/http/ir) for ~1 MB more RSS per worker under load (4.3 -> 5.3 MB; Node's
  -- workers take ~57 MB). 1000 saved little more (~10.0k) at 7.9 MB.
  collectgarbage('setpause', 400)
  local process = require('process')
  _G.process = process
  local timer = require('timer')
  for _, name in ipairs({ 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval',
    'setImmediate', 'clearImmediate' }) do
    _G[name] = timer[name]
  end
  local write, tostring, select, concat = core.write, tostring, select, table.concat
  _G.print = function(...)
    local n = select('#', ...)
    local parts = { ... }
    for i = 1, n do
      parts[i] = tostring(parts[i])
    end
    write(1, concat(parts, '\t', 1, n) .. '\n')
  end
  os.cpus = core.cpus
  os.hostname = core.hostname
  os.getenv = function(name)
    return process.env[name]
  end
  return process
end

local function scriptDir(path)
  return path:match('^(.*)/[^/]*$') or '.'
end

local function runLoop(process)
  core.run('default')
  return process._emitExit()
end

local function runScript(script, args, opts)
  local process = setupGlobals()
  local exe = process.execPath
  _G.arg = { [-1] = exe, [0] = script }
  process.argv = { exe, script }
  for i, a in ipairs(args) do
    _G.arg[i] = a
    process.argv[#process.argv + 1] = a
  end
  local dir = scriptDir(script)
  package.path = dir .. '/?.lua;' .. dir .. '/?/init.lua;' .. package.path
  local chunk, err = loadfile(script)
  if not chunk then
    core.write(2, 'lcluster: cannot load script ' .. script .. ': ' .. tostring(err) .. '\n')
    return 2
  end
  if not core.getenv('LCLUSTER_WORKER_ID') then
    -- A master (or a plain script): take systemd's notification socket and inherited
    -- listeners, and hide them from every process it starts.
    require('_systemd').init()
  end
  if opts.workers then
    -- The master checks what its workers will run: a script that cannot load is a usage
    -- error now, not a crash loop later.
    if opts.agent then
      local ok, aerr = loadfile(opts.agent)
      if not ok then
        core.write(2, 'lcluster: cannot load agent script ' .. opts.agent .. ': ' .. tostring(aerr) .. '\n')
        return 2
      end
    end
    return require('_master').run(script, args, opts)
  end
  require('_worker_boot')
  -- Timers count from the loop's clock, which was last read when the loop was created.
  core.update_time()
  core.call(chunk, unpack(args))
  return runLoop(process)
end

local function runTests(args)
  local process = setupGlobals()
  _G.arg = { [0] = 'lcluster test' }
  for i, a in ipairs(args) do
    _G.arg[i] = a
  end
  process.argv = { process.execPath, 'test' }
  for _, a in ipairs(args) do
    process.argv[#process.argv + 1] = a
  end
  package.path = './?.lua;./?/init.lua;' .. package.path
  require('_worker_boot')
  local ok, err = pcall(require('_busted'))
  -- busted raises a bare error() to mean "some specs failed"; anything else is a crash.
  if not ok and err ~= nil then
    core.write(2, 'lcluster test: ' .. tostring(err) .. '\n')
  end
  pcall(process.emit, 'exit', ok and 0 or 1)
  return ok and 0 or 1
end

return function(argv)
  local i, n = 1, #argv
  local opts = {}
  if argv[1] == 'test' then
    local rest = {}
    for j = 2, n do
      rest[#rest + 1] = argv[j]
    end
    return runTests(rest)
  end
  while i <= n do
    local a = argv[i]
    if a == '-h' or a == '--help' then
      core.write(1, USAGE)
      return 0
    elseif a == '-v' or a == '--version' then
      core.write(1, 'lcluster ' .. core.version .. ' (' .. jit.version .. ')\n')
      return 0
    elseif a == '-w' or a == '--workers' or a:match('^%-%-workers=') then
      local v = a:match('^%-%-workers=(.*)$')
      if not v then
        i = i + 1
        v = argv[i]
      end
      if v == 'auto' then
        v = '0'
      end
      local num = tonumber(v)
      if not num or num < 0 or num ~= math.floor(num) then
        return usageError('--workers needs a number or "auto", got ' .. tostring(v))
      end
      opts.workers = num == 0 and #core.cpus() or num
    elseif a == '--drain-delay' or a == '--metrics' then
      -- Service-manager options (_systemd.lua, _health.lua).
      i = i + 1
      local v = argv[i]
      if v == nil then
        return usageError(a .. ' needs a value')
      end
      if a == '--metrics' then
        opts.metrics = v
      else
        local num = tonumber(v)
        if not num or num < 0 then
          return usageError(a .. ' needs a number of milliseconds, got ' .. v)
        end
        opts.drainDelay = num
      end
    elseif a == '--agent' or a == '--kill-timeout' or a == '--ready-timeout' then
      i = i + 1
      local v = argv[i]
      if v == nil then
        return usageError(a .. ' needs a value')
      end
      if a == '--agent' then
        opts.agent = v
      else
        local num = tonumber(v)
        if not num or num < 0 then
          return usageError(a .. ' needs a number of milliseconds, got ' .. v)
        end
        opts[a == '--kill-timeout' and 'killTimeout' or 'readyTimeout'] = num
      end
    elseif a == '--' then
      i = i + 1
      break
    elseif a:sub(1, 1) == '-' and a ~= '-' then
      return usageError('unknown option ' .. a)
    else
      break
    end
    i = i + 1
  end
  local script = argv[i]
  if not script then
    return usageError('no script given')
  end
  -- LCLUSTER_WORKERS=N stands for -w N, except in a process a master started (its workers
  -- inherit the variable; the master also removes it from their environment).
  local envWorkers = core.getenv('LCLUSTER_WORKERS')
  if not opts.workers and envWorkers and envWorkers ~= '' and not core.getenv('LCLUSTER_WORKER_ID') then
    local v = envWorkers == 'auto' and 0 or tonumber(envWorkers)
    if not v or v < 0 or v ~= math.floor(v) then
      return usageError('LCLUSTER_WORKERS needs a number or "auto", got ' .. envWorkers)
    end
    opts.workers = v == 0 and #core.cpus() or v
  end
  if opts.agent and not opts.workers then
    return usageError('--agent needs --workers')
  end
  if (opts.drainDelay or opts.metrics) and not opts.workers then
    return usageError((opts.metrics and '--metrics' or '--drain-delay') .. ' needs --workers')
  end
  local args = {}
  for j = i + 1, n do
    args[#args + 1] = argv[j]
  end
  return runScript(script, args, opts)
end
