-- _upgrade.lua: `lcluster upgrade [NAME]`, nginx's binary upgrade for the built-in master.
--
-- The old master (start): re-runs the binary now on disk (the path /proc/self/exe named at
-- start, so a rebuilt or reinstalled binary is picked up) with the same command line, working
-- folder and options, through `sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"'` so
-- LISTEN_PID is the new master's own pid. Its listening sockets go along at fds 3.. with
-- LISTEN_FDS / LISTEN_FDNAMES, the socket-activation convention (_systemd.lua): the sockets
-- systemd gave it, every shared rr / none / UDP port of its workers, and the --metrics port.
-- The new master's shared listens take them instead of binding, so the ports never close;
-- connections that arrive meanwhile wait in the kernel's backlog for whichever master
-- accepts them.
--
-- Hand-over (the environment variable LCLUSTER_UPGRADE=PATH marks the new master):
--   * LCLUSTER_UPGRADE=OLDPID:PATH. PATH is a datagram socket the old master binds next to
--     its control socket (same 0700 folder). The new master binds its control socket at
--     CONTROL.PID (the old master still owns CONTROL) and, once every worker is ready, sends
--     "READY=1\nMAINPID=PID" to PATH.
--   * The old master then closes its control socket (libuv removes the file CONTROL as the
--     handle closes, which is why the new master cannot take the name before), stops
--     accepting on its rr sockets (connections already handed out are served), answers the
--     client with the new pid, tells systemd MAINPID= and stops notifying, and stops
--     gracefully as on `lcluster stop` (its workers finish in-flight requests).
--   * The new master, which checks every 5 ms, renames CONTROL.PID to CONTROL as soon as
--     CONTROL is gone (or the old master is). For those few ms a client finds no socket.
--   * If the new master exits, or is not ready within the old master's ready timeout (it is
--     then stopped: SIGTERM, SIGKILL after the kill timeout), the old master keeps serving
--     and the client exits 1 with the reason.
local ffi = require('ffi')
local core = require('_core')

ffi.cdef([[
int rename(const char *oldpath, const char *newpath);
int access(const char *path, int mode);
int kill(int pid, int sig);
]])

local M = {}

local ENV = 'LCLUSTER_UPGRADE'
local METRICS_NAME = 'lcluster-metrics'

local function log(msg)
  require('_lifecycle').log(msg)
end

local function envNumber(name, default)
  return tonumber(process.env[name] or '') or default
end

-- LISTEN_FDNAMES entries cannot hold ':' (the separator); a listen by name keeps its name.
local function fdName(key)
  local named = key:match('^%w+:fd:(.*)$')
  if named then
    return named
  end
  return (key:gsub('[^%w._-]', '_'))
end

-- The binary the master was started from, as now on disk: after a rebuild replaced the file
-- /proc/self/exe reads "PATH (deleted)".
local function binaryPath()
  local exe = core.exepath() or process.execPath
  return (exe:gsub(' %(deleted%)$', ''))
end

---------------------------------------------------------------------------------------------
-- The new master

-- Called once by the control socket code of a -w master: nil in an ordinary start; in a
-- master started by an upgrade, { notify = PATH } (the variable is removed, so nothing this
-- master starts takes it).
function M.inherit()
  if M.inherited ~= nil then
    return M.inherited or nil
  end
  local v = process.env[ENV]
  process.env[ENV] = nil
  core.setenv(ENV, nil)
  local old, path = (v or ''):match('^(%d+):(.+)$')
  M.inherited = path and { notify = path, old = tonumber(old) } or false
  return M.inherited or nil
end

-- A process that exists and is not a zombie (a dead master nobody reaped yet).
local function alive(pid)
  if ffi.C.kill(pid, 0) ~= 0 then
    return false
  end
  local f = io.open('/proc/' .. pid .. '/stat', 'r')
  if not f then
    return false
  end
  local stat = f:read('*l') or ''
  f:close()
  return stat:match('^%d+ %b() (%a)') ~= 'Z'
end

-- ops: the control socket's state (_control.lua). Binds at tmpPath now; renames it over
-- path and tells the old master once every worker is ready (the moment READY=1 goes to
-- systemd).
function M.adopt(ops, path, tmpPath)
  local up = M.inherited
  require('_systemd').onReady = function()
    local ok, err = core.sd_notify(up.notify, 'READY=1\nMAINPID=' .. process.pid)
    if not ok then
      log(('upgrade: cannot tell the old master that this one is ready: %s'):format(tostring(err)))
    end
    local t
    t = setInterval(function()
      if ffi.C.access(path, 0) == 0 and alive(up.old) then
        return -- the old master still owns the name
      end
      clearInterval(t)
      if ffi.C.rename(tmpPath, path) ~= 0 then
        log(('upgrade: cannot rename %s to %s (errno %d)'):format(tmpPath, path, ffi.errno()))
      else
        ops.path = path
      end
    end, 5)
    t:unref()
  end
