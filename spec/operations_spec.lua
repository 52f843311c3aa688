-- Operations (docs/api.md): the control socket and `lcluster status|reload|stop|scale`,
-- GET /metrics /status /health, tagged worker logs (--log, --log-format, reopen on SIGUSR1)
-- and --max-memory. Each case runs a real `lcluster -w` master in its own run folder.
local lctest = require('lctest')
local net = require('net')
local cjson = require('cjson')

local FIX = 'spec/fixtures/'

local getSync = lctest.getSync

-- waitFor on a condition no event of this process signals (a file's content).
local poll = lctest.poll

local function shell(cmd)
  local p = io.popen(cmd)
  local out = p:read('*a')
  p:close()
  return (out:gsub('%s+$', ''))
end

-- A cluster of ops_app.lua in a fresh run folder. extra: more flags; env: more variables.
local function start(n, extra, env)
  local dir = lctest.tmpdir()
  local port = lctest.freePort()
  local flags = { '-w', tostring(n) }
  for _, f in ipairs(extra or {}) do
    flags[#flags + 1] = f
  end
  local e = { LCLUSTER_RUN_DIR = dir .. '/run', LCLUSTER_METRICS_MS = '100', LCLUSTER_SAMPLE_MS = '100' }
  for k, v in pairs(env or {}) do
    e[k] = v
  end
  local app = lctest.spawn(FIX .. 'ops_app.lua', { port }, { flags = flags, env = e })
  return { app = app, dir = dir, run = dir .. '/run', port = port, env = e }
end

local function readyCount(app)
  local k = 0
  for _ in app.stdout:gmatch('worker ready pid') do
    k = k + 1
  end
  return k
end

local function waitReady(c, n)
  lctest.waitFor(function()
    return readyCount(c.app) >= n
  end, 8000, n .. ' workers ready')
end

-- Runs `lcluster ARGS...` (a control command) to its end: code, stdout, stderr.
local function ctl(c, args, ms)
  local child = lctest.spawn(nil, nil, { flags = args, env = { LCLUSTER_RUN_DIR = c.run } })
  local code = child:waitExit(ms or 10000)
  return code, child.stdout, child.stderr
end

-- Starts a control command without waiting for it.
local function ctlAsync(c, args)
  return lctest.spawn(nil, nil, { flags = args, env = { LCLUSTER_RUN_DIR = c.run } })
end

local function statusJson(c)
  local code, out, err = ctl(c, { 'status', '--json' })
  assert.are.equal(0, code, err)
  return cjson.decode(out)
end

local function workerRows(st)
  local rows = {}
  for _, r in ipairs(st.processes) do
    if r.proc:match('^w%d') then
      rows[#rows + 1] = r
    end
  end
  return rows
end

local function finish(c)
  if not c.app.exited then
    c.app:kill('SIGTERM')
    c.app:waitExit(10000)
  end
  lctest.rmrf(c.dir)
end

-- A small parser of the Prometheus text exposition format: a list of samples
-- {name=, labels={}, value=} plus the TYPE of each family. Raises on a malformed line.
local function parseProm(text)
  local samples, types = {}, {}
  for line in text:gmatch('([^\n]*)\n') do
    if line:match('^#') then
      local name, typ = line:match('^# TYPE ([%a_:][%w_:]*) (%a+)$')
      if name then
        types[name] = typ
      else
        assert(line:match('^# HELP [%a_:][%w_:]* .*$'), 'bad comment line: ' .. line)
      end
    elseif line ~= '' then
      local name, rest = line:match('^([%a_:][%w_:]*)(.*)$')
      assert(name, 'bad sample line: ' .. line)
      local labels = {}
      if rest:sub(1, 1) == '{' then
        local body, after = rest:match('^{(.-)}(.*)$')
        assert(body, 'bad labels: ' .. line)
        for k, v in body:gmatch('([%a_][%w_]*)="(.-)",?') do
          labels[k] = v
        end
        rest = after
      end
      local value = rest:match('^ (%S+)$')
      assert(value, 'bad value: ' .. line)
      local num = tonumber(value) or (value == '+Inf' and math.huge) or (value == '-Inf' and -math.huge)
        or (value == 'NaN' and 0 / 0)
      assert(num, 'bad number: ' .. line)
      samples[#samples + 1] = { name = name, labels = labels, value = num }
    end
  end
  return samples, types
end

local function sum(samples, name)
  local s = 0
  for _, x in ipairs(samples) do
    if x.name == name then
      s = s + x.value
    end
  end
  return s
end

describe('operations: control socket and commands', function()
  after_each(lctest.cleanup)

  it('status lists every process; the socket is 0600 in a 0700 folder', function()
    local c = start(2)
    waitReady(c, 2)
    local sock = c.run .. '/ops_app.sock'
    assert.are.equal('700', shell("stat -c %a '" .. c.run .. "'"))
    assert.are.equal('600', shell("stat -c %a '" .. sock .. "'"))
    assert.are.equal('socket', shell("stat -c %F '" .. sock .. "'"))
    assert.are.equal(200, getSync(c.port, '/').status)
    local code, out = ctl(c, { 'status' })
    assert.are.equal(0, code)
    assert.matches('ops_app: serving, 2/2 workers ready', out, 1, true)
    assert.matches('proc +slot +id +pid +state +uptime +restarts +rss +cpu +conns +requests', out)
    assert.matches('\nw1 +1 +%d+ +%d+ +online', out)
    assert.matches('\nw2 +2 +%d+ +%d+ +online', out)
    local st = statusJson(c)
    assert.are.equal('ops_app', st.name)
    assert.are.equal(c.app.pid, st.pid)
    local rows = workerRows(st)
    assert.are.equal(2, #rows)
    for _, r in ipairs(rows) do
      assert.is_true(r.rss > 0, cjson.encode(r))
      assert.are.equal('online', r.state)
      assert.are.equal(0, r.restarts)
    end
    -- --control names the socket on both sides.
    code, out = ctl(c, { 'status', '--control', sock, '--json' })
    assert.are.equal(0, code)
    assert.are.equal(c.app.pid, cjson.decode(out).pid)
    finish(c)
  end)

  it('reload waits for the rolling reload and reports it; stop waits for the exit', function()
    local c = start(2)
    waitReady(c, 2)
    local before = {}
    for _, r in ipairs(workerRows(statusJson(c))) do
      before[r.pid] = true
    end
    local code, out = ctl(c, { 'reload', 'ops_app' })
    assert.are.equal(0, code)
    assert.matches('reload complete', out, 1, true)
    local st = statusJson(c)
    assert.are.equal(1, st.reloads)
    for _, r in ipairs(workerRows(st)) do
      assert.is_nil(before[r.pid])
    end
    code, out = ctl(c, { 'stop' })
    assert.are.equal(0, code)
    assert.matches('stopped', out, 1, true)
    assert.is_true(c.app.exited or c.app:waitExit(5000) == 0)
    assert.are.equal(0, c.app.code)
    -- The socket is gone with its master; commands now say so.
    assert.are.equal('', shell("ls '" .. c.run .. "'"))
    local _, err
    code, _, err = ctl(c, { 'status', 'ops_app' })
    assert.are.equal(1, code)
    assert.matches('no master named ops_app is running', err, 1, true)
    finish(c)
  end)

  it('reload exits 1 when the reload was aborted, and the old workers keep serving', function()
    local dir = lctest.tmpdir()
    local c = { run = dir .. '/run' }
    local port = lctest.freePort()
    local flag = dir .. '/broken'
    local app = lctest.spawn(FIX .. 'life_app.lua', { port, flag }, { flags = { '-w', '2' },
      env = { LCLUSTER_RUN_DIR = c.run } })
    lctest.waitFor(function()
      return readyCount(app) >= 2
    end, 8000, '2 workers ready')
    lctest.writeFile(flag, 'broken')
    local code, _, err = ctl(c, { 'reload', 'life_app' })
    assert.are.equal(1, code)
    assert.matches('ERELOAD: exited before it was ready', err, 1, true)
    assert.are.equal(0, statusJson(c).reloads)
    assert.are.equal(200, getSync(port, '/').status)
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(10000))
    lctest.rmrf(dir)
  end)

  it('status during a reload shows the old and the new worker of the slot', function()
    -- The new worker is not ready until the spec says so (OPS_READY_FILE), so the reload is
    -- still running when status asks (a 1 s start delay was missed by a slow status).
    local ready = lctest.tmpdir() .. '/ready'
    lctest.writeFile(ready, '')
    local c = start(1, nil, { OPS_READY_FILE = ready })
    waitReady(c, 1)
    os.remove(ready)
    local slow = ctlAsync(c, { 'reload' })
    local st
    lctest.waitFor(function()
      st = statusJson(c)
      return #workerRows(st) == 2
    end, 5000, 'two processes in slot 1')
    lctest.writeFile(ready, '')
    assert.are.equal('reloading', st.state)
    local rows = workerRows(st)
    assert.are.equal(1, rows[1].slot)
    assert.are.equal(1, rows[2].slot)
    assert.are_not.equal(rows[1].pid, rows[2].pid)
    assert.are.equal(0, slow:waitExit(10000))
    finish(c)
    lctest.rmrf(ready:match('^(.*)/ready$'))
  end)

  it('scale changes the worker count live: up, down with draining, relative', function()
    local c = start(1)
    waitReady(c, 1)
    local code, out = ctl(c, { 'scale', '3' })
    assert.are.equal(0, code)
    assert.matches('1 -> 3 workers', out, 1, true)
    local st = statusJson(c)
    assert.are.equal(3, st.workers)
    assert.are.equal(3, #workerRows(st))
    assert.are.equal(3, #lctest.childPids(c.app.pid))
    code = ctl(c, { 'scale', 'ops_app', '-2' })
    assert.are.equal(0, code)
    st = statusJson(c)
    assert.are.equal(1, st.workers)
    assert.are.equal(1, #workerRows(st))
    assert.are.equal(1, workerRows(st)[1].slot)
    -- The removed workers drained and exited (no respawn).
    c.app:waitOutput('worker %d+ %(pid %d+, slot 3%) exited with code 0', 5000, 'stderr')
    assert.are.equal(200, getSync(c.port, '/').status)
    code = ctl(c, { 'scale', '+1' })
    assert.are.equal(0, code)
    assert.are.equal(2, statusJson(c).workers)
    local _, err
    code, _, err = ctl(c, { 'scale', 'lots' })
    assert.are.equal(1, code)
    assert.matches('ERR_INVALID_ARG_VALUE', err, 1, true)
    finish(c)
  end)

  it('refuses a second master with the same name and replaces a stale socket', function()
    local c = start(1)
    waitReady(c, 1)
    local dup = lctest.spawn(FIX .. 'ops_app.lua', { lctest.freePort() }, { flags = { '-w', '1' },
      env = c.env })
    assert.are.equal(1, dup:waitExit(5000))
    assert.matches('EADDRINUSE: a master named ops_app is already running', dup.stderr, 1, true)
    assert.are.equal('', dup.stdout)
    assert.are.equal(0, ctl(c, { 'status' }))
    -- A master killed outright leaves its socket file behind.
    c.app:kill('SIGKILL')
    c.app:waitExit(5000)
    assert.are.equal('socket', shell("stat -c %F '" .. c.run .. "/ops_app.sock'"))
    local port2 = lctest.freePort()
    local again = lctest.spawn(FIX .. 'ops_app.lua', { port2 }, { flags = { '-w', '1' }, env = c.env })
    again:waitOutput('worker ready pid', 8000)
    local code, out = ctl(c, { 'status', '--json' })
    assert.are.equal(0, code)
    assert.are.equal(again.pid, cjson.decode(out).pid)
    again:kill('SIGTERM')
    assert.are.equal(0, again:waitExit(10000))
    lctest.rmrf(c.dir)
  end)

  it('--control PATH puts the socket there, on both sides', function()
    local dir = lctest.tmpdir()
    local sock = dir .. '/private/custom.sock'
    local c = start(1, { '--control', sock, '--name', 'custom' })
    waitReady(c, 1)
    assert.are.equal('600', shell("stat -c %a '" .. sock .. "'"))
    assert.are.equal('700', shell("stat -c %a '" .. dir .. "/private'"))
    assert.are.equal('', shell("ls '" .. c.run .. "' 2>/dev/null"))
    local code, out = ctl(c, { 'status', '--control', sock, '--json' })
    assert.are.equal(0, code)
    local st = cjson.decode(out)
    assert.are.equal('custom', st.name)
    assert.are.equal(c.app.pid, st.pid)
    code, out = ctl(c, { 'stop', '--control=' .. sock })
    assert.are.equal(0, code, out)
    assert.are.equal(0, c.app:waitExit(5000))
    finish(c)
    lctest.rmrf(dir)
  end)

  it('answers a malformed request with an error and keeps serving', function()
    local c = start(1)
    waitReady(c, 1)
    local replies = ''
    local s = lctest.track(net.connect({ path = c.run .. '/ops_app.sock' }))
    s:on('data', function(d)
      replies = replies .. d
    end)
    s:write('this is not json\n{"cmd":"launch"}\n[1,2]\n{"cmd":"scale","n":-5}\n{"cmd":"status"}\n')
    lctest.waitFor(function()
      local k = 0
      for _ in replies:gmatch('\n') do
        k = k + 1
      end
      return k >= 5
    end, 5000, 'five replies')
    local lines = {}
    for l in replies:gmatch('([^\n]*)\n') do
      lines[#lines + 1] = cjson.decode(l)
    end
    assert.matches('^EPROTO', lines[1].error)
    assert.matches('^ENOTSUP', lines[2].error)
    assert.matches('^EPROTO', lines[3].error)
    assert.matches('^ERR_INVALID_ARG_VALUE', lines[4].error)
    assert.is_true(lines[5].ok)
    s:destroy()
    -- A line too long for a request: an error and the connection is closed.
    local s2 = lctest.track(net.connect({ path = c.run .. '/ops_app.sock' }))
    local r2, closed = '', false
    s2:on('data', function(d)
      r2 = r2 .. d
    end)
    s2:on('close', function()
      closed = true
    end)
    s2:write(('y'):rep(100 * 1024))
    lctest.waitFor(function()
      return closed
    end, 5000, 'the long request to be refused')
    assert.matches('E2BIG', r2, 1, true)
    assert.are.equal(0, ctl(c, { 'status' }))
    assert.are.equal(200, getSync(c.port, '/').status)
    finish(c)
    lctest.closeTracked()
  end)
end)

describe('operations: script masters', function()
  after_each(lctest.cleanup)

  it('cluster.listenControl gives a script master the socket, /metrics and tagged logs', function()
    local dir = lctest.tmpdir()
    local c = { run = dir .. '/run' }
    local port, mport = lctest.freePort(), lctest.freePort()
    local app = lctest.spawn(FIX .. 'ops_script_master.lua', { port, mport },
      { env = { LCLUSTER_RUN_DIR = c.run, LCLUSTER_METRICS_MS = '100' } })
    lctest.waitFor(function()
      local k = 0
      for _ in app.stdout:gmatch('%[w%d+ %d+%] worker listening') do
        k = k + 1
      end
      return k == 2
    end, 8000, 'two tagged workers listening')
    assert.matches('control ready', app.stdout, 1, true)
    assert.are.equal('600', shell("stat -c %a '" .. c.run .. "/scriptops.sock'"))
    local st = statusJson(c)
    assert.are.equal('scriptops', st.name)
    assert.are.equal(2, #workerRows(st))
    assert.are.equal(200, getSync(port, '/').status)
    lctest.waitFor(function()
      return getSync(mport, '/health').status == 200
    end, 5000, '/health 200')
    local code, out = ctl(c, { 'reload', 'scriptops' })
    assert.are.equal(0, code, out)
    assert.are.equal(1, statusJson(c).reloads)
    local _, err
    code, _, err = ctl(c, { 'scale', '3' })
    assert.are.equal(1, code)
    assert.matches('ENOTSUP', err, 1, true)
    code = ctl(c, { 'stop' })
    assert.are.equal(0, code)
    assert.are.equal(0, app:waitExit(5000))
    lctest.rmrf(dir)
  end)

  it('leaves a script master that does not opt in as it was', function()
    local dir = lctest.tmpdir()
    local script = lctest.writeFile(dir .. '/plain.lua', [[
local cluster = require('cluster')
if cluster.isMaster then
  cluster.fork()
else
  print('plain line from ' .. process.pid)
  process.exit(0)
end
]])
    local app = lctest.spawn(script, {}, { env = { LCLUSTER_RUN_DIR = dir .. '/run' } })
    assert.are.equal(0, app:waitExit(5000))
    assert.matches('^plain line from %d+\n$', app.stdout)
    -- and it made no control socket
    assert.are.equal('', shell("ls '" .. dir .. "/run' 2>/dev/null"))
    lctest.rmrf(dir)
  end)
end)

describe('operations: --metrics', function()
  after_each(lctest.cleanup)

  it('serves Prometheus metrics whose counters grow with traffic, and /status', function()
    local mport = lctest.freePort()
    local c = start(2, { '--metrics', '127.0.0.1:' .. mport })
    waitReady(c, 2)
    local r = getSync(mport, '/metrics')
    assert.are.equal(200, r.status)
    local samples, types = parseProm(r.body)
    assert.are.equal('counter', types.lcluster_requests_total)
    assert.are.equal('gauge', types.lcluster_resident_memory_bytes)
    assert.are.equal('counter', types.lcluster_cpu_seconds_total)
    assert.are.equal('counter', types.lcluster_restarts_total)
    assert.are.equal('counter', types.lcluster_reloads_total)
    assert.are.equal('gauge', types.lcluster_event_loop_lag_seconds)
    for _, s in ipairs(samples) do
      assert.matches('^lcluster_', s.name)
    end
    local slots = {}
    for _, s in ipairs(samples) do
      if s.name == 'lcluster_resident_memory_bytes' then
        assert.is_true(s.value > 0, 'rss 0: ' .. cjson.encode(s))
        assert.is_truthy(tonumber(s.labels.pid))
        slots[s.labels.slot] = true
      end
    end
    assert.is_truthy(slots['1'] and slots['2'] and slots[''])
    local before = sum(samples, 'lcluster_requests_total')
    local accepted = sum(samples, 'lcluster_connections_accepted_total')
    for _ = 1, 20 do
      assert.are.equal(200, getSync(c.port, '/').status)
    end
    lctest.waitFor(function()
      samples = parseProm(getSync(mport, '/metrics').body)
      return sum(samples, 'lcluster_requests_total') >= before + 20
    end, 5000, 'requests_total to grow by 20')
    assert.is_true(sum(samples, 'lcluster_connections_accepted_total') >= accepted + 20)
    assert.is_true(sum(samples, 'lcluster_handoffs_total') >= 20)
    assert.is_true(sum(samples, 'lcluster_bytes_received_total') > 0)
    assert.is_true(sum(samples, 'lcluster_bytes_sent_total') > 0)
    assert.is_true(sum(samples, 'lcluster_ipc_messages_sent_total') > 0)
    assert.are.equal(1, sum(samples, 'lcluster_up'))
    local st = cjson.decode(getSync(mport, '/status').body)
    assert.are.equal(c.app.pid, st.pid)
    assert.are.equal(2, #workerRows(st))
    assert.are.equal(404, getSync(mport, '/nope').status)
    finish(c)
  end)

  it('/health is 503 while starting and while draining, 200 while serving', function()
    local mport = lctest.freePort()
    -- The worker is not ready until the spec says so (OPS_READY_FILE), and the stop is held
    -- open by a request until the spec ends it (a second SIGTERM stops at once): with a
    -- 1.5 s start delay and a 1.5 s kill timeout a slow machine saw /health only after
    -- either had passed.
    local ready = lctest.tmpdir() .. '/ready'
    local c = start(1, { '--metrics', tostring(mport), '--kill-timeout', '60000' },
      { OPS_READY_FILE = ready })
    local first
    lctest.waitFor(function()
      local r = getSync(mport, '/health')
      first = r.status
      return r.status
    end, 5000, 'the metrics port')
    assert.are.equal(503, first)
    lctest.writeFile(ready, '')
    waitReady(c, 1)
    lctest.waitFor(function()
      return getSync(mport, '/health').status == 200
    end, 5000, '/health 200')
    -- A request that never ends holds the graceful stop open.
    local hung = lctest.capture(net.connect(c.port, '127.0.0.1'))
    hung.socket:write('GET /hang HTTP/1.1\r\nHost: h\r\n\r\n')
    lctest.waitFor(function()
      local st = statusJson(c)
      return workerRows(st)[1].connections == 1
    end, 5000, 'the hanging request to be open')
    c.app:kill('SIGTERM')
    c.app:waitOutput('stopping 1 workers gracefully', 5000, 'stderr')
    local r = getSync(mport, '/health')
    assert.are.equal(503, r.status)
    assert.matches('stopping', r.body, 1, true)
    assert.is_false(hung.closed)
    c.app:kill('SIGTERM')
    c.app:waitExit(10000)
    lctest.waitFor(function()
      return hung.closed
    end, 5000, 'the hanging request to end')
    finish(c)
    lctest.rmrf(ready:match('^(.*)/ready$'))
  end)
end)

describe('operations: logs', function()
  after_each(lctest.cleanup)

  local function startLogs(extra, n)
    local dir = lctest.tmpdir()
    local flags = { '-w', '2' }
    for _, f in ipairs(extra or {}) do
      flags[#flags + 1] = f
    end
    local env = { LCLUSTER_RUN_DIR = dir .. '/run', OPS_MARK = dir .. '/crashed', OPS_LINES = tostring(n or 2000) }
    return lctest.spawn(FIX .. 'ops_logs.lua', {}, { flags = flags, env = env }), dir
  end

  it('delivers every line whole and tagged, from two workers, one killed mid-way', function()
    local app, dir = startLogs({ '--agent', FIX .. 'ops_agent.lua' })
    -- slot 1 once, slot 2 twice (its first run is SIGKILLed after its lines).
    app:waitOutput('%] done slot 1\n', 15000)
    app:waitOutput('%] done slot 2\n', 15000)
    app:waitOutput('exited unexpectedly with signal SIGKILL', 5000, 'stderr')
    app:kill('SIGTERM')
    app:waitExit(10000)
    local perPid, bad = {}, {}
    local killedPid, agentLine
    for line in app.stdout:gmatch('([^\n]*)\n') do
      local tag, slot, pid, msg = line:match('^(%[w(%d) (%d+)%]) (.*)$')
      if line:match('^%[agent %d+%] agent says hi$') then
        agentLine = true
      elseif not tag then
        bad[#bad + 1] = line
      else
        local p = perPid[pid] or { slot = slot, lines = 0, last = 0 }
        perPid[pid] = p
        local s, num, pad = msg:match('^slot (%d) line (%d+) (x*)$')
        if s then
          assert.are.equal(slot, s)
          assert.are.equal(300, #msg, 'a line cut or joined: ' .. line:sub(1, 80))
          assert.are.equal(p.last + 1, tonumber(num))
          assert.is_truthy(pad)
          p.last = tonumber(num)
          p.lines = p.lines + 1
        elseif msg == 'partial last line of slot 2' then
          killedPid = pid
        else
          assert.matches('^done slot %d$', msg)
        end
      end
    end
    assert.are.same({}, bad)
    assert.is_true(agentLine)
    assert.matches('%[agent %d+%] agent complains\n', app.stderr)
    assert.is_truthy(killedPid, 'the partial last line of the killed worker')
    assert.are.equal(2000, perPid[killedPid].lines)
    local full = 0
    for _, p in pairs(perPid) do
      assert.are.equal(2000, p.lines)
      full = full + 1
    end
    assert.are.equal(3, full)
    assert.matches('%[w1 %d+%] to stderr from slot 1\n', app.stderr)
    assert.matches('%[w2 ' .. killedPid .. '%] to stderr from slot 2\n', app.stderr)
    -- The killed worker's lines come before the master reports its exit.
    assert.matches('%[w2 ' .. killedPid .. '%] to stderr from slot 2\n.-%(pid ' .. killedPid
      .. ', slot 2%) exited unexpectedly', app.stderr)
    lctest.rmrf(dir)
  end)

  it('--log FILE with --log-format json, reopened on SIGUSR1 after mv', function()
    local tmp = lctest.tmpdir()
    local logFile = tmp .. '/app.log'
    local app, dir = startLogs({ '--log', logFile, '--log-format', 'json' }, 5)
    local function read(p)
      local f = io.open(p)
      if not f then
        return ''
      end
      local s = f:read('*a')
      f:close()
      return s
    end
    poll(function()
      local s = read(logFile)
      return s:find('done slot 1', 1, true) and s:find('done slot 2', 1, true)
    end, 10000, 'both workers in the log file')
    assert.are.equal('', app.stdout)
    local n = 0
    for line in read(logFile):gmatch('([^\n]*)\n') do
      local o = cjson.decode(line)
      assert.matches('^w[12]$', o.proc)
      assert.is_truthy(tonumber(o.pid))
      assert.is_truthy(o.stream == 'stdout' or o.stream == 'stderr')
      assert.matches('^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$', o.time)
      assert.is_string(o.msg)
      n = n + 1
    end
    assert.is_true(n >= 12)
    -- logrotate: mv the file, SIGUSR1, and new lines go to a new file at the old path.
    assert.is_true(os.rename(logFile, logFile .. '.1'))
    app:kill('SIGUSR1')
    app:waitOutput('reopened ' .. logFile, 5000, 'stderr')
    assert.is_false(app.exited)
    -- Kill a live worker: its replacement writes its lines into the new file. The pid comes
    -- from a 'done slot' line: the first line of the file may be from slot 2's first run,
    -- which is already dead (SIGKILLed by the fixture), and has no replacement to wait for.
    local pid
    for line in read(logFile .. '.1'):gmatch('([^\n]*)\n') do
      local o = cjson.decode(line)
      if o.msg:match('^done slot %d$') then
        pid = o.pid
      end
    end
    assert.is_truthy(pid, 'a live worker in the rotated file')
    require('_core').kill(pid, 9)
    poll(function()
      return read(logFile):find('done slot', 1, true)
    end, 10000, 'lines in the reopened file')
    app:kill('SIGTERM')
    app:waitExit(10000)
    lctest.rmrf(dir)
    lctest.rmrf(tmp)
  end)
end)

describe('operations: --max-restarts', function()
  after_each(lctest.cleanup)

  it('marks a crash-looping slot errored; exits 1 once every slot is', function()
    local dir = lctest.tmpdir()
    local c = { run = dir .. '/run' }
    local port = lctest.freePort()
    local env = { LCLUSTER_RUN_DIR = c.run, LCLUSTER_BACKOFF_BASE = '10' }
    local app = lctest.spawn(FIX .. 'ops_crash.lua', { port }, { flags = { '-w', '2', '--max-restarts', '2',
      '--restart-window', '60' }, env = env })
    app:waitOutput('slot 2 exited with code 1, 3 times within 60 s %(%-%-max%-restarts 2%): marked errored', 8000,
      'stderr')
    local st = statusJson(c)
    local states = {}
    for _, r in ipairs(workerRows(st)) do
      states[r.slot] = r.state
    end
    assert.are.same({ 'online', 'errored' }, states)
    local code, out = ctl(c, { 'status' })
    assert.are.equal(0, code)
    assert.matches('\nw2 +2 +%- +0 +errored', out)
    assert.are.equal(200, getSync(port, '/').status)
    assert.is_false(app.exited)
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(5000))
    env.OPS_CRASH_ALL = '1'
    local all = lctest.spawn(FIX .. 'ops_crash.lua', { port }, { flags = { '-w', '2', '--max-restarts', '1' },
      env = env })
    assert.are.equal(1, all:waitExit(8000))
    assert.matches('every slot is errored: exiting', all.stderr, 1, true)
    lctest.rmrf(dir)
  end)
end)

describe('operations: --max-memory', function()
  after_each(lctest.cleanup)

  it('replaces a leaking worker gracefully, with no failed request', function()
    local c = start(1, { '--max-memory', '40' })
    waitReady(c, 1)
    local first = tonumber(getSync(c.port, '/').body:match('pid (%d+)'))
    local failed = 0
    local replaced = false
    local deadline = 0
    while not replaced and deadline < 200 do
      deadline = deadline + 1
      local r = getSync(c.port, deadline % 2 == 0 and '/leak' or '/')
      if r.status ~= 200 then
        failed = failed + 1
      else
        local pid = tonumber(r.body:match('pid (%d+)'))
        replaced = pid ~= first
      end
      lctest.turn(20)
    end
    assert.is_true(replaced, 'the leaking worker was never replaced')
    assert.are.equal(0, failed)
    c.app:waitOutput('over %-%-max%-memory 40 MB: replacing it', 5000, 'stderr')
    c.app:waitOutput('worker %d+ %(pid ' .. first .. ', slot 1%) exited with code 0', 5000, 'stderr')
    finish(c)
  end)
end)
