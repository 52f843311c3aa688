-- _systemd.lua: lcluster as a systemd service, without libsystemd (runtime/systemd.c sends
-- the datagrams and reads the inherited sockets).
--
-- init() runs once at start in every process that is not a worker or an agent (a -w master,
-- a script master, a plain script). Like sd_notify(3) and sd_listen_fds(3) with
-- unset_environment, it reads NOTIFY_SOCKET, WATCHDOG_USEC / WATCHDOG_PID and LISTEN_FDS /
-- LISTEN_PID / LISTEN_FDNAMES, then removes them from the environment, so no worker (nor any
-- child the script starts) takes the master's notifications or sockets for its own.
--
-- Notifications: notify(state) sends one datagram when NOTIFY_SOCKET was set. The built-in
-- master calls master(api) (READY=1 once every slot's worker listens, RELOADING=1 around a
-- reload, STOPPING=1, STATUS=, WATCHDOG=1); a script master sends what it wants through the
-- public `systemd` module. The watchdog pings (WATCHDOG=1 every WATCHDOG_USEC / 2) come from
-- an unreferenced interval, so they stop when the loop stops; the -w master also skips them
-- while no worker is ready (its workers crash-loop): systemd then restarts the service.
--
-- Socket activation: the inherited sockets (fd 3 onwards) are marked close-on-exec and
-- described (getsockname); take(kind, msg) gives the master's shared-port code a copy (dup)
-- of the one a listen asks for, by name (listen{fdName=}) or by address and port. The
-- original stays open for the master's life, so a server that closes and listens again (or
-- a respawned worker) gets the same socket, and connections wait in its backlog meanwhile.
local core = require('_core')

local M = {}

local VARS = { 'NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'LISTEN_FDS', 'LISTEN_PID',
  'LISTEN_FDNAMES' }
local SD_LISTEN_FDS_START = 3

local notifyPath -- NOTIFY_SOCKET, or nil
local watchdogUsec -- WATCHDOG_USEC when it is meant for us, or nil
local inherited = {} -- { fd=, name=, type='stream'|'dgram', family=, address=, port=, path= }
local health -- fn() -> true while the watchdog may ping (set by master())
local warned = false

local function log(msg)
  require('_lifecycle').log(msg)
end

