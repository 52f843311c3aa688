-- _control.lua: see and steer a running cluster (API.md "Operations").
--   master side: M.master(cluster, api, opts, cb) -- the control socket, GET /metrics,
--     /status and /health (--metrics), the --max-memory check; api is what the master
--     lets it read and do (see _master.lua).
--   client side: M.client(argv) -- `lcluster status|reload|stop|scale`.
-- Protocol: line-delimited JSON over a Unix socket, mode 0600 in a 0700 directory. A request
-- is {"cmd":"status"|"reload"|"stop"|"scale","n":..}; each gets one reply {"ok":true,...} or
-- {"ok":false,"error":"CODE: message"}; after a stop the master also sends
-- {"event":"exit","code":N} as it exits.
-- Size: over 800 lines on purpose: both ends of one protocol (the master's socket and the
-- `lcluster status|reload|stop|scale|upgrade` client) stay in one file so they change together.
local ffi = require('ffi')
local core = require('_core')
local cjson = require('cjson')
local metrics = require('_metrics')

ffi.cdef([[
int mkdir(const char *path, unsigned int mode);
int chmod(const char *path, unsigned int mode);
int unlink(const char *path);
unsigned int umask(unsigned int mask);
unsigned int geteuid(void);
]])

local M = {}

local MAX_REQUEST = 64 * 1024

-- The folder of the control sockets: $LCLUSTER_RUN_DIR, else $XDG_RUNTIME_DIR/lcluster, else
-- /run/lcluster as root, else /tmp/lcluster-UID.
function M.runDir()
  local env = process.env
  if env.LCLUSTER_RUN_DIR and env.LCLUSTER_RUN_DIR ~= '' then
    return env.LCLUSTER_RUN_DIR
  end
  if env.XDG_RUNTIME_DIR and env.XDG_RUNTIME_DIR ~= '' then
    return env.XDG_RUNTIME_DIR .. '/lcluster'
  end
  local uid = tonumber(ffi.C.geteuid())
  if uid == 0 then
    return '/run/lcluster'
  end
  return '/tmp/lcluster-' .. uid
end

function M.socketPath(name, control)
  if control then
    return control
  end
  return M.runDir() .. '/' .. name .. '.sock'
end

-- The default name: the script's base name without .lua.
function M.defaultName(script)
  local base = script:match('([^/]+)$') or script
  return (base:gsub('%.lua$', ''))
end

local function errno()
  return ffi.errno()
end

-- mkdir -p with mode 0700 for the folders it creates.
local function ensureDir(dir)
  local path = ''
  for part in dir:gmatch('[^/]+') do
    path = path .. '/' .. part
    if dir:sub(1, 1) ~= '/' and path:sub(1, 1) == '/' then
      path = path:sub(2)
    end
    if ffi.C.mkdir(path, 448) ~= 0 and errno() ~= 17 then -- 0700; 17 = EEXIST
      return nil, ('EACCES: cannot create %s (errno %d)'):format(path, errno())
    end
  end
  return true
end

-- ---- the master side ----------------------------------------------------------------

-- Calls fn(line) for each whole line of buf (while not stop()); returns what is left.
local function eachLine(buf, fn, stop)
  while not (stop and stop()) do
    local nl = buf:find('\n', 1, true)
    if not nl then
      break
    end
    local line = buf:sub(1, nl - 1)
    buf = buf:sub(nl + 1)
    fn(line)
  end
  return buf
end

local function fmtError(err)
  if type(err) == 'table' then
    return tostring(err.code) .. ': ' .. tostring(err.message)
  end
  return tostring(err)
end

