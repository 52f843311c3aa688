-- _main.lua: reads the command line and runs a script, a busted suite, or the built-in
-- master. Returns the process's exit status to main.c.
local core = require('_core')

local USAGE = [[
usage: lcluster [options] script.lua [args...]
       lcluster test [busted options] [paths...]   run busted specs inside the runtime
                                                   (lcluster test --help: its options)
       lcluster status [NAME] [--json] | reload [NAME] | stop [NAME] | scale [NAME] N|+N|-N
       lcluster upgrade [NAME]     start a new master from the binary on disk, then stop this one

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
      --name NAME        (with -w) the name of this cluster for lcluster status|reload|stop|
                         scale (default: the script's base name)
      --control PATH     the control socket (default $LCLUSTER_RUN_DIR/NAME.sock)
      --metrics [HOST:]PORT  (with -w) serve GET /metrics, /status, /health (127.0.0.1)
      --log FILE         (with -w) append worker output there (reopened on SIGUSR1)
      --log-format F     (with -w) text (default: [w2 4312] line) or json
      --max-memory MB    (with -w) gracefully replace a worker whose RSS passes MB
      --max-restarts N   (with -w) a slot that exits unexpectedly more than N times within
                         --restart-window S (60) is marked errored and not restarted
      --watchdog MS      (with -w) replace a worker whose event loop has not answered the
                         master for MS (30000; 0 turns it off; env LCLUSTER_WATCHDOG)
      --master FILE      (with -w) run FILE inside the built-in master, with `cluster` and
                         its events (receive what workers send to 'master', ...)
  -h, --help             this help
  -v, --version          print the version

signals to the -w master: SIGHUP, SIGUSR2 reload (workers, then the agent); SIGTERM,
SIGINT, SIGQUIT stop gracefully (a second one stops at once); SIGUSR1 reopens log files.
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
  -- GC pause: LuaJIT's default, 200 (a cycle starts when the heap reaches 2x what the last
  -- one left live). The first session chose 400 (~6% fewer instructions per keep-alive
  -- request, 10.7k -> 10.1k then) for ~1 MB more RSS per worker under load; since then a
  -- worker keeps ~100 KB more live (the stop sequence, metrics, guards), which the pause
  -- multiplies: at 400 a loaded worker reached 7.0 MB, at 200 5.4 MB (Node's: ~55 MB),
  -- for 8.0k -> 8.5k instructions per request, with keep-alive still 1.8x Node's. While the
  -- process's connections ramp up to a new high the pause is 110 (lualib/_gcramp.lua).
  collectgarbage('setpause', 200)
  -- GC step multiplier 400 (LuaJIT's default 200): a cycle does its work in half as much
  -- allocation, so less garbage made during a cycle floats to the next. The peak heap is
  -- what stays resident: idle keep-alive connections cost ~80 B less each at 10k
  -- (bench/realistic/idle_objects: 0.70-0.77 KB against 0.76-0.85), at the same instructions
  -- per request and per connection (bench/http/ir, bench/conn/ir, bench/realistic/ir).
  collectgarbage('setstepmul', 400)
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
  -- Node's os functions (totalmem, networkInterfaces, ...) load on first use (sys/_os.lua).
  setmetatable(os, {
    __index = function(t, k)
      setmetatable(t, nil)
      return require('_os')(t)[k]
    end,
  })
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
    for _, c in ipairs({ { opts.agent, 'agent script' }, { opts.masterFile, '--master' } }) do
      local file, what = c[1], c[2]
      if file then
        local ok, lerr = loadfile(file)
        if not ok then
          core.write(2, ('lcluster: cannot load %s %s: %s\n'):format(what, file, tostring(lerr)))
          return 2
        end
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

local TEST_USAGE = [[
usage: lcluster test [busted options] [paths...]
Runs busted specs (files matching *_spec.lua under the paths, default ./spec) inside the
lcluster runtime, with lcluster's own Lua as the interpreter. Exit status: 0 when every spec
passed, 1 otherwise.

]]

-- `lcluster test --help`: lcluster's usage and lctest's helpers, then busted's options.
local function testHelp()
  local parts = { TEST_USAGE, require('lctest').HELP }
  local ok, usage = pcall(function()
    local opts = {}
    for k, v in pairs(require('busted.options')) do
      opts[k] = v
    end
    opts.standalone = false
    local cli = require('busted.modules.cli')(opts)
    cli:set_name('lcluster test')
    local _, text = cli:parse({ '--help' })
    return text
  end)
  if ok and type(usage) == 'string' then
    parts[#parts + 1] = '\nbusted options:\n' .. usage:gsub('^lcluster test: error: ', '') .. '\n'
  else
    parts[#parts + 1] = '\n(busted is not installed: apt-get install lua-busted)\n'
  end
  core.write(1, table.concat(parts))
  return 0
end

local function runTests(args)
  for _, a in ipairs(args) do
    if a == '-h' or a == '--help' then
      setupGlobals()
      return testHelp()
    end
  end
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

-- An option taking a number, stored as opts[key]; one that is not a number or that
-- rejects(num) gives '<flag> needs <needs>'.
local function numberOption(flag, key, needs, rejects)
  return function(opts, v)
    local num = tonumber(v)
    if not num or rejects(num) then
      return flag .. ' needs ' .. needs .. ', got ' .. v
    end
    opts[key] = num
  end
end

local function negative(num)
  return num < 0
end

local function notPositive(num)
  return num <= 0
end

-- The operations options of the built-in master: each stores its value in opts or returns
-- an error message.
local OPS_OPTIONS = {
  ['--name'] = function(opts, v)
    if not v:match('^[%w._-]+$') then
      return '--name takes letters, digits, ".", "_" and "-", got ' .. v
    end
    opts.name = v
  end,
  ['--control'] = function(opts, v)
    opts.control = v
  end,
  -- Service managers (_systemd.lua): keep serving this long after a graceful stop begins.
  ['--drain-delay'] = numberOption('--drain-delay', 'drainDelay', 'a number of milliseconds', negative),
  ['--metrics'] = function(opts, v)
    local port = tonumber(v:match('(%d+)$') or '')
    if not port or port > 65535 then
      return '--metrics needs [HOST:]PORT, got ' .. v
    end
    opts.metrics = v
  end,
  ['--log'] = function(opts, v)
    opts.log = v
  end,
  ['--log-format'] = function(opts, v)
    if v ~= 'text' and v ~= 'json' then
      return '--log-format needs text or json, got ' .. v
    end
    opts.logFormat = v
  end,
  ['--max-restarts'] = numberOption('--max-restarts', 'maxRestarts', 'a whole number', function(num)
    return num < 0 or num % 1 ~= 0
  end),
  ['--restart-window'] = numberOption('--restart-window', 'restartWindow', 'a number of seconds', notPositive),
  ['--max-memory'] = numberOption('--max-memory', 'maxMemory', 'a number of MB', notPositive),
}

local CONTROL_COMMANDS = { status = true, reload = true, stop = true, scale = true, upgrade = true }

return function(argv)
  local i, n = 1, #argv
  local opts = {}
  -- The command line as given: `lcluster upgrade` re-runs it (_upgrade.lua).
  core.argv = argv
  -- The control commands (_control.lua's client), named here so that running a script
  -- (every worker) does not load _control.lua, ~900 lines of heap, to learn it is not one.
  if CONTROL_COMMANDS[argv[1]] then
    setupGlobals()
    return require('_control').client(argv)
  end
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
    elseif a == '--agent' or a == '--kill-timeout' or a == '--ready-timeout' or a == '--watchdog'
      or a == '--master' then
      i = i + 1
      local v = argv[i]
      if v == nil then
        return usageError(a .. ' needs a value')
      end
      if a == '--agent' then
        opts.agent = v
      elseif a == '--master' then
        opts.masterFile = v
      else
        local num = tonumber(v)
        if not num or num < 0 then
          return usageError(a .. ' needs a number of milliseconds, got ' .. v)
        end
        local names = { ['--kill-timeout'] = 'killTimeout', ['--ready-timeout'] = 'readyTimeout',
          ['--watchdog'] = 'watchdog' }
        opts[names[a]] = num
      end
    elseif OPS_OPTIONS[a:match('^(%-%-[%w-]+)')] then
      -- Operations (docs/api.md): --name, --control, --metrics, --log, --log-format,
      -- --max-restarts, --restart-window, --max-memory, --drain-delay, as `--opt VALUE` or
      -- `--opt=VALUE`.
      local key, v = a:match('^(%-%-[%w-]+)=(.*)$')
      if not key then
        key = a
        i = i + 1
        v = argv[i]
      end
      if v == nil or v == '' then
        return usageError(key .. ' needs a value')
      end
      local err = OPS_OPTIONS[key](opts, v)
      if err then
        return usageError(err)
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
  for _, k in ipairs({
    'metrics', 'log', 'maxMemory', 'logFormat', 'maxRestarts', 'restartWindow', 'drainDelay',
  }) do
    if opts[k] and not opts.workers then
      return usageError('--' .. k:gsub('%u', function(c)
        return '-' .. c:lower()
      end) .. ' needs --workers')
    end
  end
  if opts.masterFile and not opts.workers then
    return usageError('--master needs --workers')
  end
  local args = {}
  for j = i + 1, n do
    args[#args + 1] = argv[j]
  end
  return runScript(script, args, opts)
end