end

-- The metrics port the old master handed over, as a listening tcp handle; nil otherwise.
function M.metricsHandle()
  if not M.inherited then
    return nil
  end
  local fd = require('_systemd').take('tcp', { fdName = METRICS_NAME })
  if not fd then
    return nil
  end
  local h = core.tcp()
  local ok = h:open(fd)
  if not ok then
    h:close()
    core.ipc_closefd(fd)
    return nil
  end
  return h
end

---------------------------------------------------------------------------------------------
-- The old master

-- The sockets to hand over: { fd=, name= } each.
local function sockets(ops, cluster)
  local list = {}
  -- systemd's own first: a listen by name must find its name, and take() uses the first
  -- match (a shared key built on an inherited socket is the same socket under another fd).
  local seen = {}
  for _, s in ipairs(require('_systemd').listeners()) do
    list[#list + 1] = { fd = s.fd, name = s.name }
    seen[('%s %s %s'):format(s.type, tostring(s.address), tostring(s.port))] = true
  end
  for _, s in ipairs(cluster._sharedSockets and cluster._sharedSockets() or {}) do
    local a = s.address or {}
    if not seen[('%s %s %s'):format(s.type, tostring(a.address), tostring(a.port))] then
      list[#list + 1] = { fd = s.fd, name = fdName(s.key) }
    end
  end
  local ms = ops.metricsServer
  if ms and ms._handle then
    local fd = ms._handle:fileno()
    if fd then
      list[#list + 1] = { fd = fd, name = METRICS_NAME }
    end
  end
  return list
end

local function childEnv(list)
  local env = {}
  for k, v in pairs(process.env) do
    env[k] = tostring(v)
  end
  -- The master removed LCLUSTER_WORKERS from what its workers see; an `LCLUSTER_WORKERS=N
  -- lcluster app.lua` master needs it back to be a master again.
  local workers = core.getenv('LCLUSTER_WORKERS')
  if workers and workers ~= '' then
    env.LCLUSTER_WORKERS = workers
  end
  -- systemd's variables were taken by this master at start (_systemd.init): the new one
  -- notifies the same socket, with the same watchdog.
  local sd = require('_systemd')
  env.NOTIFY_SOCKET = sd.notifySocket()
  local wd = sd.watchdogUsec()
  env.WATCHDOG_USEC = wd and tostring(wd) or nil
  env.WATCHDOG_PID = nil
  env.LISTEN_PID = nil
  env.LISTEN_FDS = #list > 0 and tostring(#list) or nil
  local names = {}
  for i, s in ipairs(list) do
    names[i] = s.name
  end
  env.LISTEN_FDNAMES = #list > 0 and table.concat(names, ':') or nil
  local out = {}
  for k, v in pairs(env) do
    out[#out + 1] = k .. '=' .. v
  end
  return out
end

-- start(ops, api, opts, reply, conn): the `upgrade` command of the control socket. reply()
-- gets {ok=true, pid=NEW, old=OLD} once the new master is ready (conn then hears this
-- master's exit like a stop client), or {ok=false, error=} when it is not.
function M.start(ops, api, opts, reply, conn)
  local st = api.state()
  if st.stopping then
    return reply({ ok = false, error = 'ESTOPPING: the master is stopping' })
  elseif ops.upgrading then
    return reply({ ok = false, error = 'EBUSY: an upgrade is already running' })
  elseif st.reloading then
    return reply({ ok = false, error = 'EBUSY: a reload is running; upgrade after it' })
  end
  local argv = core.argv
  if not argv then
    return reply({ ok = false, error = 'ENOTSUP: the command line of this master is unknown' })
  end
  local exe = binaryPath()
  local f = io.open(exe, 'rb')
  if not f then
    return reply({ ok = false, error = 'ENOENT: no binary at ' .. exe })
  end
  f:close()
  local readyTimeout = opts.readyTimeout or envNumber('LCLUSTER_READY_TIMEOUT', 10000)
  local killTimeout = opts.killTimeout or envNumber('LCLUSTER_KILL_TIMEOUT', 5000)

  -- The readiness socket: next to the control socket, in its 0700 folder.
  local notifyPath = ops.path .. '.upgrade'
  ffi.C.unlink(notifyPath)
  local nfd, nerr = core.sd_recv_bind(notifyPath)
  if not nfd then
    return reply({ ok = false, error = 'EIO: cannot bind the upgrade socket ' .. notifyPath .. ': '
      .. tostring(nerr) })
  end

  local list = sockets(ops, api.cluster)
  local stdio = { 0, 1, 2 }
  for _, s in ipairs(list) do
    stdio[#stdio + 1] = s.fd
  end
  local env = childEnv(list)
  env[#env + 1] = ENV .. '=' .. process.pid .. ':' .. notifyPath
  -- The count `lcluster scale` may have changed: the new master keeps it (_master.lua).
  env[#env + 1] = 'LCLUSTER_UPGRADE_WORKERS=' .. api.count()
  local args = { '-c', 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"', exe }
  for i = 1, #argv do
    args[#args + 1] = argv[i]
  end

  local uv = require('luv')
  local child, pid
  local state = 'starting' -- 'ready', 'failed'
  local poller, deadline, killer
  local failReason

  local function cleanup()
    if poller then
      clearInterval(poller)
      poller = nil
    end
    if deadline then
      clearTimeout(deadline)
      deadline = nil
    end
    if nfd then
      core.ipc_closefd(nfd)
      nfd = nil
      ffi.C.unlink(notifyPath)
    end
  end

  local function fail(reason)
    if state ~= 'starting' then
      return
    end
    state = 'failed'
    cleanup()
    ops.upgrading = false
    log('upgrade failed: ' .. reason .. (reason:match('^ESTOPPING') and '' or '; this master keeps serving'))
    reply({ ok = false, error = reason })
  end

  local function succeed()
    state = 'ready'
    cleanup()
    log(('upgrade: the new master (pid %d) is ready; stopping this one (pid %d)'):format(pid, process.pid))
    -- The control socket file is the new master's now.
    ops.handedOver = true
    -- Its /health and /metrics answer from the new master only (same socket).
    ops.close()
    -- libuv removes the file it bound as the handle closes; a master that renamed its socket
    -- into place (an upgraded one) removes the name itself. Then the new master takes it.
    if ops.server then
      ops.server:close()
      if ops.boundPath ~= ops.path then
        ffi.C.unlink(ops.path)
      end
    end
    local sd = require('_systemd')
    sd.notify('MAINPID=' .. pid)
    sd.detach()
    -- Stop accepting before the workers drain: connections still in the backlog go to the
    -- new master, and every one this master already handed out is served (the hand-off
    -- frames reach each worker before its disconnect).
    if api.cluster._stopAccepting then
      api.cluster._stopAccepting()
    end
    child:unref()
    ops.stopWaiters[#ops.stopWaiters + 1] = conn
    reply({ ok = true, pid = pid, old = process.pid })
    api.stop()
  end

  ops.upgrading = true
  log(('upgrade: starting %s %s with %d listening sockets'):format(exe, table.concat(argv, ' '), #list))
  local perr
  child, perr = uv.spawn('/bin/sh', {
    args = args,
    stdio = stdio,
    env = env,
    cwd = process.cwd(),
    -- Its own session: the new master outlives this one, whatever the terminal does.
    detached = true,
  }, function(code, sig)
    if child then
      child:close()
    end
    local how = sig ~= 0 and ('signal ' .. tostring(core.signals[sig] or sig)) or ('code ' .. tostring(code))
    -- A new master killed before it could clean up leaves its temporary control socket.
    ffi.C.unlink(ops.path .. '.' .. tostring(pid))
    if killer then
      clearTimeout(killer)
      killer = nil
    end
    if state == 'starting' then
      fail(failReason or ('ECHILD: the new master (pid %d) exited with %s before it was ready'):format(pid, how))
    end
  end)
  if not child then
    pid = 0
    return fail('ESPAWN: cannot start the new master: ' .. tostring(perr))
  end
  pid = child:get_pid()

  -- A stop of this master while the new one starts ends the upgrade: the new master is
  -- stopped too (a stopped service must not come back as the new master).
  local function abandon(reason)
    if failReason then
      return
    end
    clearInterval(poller)
    poller = nil
    failReason = reason
    child:kill('sigterm')
    killer = setTimeout(function()
      killer = nil
      if state ~= 'ready' and not child:is_closing() then
        child:kill('sigkill')
      end
    end, killTimeout)
  end
  process.on('exit', function()
    if state ~= 'ready' and not child:is_closing() then
      child:kill('sigkill')
    end
    -- This master exits (a stop quicker than the next check) before the new one was ready.
    fail(('ESTOPPING: the master stopped; the new master (pid %d) was killed'):format(pid))
  end)

  poller = setInterval(function()
    if api.state().stopping then
      log(('upgrade: this master is stopping; stopping the new master (pid %d)'):format(pid))
      local reason = ('ESTOPPING: the master began stopping; the new master (pid %d) was stopped'):format(pid)
      abandon(reason)
      -- This master may exit before the new one: answer now.
      return fail(reason)
    end
    while nfd do
      local msg = core.sd_recv(nfd)
      if not msg then
        break
      end
      if msg:find('READY=1', 1, true) then
        return succeed()
      end
    end
  end, 20)
  deadline = setTimeout(function()
    deadline = nil
    -- Too late: a READY=1 from now on does not make this master stop.
    log(('upgrade: the new master (pid %d) was not ready within %d ms; stopping it'):format(pid, readyTimeout))
    abandon(('ETIMEDOUT: the new master (pid %d) was not ready within %d ms (--ready-timeout); '
      .. 'it was stopped'):format(pid, readyTimeout))
  end, readyTimeout)
end

return M