-- api: {
--   cluster, name, script, startedAt (hrtime ns),
--   count() -> workers wanted, state() -> {stopping=, reloading=},
--   reload(cb(err)), stop(reason), scale(n, cb(err)), replace(slotNo, reason, cb(err)),
--   slotOf(worker) -> slot number }
-- opts: control (path), metrics ('[host:]port'), maxMemory (MB).
-- cb(err) once the control socket (and the metrics port) listen, or on failure.
function M.master(api, opts, cb)
  local cluster = api.cluster
  local net = require('net')
  local log = require('_lifecycle').log
  local self = { reloads = 0, restarts = {}, cpu = {}, started = false, stopWaiters = {} }
  M.current = self

  -- Per-slot counts of unexpected exits, as PM2's restart column.
  cluster.on('exit', function(w)
    if not w.exitedAfterDisconnect and w._slot then
      self.restarts[w._slot] = (self.restarts[w._slot] or 0) + 1
    end
  end)

  -- --max-restarts N within --restart-window S: the master calls giveUp(slot) for each
  -- unexpected exit; true leaves the slot errored (no respawn, shown in status) until a
  -- reload or scale forks it again. When every slot is errored the master exits 1.
  self.errored, self.crashes = {}, {}
  cluster.on('fork', function(w)
    if w._slot then
      self.errored[w._slot] = nil
    end
  end)
  function self.giveUp(slot, how)
    if not opts.maxRestarts then
      return false
    end
    local now = process.hrtime()
    local window = (opts.restartWindow or 60) * 1e9
    local list = {}
    for _, t in ipairs(self.crashes[slot] or {}) do
      if now - t < window then
        list[#list + 1] = t
      end
    end
    list[#list + 1] = now
    self.crashes[slot] = list
    if #list <= opts.maxRestarts then
      return false
    end
    self.crashes[slot] = nil
    self.errored[slot] = true
    log(('slot %d exited with %s, %d times within %d s (--max-restarts %d): marked errored, not restarted'):format(
      slot, how, #list, opts.restartWindow or 60, opts.maxRestarts))
    for s = 1, api.count() do
      if not self.errored[s] then
        return true
      end
    end
    log('every slot is errored: exiting')
    if cluster.agent and not cluster.agent:isDead() then
      cluster.agent:kill('SIGTERM')
    end
    setImmediate(function()
      process.exit(1)
    end)
    return true
  end

  -- The built-in master marks ready workers (_ready); a script master's are those that listen.
  cluster.on('listening', function(w)
    w._opsReady = true
  end)
  local function isReady(w)
    return w._ready or w._opsReady
  end

  local function readyCount()
    local k = 0
    for _, w in pairs(cluster.workers) do
      if isReady(w) and not w:isDead() and not w.exitedAfterDisconnect then
        k = k + 1
      end
    end
    return k
  end

  -- Samples CPU time of every process once a second (for CPU %) and checks --max-memory.
  local pending = {} -- slot -> true while a memory replacement runs
  local function sample()
    local now = process.hrtime()
    local seen = {}
    local function one(pid)
      local rss, cpu = metrics.procStats(pid)
      seen[pid] = true
      if not rss then
        return nil
      end
      local prev = self.cpu[pid]
      local pct = 0
      if prev then
        local dt = (now - prev.at) / 1e9
        if dt > 0 then
          pct = (cpu - prev.cpu) / dt * 100
        end
      end
      self.cpu[pid] = { at = now, cpu = cpu, rss = rss, pct = pct }
      return rss
    end
    one(process.pid)
    if cluster.agent and cluster.agent.process.pid then
      one(cluster.agent.process.pid)
    end
    local limit = opts.maxMemory and opts.maxMemory * 1024 * 1024
    for _, w in pairs(cluster.workers) do
      local rss = w.process.pid and one(w.process.pid)
      local slot = w._slot
      if limit and rss and rss > limit and slot and w._ready and not w.exitedAfterDisconnect
        and not pending[slot] and not api.state().stopping and not api.state().reloading then
        pending[slot] = true
        log(('worker %d (pid %d, slot %d) uses %.1f MB, over --max-memory %d MB: replacing it'):format(
          w.id, w.process.pid, slot, rss / 1048576, opts.maxMemory))
        api.replace(slot, 'memory', function()
          pending[slot] = nil
        end)
      end
    end
    for pid in pairs(self.cpu) do
      if not seen[pid] then
        self.cpu[pid] = nil
      end
    end
  end
  local sampler = setInterval(sample, tonumber(process.env.LCLUSTER_SAMPLE_MS or '') or 1000)
  sampler:unref()

  local function procRow(kind, w, pid, startedAt)
    local c = self.cpu[pid]
    if not c or not c.rss or c.rss == 0 then
      -- Not sampled yet (a new worker): its memory now, its CPU share from the next sample.
      local rss, cpu = metrics.procStats(pid)
      c = { rss = rss, cpu = cpu }
    end
    local m = w and w._metrics or {}
    local row = {
      proc = kind,
      pid = pid,
      uptime = startedAt and math.floor((process.hrtime() - startedAt) / 1e9) or 0,
      rss = c.rss or (pid == process.pid and core.rss()) or 0,
      cpu = math.floor((c.pct or 0) * 10 + 0.5) / 10,
      cpuSeconds = c.cpu or 0,
    }
    if w then
      row.id = w.id
      row.slot = w._slot
      row.state = w:isDead() and 'dead' or w.exitedAfterDisconnect and 'stopping'
        or isReady(w) and 'online' or 'starting'
      row.restarts = w._slot and self.restarts[w._slot] or 0
      row.connections = m.conns_open or 0
      row.requests = m.requests or 0
      row.lag = m.lag or 0
      for _, f in ipairs(metrics.FIELDS) do
        row[f] = m[f] or 0
      end
    else
      row.state = api.state().stopping and 'stopping' or 'online'
    end
    return row
  end

  function self.healthy()
    return self.started and not api.state().stopping and readyCount() > 0
  end

  function self.status()
    local st = api.state()
    local rows = { procRow('master', nil, process.pid, api.startedAt) }
    local a = cluster.agent
    if a and a.process.pid and not a:isDead() then
      local r = procRow('agent', a, a.process.pid, a._forkedAt)
      r.slot = nil
      rows[#rows + 1] = r
    end
    local ws = {}
    for _, w in pairs(cluster.workers) do
      ws[#ws + 1] = w
    end
    table.sort(ws, function(x, y)
      if (x._slot or 0) ~= (y._slot or 0) then
        return (x._slot or 0) < (y._slot or 0)
      end
      return x.id < y.id
    end)
    for _, w in ipairs(ws) do
      rows[#rows + 1] = procRow('w' .. tostring(w._slot or w.id), w, w.process.pid, w._forkedAt)
    end
    for slot in pairs(self.errored) do
      rows[#rows + 1] = { proc = 'w' .. slot, slot = slot, pid = 0, state = 'errored', uptime = 0,
        restarts = self.restarts[slot] or 0, rss = 0, cpu = 0, cpuSeconds = 0 }
    end
    return {
      name = api.name,
      pid = process.pid,
      script = api.script,
      workers = api.count(),
      ready = readyCount(),
      reloads = self.reloads,
      state = st.stopping and 'stopping' or st.reloading and 'reloading'
        or self.started and 'serving' or 'starting',
      processes = rows,
    }
  end

  function self.prometheus()
    local st = self.status()
    local fams = {}
    local function fam(name, typ, help)
      local f = { name = 'lcluster_' .. name, type = typ, help = help, samples = {} }
      fams[#fams + 1] = f
      return f
    end
    local up = fam('up', 'gauge', '1 while the cluster serves (as GET /health answers 200)')
    up.samples[1] = { value = self.healthy() and 1 or 0 }
    local wk = fam('workers', 'gauge', 'Workers wanted (the -w count, changed by scale)')
    wk.samples[1] = { value = st.workers }
    local rd = fam('workers_ready', 'gauge', 'Workers ready and serving')
    rd.samples[1] = { value = st.ready }
    local rl = fam('reloads_total', 'counter', 'Completed rolling reloads')
    rl.samples[1] = { value = self.reloads }
    local per = {
      { 'restarts_total', 'counter', 'Unexpected exits of the slot, each followed by a respawn', 'restarts' },
      { 'requests_total', 'counter', 'HTTP requests served', 'requests' },
      { 'connections_accepted_total', 'counter', 'Connections accepted', 'conns_accepted' },
      { 'connections_open', 'gauge', 'Connections open', 'conns_open' },
      { 'bytes_received_total', 'counter', 'Bytes read from sockets and pipes', 'bytes_in' },
      { 'bytes_sent_total', 'counter', 'Bytes written to sockets and pipes', 'bytes_out' },
      { 'handoffs_total', 'counter', 'Connections handed to the worker by the master', 'handoffs' },
      { 'ipc_messages_received_total', 'counter', 'IPC frames received from the master', 'ipc_in' },
      { 'ipc_messages_sent_total', 'counter', 'IPC frames sent to the master', 'ipc_out' },
      { 'event_loop_lag_seconds', 'gauge', 'Longest event-loop delay in the last report period', 'lag' },
    }
    local rss = fam('resident_memory_bytes', 'gauge', 'Resident set size, from /proc')
    local cpu = fam('cpu_seconds_total', 'counter', 'User and system CPU time, from /proc')
    for _, r in ipairs(st.processes) do
      local labels = { proc = r.proc, pid = r.pid, slot = r.slot and tostring(r.slot) or '' }
      rss.samples[#rss.samples + 1] = { labels = labels, value = r.rss }
      cpu.samples[#cpu.samples + 1] = { labels = labels, value = r.cpuSeconds }
    end
    for _, p in ipairs(per) do
      local f = fam(p[1], p[2], p[3])
      for _, r in ipairs(st.processes) do
        if r.proc ~= 'master' then
          f.samples[#f.samples + 1] = {
            labels = { proc = r.proc, pid = r.pid, slot = r.slot and tostring(r.slot) or '' },
            value = r[p[4]] or 0,
          }
        end
      end
    end
    return metrics.exposition(fams)
  end

  -- ---- commands
  local commands = {}
  function commands.status()
    return { ok = true, status = self.status() }
  end
  function commands.reload(_, reply)
    api.reload(function(err)
      if err then
        reply({ ok = false, error = 'ERELOAD: ' .. fmtError(err) })
      else
        reply({ ok = true })
      end
    end)
  end
  function commands.stop(_, reply, conn)
    self.stopWaiters[#self.stopWaiters + 1] = conn
    reply({ ok = true, pid = process.pid })
    api.stop()
  end
  function commands.scale(req, reply)
    local cur = api.count()
    local n = req.n
    if type(n) == 'string' then
      local sign, num = n:match('^([+-]?)(%d+)$')
      num = tonumber(num)
      if not num then
        return { ok = false, error = 'ERR_INVALID_ARG_VALUE: scale needs N, +N or -N, got ' .. n }
      end
      n = sign == '+' and cur + num or sign == '-' and cur - num or num
    end
    if type(n) ~= 'number' or n % 1 ~= 0 or n < 1 or n > 1024 then
      return { ok = false, error = 'ERR_INVALID_ARG_VALUE: the worker count must be an integer from 1 to 1024, got '
        .. tostring(n) }
    end
    api.scale(n, function(err)
      if err then
        reply({ ok = false, error = fmtError(err) })
      else
        reply({ ok = true, from = cur, workers = n })
      end
    end)
  end
  -- The binary upgrade (_upgrade.lua): the reply comes once the new master is ready (or
  -- is not); then, like stop, the exit event of this master.
  function commands.upgrade(_, reply, conn)
    if api.noUpgrade then
      return { ok = false, error = 'ENOTSUP: upgrade needs the built-in master (lcluster -w N)' }
    end
    require('_upgrade').start(self, api, opts, reply, conn)
  end
  commands.ping = function()
    return { ok = true, pid = process.pid }
  end

  local function handleLine(conn, line)
    local ok, req = pcall(cjson.decode, line)
    local function reply(t)
      if not conn.destroyed then
        conn:write(cjson.encode(t) .. '\n')
      end
    end
    if not ok or type(req) ~= 'table' or req.cmd == nil then
      return reply({ ok = false, error = 'EPROTO: a request is one JSON object per line' })
    end
    local fn = type(req.cmd) == 'string' and commands[req.cmd]
    if not fn then
      return reply({ ok = false, error = 'ENOTSUP: unknown command ' .. tostring(req.cmd) })
    end
    local cok, res = pcall(fn, req, reply, conn)
    if not cok then
      return reply({ ok = false, error = 'EINTERNAL: ' .. tostring(res) })
    end
    if res then
      reply(res)
    end
  end

  local function onConnection(conn)
    local buf = ''
    conn:on('error', function() end)
    conn:on('data', function(d)
      buf = eachLine(buf .. d, function(line)
        handleLine(conn, line)
      end)
      if #buf > MAX_REQUEST then
        buf = ''
        conn:write(cjson.encode({ ok = false, error = 'E2BIG: request line too long' }) .. '\n')
        conn:finish()
      end
    end)
    conn:on('end', function()
      conn:finish()
    end)
  end

  -- Stop clients hear the exit status as the master exits.
  process.on('exit', function(code)
    for _, c in ipairs(self.stopWaiters) do
      if not c.destroyed then
        pcall(c.write, c, cjson.encode({ event = 'exit', code = code or 0 }) .. '\n')
      end
    end
    -- After an upgrade the file is the new master's.
    if self.server and not self.handedOver then
      ffi.C.unlink(self.path)
    end
  end)

  -- ---- listening: the metrics port, then the control socket
  local path = M.socketPath(api.name, opts.control)
  self.path = path

  local function startMetrics(done)
    if not opts.metrics then
      return done()
    end
    local host, port = tostring(opts.metrics):match('^(.*):(%d+)$')
    if not host then
      host, port = '127.0.0.1', tostring(opts.metrics)
    end
    host = host:gsub('^%[(.*)%]$', '%1')
    local http = require('http')
    -- A master started by `lcluster upgrade` gets the old one's metrics socket.
    local inherited = require('_upgrade').inherit() and require('_upgrade').metricsHandle()
    local srv = http.createServer(function(req, res)
      local url = req.url:gsub('%?.*$', '')
      local status, body, ctype = 404, 'not found\n', 'text/plain'
      if req.method ~= 'GET' and req.method ~= 'HEAD' then
        status, body = 405, 'method not allowed\n'
      elseif url == '/metrics' then
        status, body, ctype = 200, self.prometheus(), 'text/plain; version=0.0.4; charset=utf-8'
      elseif url == '/status' then
        status, body, ctype = 200, cjson.encode(self.status()) .. '\n', 'application/json'
      elseif url == '/health' then
        local st = self.status()
        if self.healthy() then
          status, body = 200, ('ok %d/%d workers ready\n'):format(st.ready, st.workers)
        else
          status, body = 503, st.state .. '\n'
        end
      end
      res:writeHead(status, { ['Content-Type'] = ctype, ['Content-Length'] = #body,
        ['Cache-Control'] = 'no-store' })
      res:finish(req.method == 'HEAD' and '' or body)
    end)
    srv:on('error', function(err)
      done(('%s (--metrics %s)'):format(fmtError(err), opts.metrics))
    end)
    local function listening()
      self.metricsServer = srv
      done()
    end
    if inherited then
      srv:once('listening', listening)
      srv:_listenOnHandle(inherited)
      return
    end
    srv:listen(tonumber(port), host, listening)
  end

  local function listenSocket(done)
    local ok, err = ensureDir(path:match('^(.*)/[^/]*$') or '.')
    if not ok then
      return done(err)
    end
    local srv = net.createServer(onConnection)
    -- A master started by `lcluster upgrade` binds CONTROL.PID while the old master still
    -- owns CONTROL, and renames it over CONTROL once ready (_upgrade.lua).
    local upgrading = api.noUpgrade == nil and require('_upgrade').inherit()
    local bindPath = upgrading and (path .. '.' .. process.pid) or path
    local function bind()
      -- The socket file is created 0600: no other user may connect, even for an instant.
      local old = ffi.C.umask(63 + 64) -- 0177
      srv:once('error', function(e)
        ffi.C.umask(old)
        done(fmtError(e) .. ' (control socket ' .. path .. ')')
      end)
      srv:listen({ path = bindPath }, function()
        ffi.C.umask(old)
        ffi.C.chmod(bindPath, 384) -- 0600, whatever the umask was
        self.boundPath = bindPath
        self.server = srv
        srv:on('error', function() end)
        done()
      end)
    end
    if upgrading then
      self.path = bindPath
      ffi.C.unlink(bindPath)
      require('_upgrade').adopt(self, path, bindPath)
      return bind()
    end
    -- A socket file already there: a live master answers (refuse to start twice); a dead
    -- one's file refuses the connection (unlink it and take the name).
    local probe = net.connect({ path = path })
    probe:on('connect', function()
      probe:destroy()
      done(('EADDRINUSE: a master named %s is already running (control socket %s; '
        .. '--name gives this one another)'):format(api.name, path))
    end)
    probe:on('error', function(e)
      if e.code == 'ECONNREFUSED' or e.code == 'ENOTSOCK' then
        ffi.C.unlink(path)
      elseif e.code ~= 'ENOENT' then
        return done(fmtError(e) .. ' (control socket ' .. path .. ')')
      end
      bind()
    end)
  end

  startMetrics(function(err)
    if err then
      return cb(err)
    end
    listenSocket(cb)
  end)

  -- The master stops listening as it stops (the control socket stays for stop waiters).
  function self.markStarted()
    self.started = true
  end
  function self.reloaded()
    self.reloads = self.reloads + 1
  end
  function self.close()
    if self.metricsServer then
      self.metricsServer:close()
      self.metricsServer = nil
    end
  end
  return self
end

-- cluster.listenControl([opts] [, fn(err)]) for script masters: the same control socket and
-- --metrics endpoints over the script's own workers. opts: name (default the script's base
-- name), control (socket path), metrics ('[host:]port'), logs (true, or {file=, format=}:
-- tag worker output as under -w; workers forked before the call keep their output as is).
-- reload is cluster.reload; stop disconnects every worker, then exits; scale needs -w.
function M.listen(cluster, opts, fn)
  if type(opts) == 'function' then
    opts, fn = nil, opts
  end
  opts = opts or {}
  if type(opts) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: listenControl options must be a table', 3)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: listenControl callback must be a function', 3)
  end
  if opts.name ~= nil and (type(opts.name) ~= 'string' or not opts.name:match('^[%w._-]+$')) then
    error('ERR_INVALID_ARG_VALUE: listenControl name takes letters, digits, ".", "_" and "-"', 3)
  end
  if M.current then
    error('ERR_INVALID_STATE: the control socket already listens', 3)
  end
  process.env.LCLUSTER_METRICS_MS = process.env.LCLUSTER_METRICS_MS or '1000'
  if opts.logs then
    local lo = type(opts.logs) == 'table' and opts.logs or {}
    local logger = require('_logs').new({ file = lo.file, format = lo.format })
    local ok, err = logger.reopen()
    if not ok then
      error(err, 3)
    end
    cluster.setupPrimary({ silent = true })
    cluster._onSpawn = logger.attach
    if lo.file then
      process.on('SIGUSR1', logger.reopen)
    end
  end
  local stopping = false
  local startedAt = process.hrtime()
  local api = {
    cluster = cluster,
    name = opts.name or M.defaultName(process.argv[2] or 'lcluster'),
    script = process.argv[2],
    startedAt = startedAt,
    count = function()
      local k = 0
      for _ in pairs(cluster.workers) do
        k = k + 1
      end
      return k
    end,
    state = function()
      return { stopping = stopping, reloading = false }
    end,
    reload = function(cb)
      cluster.reload(cb)
    end,
    stop = function()
      if not stopping then
        stopping = true
        if cluster._stopAgent then
          cluster._stopAgent()
        end
        cluster.disconnect(function()
          process.exit(0)
        end)
      end
    end,
    scale = function(_, cb)
      cb('ENOTSUP: scale needs the built-in master (lcluster -w N)')
    end,
    replace = function(_, _, cb)
      cb('ENOTSUP: replace needs the built-in master')
    end,
    noUpgrade = true,
  }
  local self
  self = M.master(api, { control = opts.control, metrics = opts.metrics }, function(err)
    if not err then
      self.markStarted()
    end
    if fn then
      fn(err and { code = err:match('^(%u[%u_]*):') or 'EIO', message = err } or nil)
    elseif err then
      error(err, 0)
    end
  end)
  -- The reload count comes from cluster.reload's completions.
  local reload = cluster.reload
  cluster.reload = function(cb)
    reload(function(err)
      if not err then
        self.reloaded()
      end
      if cb then
        cb(err)
      end
    end)
  end
end

-- ---- the client side ----------------------------------------------------------------

local CLIENT_USAGE = [[
usage: lcluster status [NAME] [--json]
       lcluster reload [NAME]
       lcluster stop [NAME]
       lcluster scale [NAME] N|+N|-N
       lcluster upgrade [NAME]
options: --control PATH   the master's control socket (default $LCLUSTER_RUN_DIR/NAME.sock)
]]

local function fmtBytes(b)
  if b >= 1024 * 1024 * 1024 then
    return ('%.1f GB'):format(b / 1073741824)
  elseif b >= 1024 * 1024 then
    return ('%.1f MB'):format(b / 1048576)
  end
  return ('%.0f KB'):format(b / 1024)
end

local function fmtUptime(s)
  if s < 60 then
    return s .. 's'
  elseif s < 3600 then
    return math.floor(s / 60) .. 'm'
  elseif s < 86400 then
    return math.floor(s / 3600) .. 'h'
  end
  return math.floor(s / 86400) .. 'd'
end

function M.formatTable(st)
  local head = { 'proc', 'slot', 'id', 'pid', 'state', 'uptime', 'restarts', 'rss', 'cpu', 'conns', 'requests' }
  local rows = { head }
  for _, r in ipairs(st.processes) do
    rows[#rows + 1] = {
      r.proc, r.slot and tostring(r.slot) or '-', r.id and tostring(r.id) or '-', tostring(r.pid),
      r.state, fmtUptime(r.uptime or 0), r.restarts and tostring(r.restarts) or '-', fmtBytes(r.rss or 0),
      ('%.1f%%'):format(r.cpu or 0), r.connections and tostring(r.connections) or '-',
      r.requests and tostring(r.requests) or '-',
    }
  end
  local width = {}
  for _, row in ipairs(rows) do
    for i, c in ipairs(row) do
      width[i] = math.max(width[i] or 0, #c)
    end
  end
  local out = { ('%s: %s, %d/%d workers ready, %d reloads, master pid %d'):format(
    st.name, st.state, st.ready, st.workers, st.reloads, st.pid) }
  for _, row in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(row) do
      cells[i] = c .. (' '):rep(width[i] - #c)
    end
    out[#out + 1] = table.concat(cells, '  '):gsub('%s+$', '')
  end
  return table.concat(out, '\n') .. '\n'
end

-- The only master in the run folder, when the user named none.
local function onlyName()
  local dir = M.runDir()
  local p = io.popen("ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
  local names = {}
  if p then
    for l in p:lines() do
      local n = l:match('^(.*)%.sock$')
      if n then
        names[#names + 1] = n
      end
    end
    p:close()
  end
  if #names == 1 then
    return names[1]
  elseif #names == 0 then
    return nil, ('ENOENT: no lcluster master is running (nothing in %s)'):format(dir)
  end
  table.sort(names)
  return nil, ('EINVAL: several masters are running (%s): name one'):format(table.concat(names, ', '))
end

-- `lcluster status|reload|stop|scale ...`: returns the exit status.
function M.client(argv)
  local cmd = argv[1]
  local rest, json, control = {}, false, nil
  local i = 2
  while i <= #argv do
    local a = argv[i]
    if a == '--json' then
      json = true
    elseif a == '--control' then
      i = i + 1
      control = argv[i]
    elseif a:match('^%-%-control=') then
      control = a:match('^%-%-control=(.*)$')
    elseif a == '-h' or a == '--help' then
      core.write(1, CLIENT_USAGE)
      return 0
    elseif a:match('^%-%-') then
      core.write(2, 'lcluster: unknown option ' .. a .. '\n' .. CLIENT_USAGE)
      return 2
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  local name, req
  if cmd == 'scale' then
    if #rest == 1 then
      req = { cmd = 'scale', n = rest[1] }
    elseif #rest == 2 then
      name, req = rest[1], { cmd = 'scale', n = rest[2] }
    else
      core.write(2, 'lcluster: scale needs N, +N or -N\n' .. CLIENT_USAGE)
      return 2
    end
  else
    if #rest > 1 then
      core.write(2, 'lcluster: too many arguments\n' .. CLIENT_USAGE)
      return 2
    end
    name, req = rest[1], { cmd = cmd }
  end
  local path = control
  if not path then
    if not name then
      local err
      name, err = onlyName()
      if not name then
        core.write(2, 'lcluster: ' .. err .. '\n')
        return 1
      end
    end
    path = M.socketPath(name)
  end
  name = name or path

  local status = 1
  local net = require('net')
  local sock = net.connect({ path = path })
  local buf, finished = '', false
  local function done(code)
    if not finished then
      finished = true
      status = code
      sock:destroy()
    end
  end
  local upgraded -- the ok reply of an upgrade
  local function onReply(r)
    if r.event == 'exit' and upgraded then
      if r.code == 0 then
        core.write(1, ('%s: the old master (pid %d) exited\n'):format(name, upgraded.old))
        return done(0)
      end
      core.write(2, ('lcluster: %s: the old master (pid %d) exited with status %s\n'):format(
        name, upgraded.old, tostring(r.code)))
      return done(1)
    elseif r.event == 'exit' then
      if r.code == 0 then
        core.write(1, ('%s: stopped\n'):format(name))
        return done(0)
      end
      core.write(2, ('lcluster: %s: the master exited with status %s\n'):format(name, tostring(r.code)))
      return done(1)
    end
    if not r.ok then
      core.write(2, ('lcluster: %s: %s\n'):format(name, tostring(r.error)))
      return done(1)
    end
    if cmd == 'status' then
      core.write(1, json and (cjson.encode(r.status) .. '\n') or M.formatTable(r.status))
      return done(0)
    elseif cmd == 'reload' then
      core.write(1, ('%s: reload complete\n'):format(name))
      return done(0)
    elseif cmd == 'scale' then
      core.write(1, ('%s: %d -> %d workers\n'):format(name, r.from, r.workers))
      return done(0)
    elseif cmd == 'upgrade' then
      upgraded = r
      core.write(1, ('%s: upgraded: master pid %d (was %d, draining)\n'):format(name, r.pid, r.old))
      -- then wait for the old master's exit, as stop does
    elseif cmd == 'stop' then
      core.write(1, ('%s: stopping (master pid %d)\n'):format(name, r.pid))
      -- then wait for the exit event, or EOF when the master has gone
    else
      return done(0)
    end
  end
  sock:on('connect', function()
    sock:write(cjson.encode(req) .. '\n')
  end)
  -- status answers at once from a live master; one that does not (stopped with SIGSTOP,
  -- wedged) is reported rather than waited for. reload, stop and scale wait as long as
  -- the master works on them.
  if cmd == 'status' then
    local t = setTimeout(function()
      if not finished then
        core.write(2, ('lcluster: %s: ETIMEDOUT: the master did not answer within 10 s\n'):format(name))
        done(1)
      end
    end, 10000)
    t:unref()
  end
  sock:on('data', function(d)
    buf = eachLine(buf .. d, function(line)
      local ok, r = pcall(cjson.decode, line)
      if ok and type(r) == 'table' then
        onReply(r)
      end
    end, function()
      return finished
    end)
  end)
  sock:on('error', function(e)
    if finished then
      return
    end
    if e.code == 'ENOENT' or e.code == 'ECONNREFUSED' then
      core.write(2, ('lcluster: no master named %s is running (%s: %s)\n'):format(name, e.code, path))
    else
      core.write(2, ('lcluster: %s: %s\n'):format(name, fmtError(e)))
    end
    done(1)
  end)
  sock:on('close', function()
    if not finished then
      if upgraded then
        return done(0)
      elseif cmd == 'stop' then
        -- The master went away without a word (killed?): it is stopped all the same.
        core.write(1, ('%s: stopped\n'):format(name))
        return done(0)
      end
      core.write(2, ('lcluster: %s: the master closed the connection\n'):format(name))
      done(1)
    end
  end)
  core.run('default')
  return status
end

return M