function M.init()
  local env = process.env
  local pid = process.pid
  if env.NOTIFY_SOCKET and env.NOTIFY_SOCKET ~= '' then
    notifyPath = env.NOTIFY_SOCKET
  end
  local usec = tonumber(env.WATCHDOG_USEC or '')
  local wpid = tonumber(env.WATCHDOG_PID or '')
  if usec and usec > 0 and (wpid == nil or wpid == pid) then
    watchdogUsec = usec
  end
  local n = tonumber(env.LISTEN_FDS or '')
  -- LISTEN_PID guards against a variable meant for a parent: only its named process takes
  -- the sockets.
  if n and n > 0 and tonumber(env.LISTEN_PID or '') == pid then
    local names = {}
    for name in ((env.LISTEN_FDNAMES or '') .. ':'):gmatch('([^:]*):') do
      names[#names + 1] = name
    end
    for i = 0, n - 1 do
      local fd = SD_LISTEN_FDS_START + i
      local info, err = core.sd_sockinfo(fd)
      if info and info.type == 'stream' and not info.listening then
        -- Accept=yes hands over one connection, not a listener: nothing to share.
        log(('LISTEN_FDS: fd %d is a connection, not a listening socket (Accept=yes is not '
          .. 'supported); ignored'):format(fd))
      elseif info then
        info.fd = fd
        info.name = (names[i + 1] ~= nil and names[i + 1] ~= '') and names[i + 1] or 'unknown'
        inherited[#inherited + 1] = info
      else
        log(('LISTEN_FDS: fd %d is not a usable socket (%s); ignored'):format(fd, tostring(err)))
      end
    end
  end
  for _, k in ipairs(VARS) do
    if env[k] ~= nil then
      env[k] = nil
      core.setenv(k, nil)
    end
  end
  if watchdogUsec then
    -- Half the timeout, as sd_watchdog_enabled(3) advises. Unreferenced: the pings never keep
    -- a master alive, and they end with its loop.
    local t = setInterval(function()
      if health == nil or health() then
        M.notify('WATCHDOG=1')
      end
    end, math.max(1, math.floor(watchdogUsec / 2000)))
    t:unref()
  end
end

-- notify(state) -> true (sent), false (no NOTIFY_SOCKET), or nil, err when the send failed.
-- A failure is reported once: systemd going away must not flood the log.
function M.notify(state)
  if not notifyPath then
    return false
  end
  local ok, err = core.sd_notify(notifyPath, state)
  if not ok then
    if not warned then
      warned = true
      log(('cannot notify systemd at %s: %s'):format(notifyPath, tostring(err)))
    end
    return nil, err
  end
  return true
end

-- The NOTIFY_SOCKET this process was given (nil without one): a master started by
-- `lcluster upgrade` (_upgrade.lua) notifies the same socket.
function M.notifySocket()
  return notifyPath
end

-- No more notifications from this process (an upgraded master that drains: systemd follows
-- the new one, whose pid it got as MAINPID=).
function M.detach()
  notifyPath = nil
end

function M.watchdogUsec()
  return watchdogUsec
end

-- The inherited sockets, as copies of their descriptions (fd, name, type, family, address,
-- port, path).
function M.listeners()
  local out = {}
  for i, s in ipairs(inherited) do
    local c = {}
    for k, v in pairs(s) do
      c[k] = v
    end
    out[i] = c
  end
  return out
end

local WILDCARD = { ['0.0.0.0'] = true, ['::'] = true }

local function matches(s, kind, msg)
  if s.type ~= (kind == 'udp' and 'dgram' or 'stream') then
    return false
  end
  if msg.fdName then
    return s.name == msg.fdName
  end
  if msg.path then
    return s.path == msg.path
  end
  if s.port == nil or msg.port == 0 or s.port ~= msg.port then
    return false
  end
  -- The same address; or a listen on every address (the default host) taking a socket bound
  -- to one; or a listen on one address taking a socket bound to every address (binding that
  -- one would fail with EADDRINUSE anyway).
  return s.address == msg.host or msg.anyHost or WILDCARD[msg.host] or WILDCARD[s.address]
end

-- take(kind, msg) -> fd (a close-on-exec copy the caller owns), info; or nil when no
-- inherited socket matches; or nil, err, code when a listen by name names none.
function M.take(kind, msg)
  for _, s in ipairs(inherited) do
    if matches(s, kind, msg) then
      local fd, err, code = core.sd_dup(s.fd)
      if not fd then
        return nil, err, code
      end
      return fd, s
    end
  end
  if msg.fdName then
    return nil, ('ENOENT: no inherited socket named %s (LISTEN_FDNAMES)'):format(msg.fdName), 'ENOENT'
  end
  return nil
end

-- The built-in master's notifications. api: total() -> slots, ready() -> workers ready.
-- The watchdog pings while the master starts or stops, and otherwise while a worker is
-- ready: a master whose every worker crash-loops stops pinging, and systemd restarts it.
function M.master(api)
  local ready, state = false, 'starting'
  health = function()
    return state == 'starting' or state == 'stopping' or api.ready() > 0
  end
  local function status()
    return ('STATUS=%s: %d/%d workers ready'):format(state, api.ready(), api.total())
  end
  local self = {}
  function self.isReady()
    return ready
  end
  -- A worker became ready or went away: READY=1 the first time every slot is ready, then
  -- STATUS= only.
  function self.changed()
    if state == 'starting' and api.ready() >= api.total() then
      state = 'serving'
      ready = true
      if M.onReady then
        -- A master started by `lcluster upgrade` tells the old one (_upgrade.lua).
        M.onReady()
      end
      return M.notify('READY=1\n' .. status())
    end
    return M.notify(status())
  end
  function self.reloading()
    state = 'reloading'
    return M.notify(('RELOADING=1\nMONOTONIC_USEC=%d\n%s'):format(
      math.floor(process.hrtime() / 1000), status()))
  end
  function self.reloaded()
    state = ready and 'serving' or 'starting'
    if ready then
      return M.notify('READY=1\n' .. status())
    end
    return self.changed()
  end
  function self.stopping()
    state = 'stopping'
    return M.notify('STOPPING=1\n' .. status())
  end
  return self
end

return M
