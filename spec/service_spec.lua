-- Service managers (docs/api.md "Service managers"): systemd Type=notify through a datagram
-- socket the spec binds, socket activation through Debian's systemd-socket-activate, a
-- restart that keeps the listening socket, --drain-delay with GET /health, and three hosts
-- behind a real HAProxy during a rolling restart. Real processes and sockets throughout.
local lctest = require('lctest')
local core = require('_core')

local FIX = 'spec/fixtures/'
local SSA = '/usr/bin/systemd-socket-activate'

local function have(cmd)
  return os.execute('command -v ' .. cmd .. ' >/dev/null 2>&1') == 0
end

-- One GET; returns a result table filled in when it completes: {done, status, body, err}.
local function get(port, path, host)
  return lctest.get(port, path, { host = host, headers = { Connection = 'close' } })
end

local function getSync(port, path, host, ms)
  return lctest.getSync(port, path, { host = host, headers = { Connection = 'close' }, ms = ms })
end

-- Runs the loop until cond() holds, waking every 20 ms: for conditions on things outside the
-- loop (the notification socket, /proc) that no event announces.
local poll = lctest.poll

-- A NOTIFY_SOCKET receiver: a datagram socket bound at path ('@name': abstract namespace).
local function receiver(path)
  local fd = assert(core.sd_recv_bind(path))
  local r = { path = path, msgs = {} }
  function r.read()
    while fd do
      local m = core.sd_recv(fd)
      if not m then
        break
      end
      r.msgs[#r.msgs + 1] = m
    end
    return r.msgs
  end
  -- Index of the first message at or after `from` that contains `text`, waiting for it.
  function r.find(text, from, ms)
    return poll(function()
      for i = from or 1, #r.read() do
        if r.msgs[i]:find(text, 1, true) then
          return i
        end
      end
    end, ms or 5000, 'a notification with ' .. text .. ' (got: ' .. table.concat(r.msgs, ' / ') .. ')')
  end
  function r.close()
    if fd then
      core.ipc_closefd(fd)
      fd = nil
    end
    if path:sub(1, 1) ~= '@' then
      os.remove(path)
    end
  end
  return r
end

-- Requests one after another on `loops` concurrent loops, each on a new connection, until
-- stop(): counts answers and failures (an error or a status other than 200) and who served.
local function loadLoop(port, host, loops)
  return require('spec.helpers.load_loop')(loops or 4, function(i)
    return get(port, i % 2 == 0 and '/slow' or '/', host)
  end, 10000, function(st, r)
    st.bodies[r.body:match('%d+') or '?'] = true
  end, { bodies = {} })
end

local function envFlags()
  -- systemd-socket-activate passes its child only the variables named with -E.
  local flags = {}
  for _, k in ipairs({ 'LCLUSTER_LUALIB', 'ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS' }) do
    if process.env[k] then
      flags[#flags + 1] = '-E'
      flags[#flags + 1] = k
    end
  end
  return flags
end

-- systemd-socket-activate listening on `listen` (a list of addresses), running cmd.
local function activate(listen, ssaFlags, cmd)
  local flags = envFlags()
  for _, f in ipairs(ssaFlags or {}) do
    flags[#flags + 1] = f
  end
  for _, l in ipairs(listen) do
    flags[#flags + 1] = '-l'
    flags[#flags + 1] = l
  end
  for _, c in ipairs(cmd) do
    flags[#flags + 1] = c
  end
  local child = lctest.spawn(nil, nil, { binary = SSA, flags = flags })
  child:waitOutput('Listening on', 5000, 'stderr')
  return child
end

describe('systemd Type=notify', function()
  local rcv
  after_each(function()
    lctest.cleanup()
    if rcv then
      rcv.close()
      rcv = nil
    end
  end)

  it('sends READY, RELOADING with MONOTONIC_USEC, READY, STOPPING, STATUS and WATCHDOG in order', function()
    local dir = lctest.tmpdir()
    rcv = receiver(dir .. '/notify.sock')
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'service_app.lua', { port }, { flags = { '-w', '2' },
      env = { NOTIFY_SOCKET = rcv.path, WATCHDOG_USEC = '200000' } })
    local ready = rcv.find('READY=1')
    assert.matches('STATUS=serving: 2/2 workers ready', rcv.msgs[ready], 1, true)
    for i = 1, ready - 1 do
      assert.no.matches('READY=1', rcv.msgs[i], 1, true)
    end
    -- Workers see none of systemd's variables (the master unset them).
    local env = getSync(port, '/env')
    assert.equal('NOTIFY_SOCKET=nil WATCHDOG_USEC=nil LISTEN_FDS=nil LISTEN_PID=nil LISTEN_FDNAMES=nil',
      env.body)
    local ping = rcv.find('WATCHDOG=1', ready + 1)
    local before = math.floor(process.hrtime() / 1000)
    app:kill('SIGHUP')
    local reloading = rcv.find('RELOADING=1', ping + 1)
    local usec = tonumber(rcv.msgs[reloading]:match('MONOTONIC_USEC=(%d+)'))
    assert.is_number(usec)
    -- The same clock as the spec's (CLOCK_MONOTONIC), read after the signal was sent.
    assert.is_true(usec >= before and usec <= math.floor(process.hrtime() / 1000))
    local again = rcv.find('READY=1', reloading + 1, 10000)
    app:waitOutput('reload complete', 10000, 'stderr')
    rcv.find('WATCHDOG=1', again + 1)
    app:kill('SIGTERM')
    assert.equal(0, (app:waitExit(10000)))
    local stopping = rcv.find('STOPPING=1', again + 1)
    assert.matches('STATUS=stopping', rcv.msgs[stopping], 1, true)
    rcv.read()
    -- Worker exits update STATUS after STOPPING: the last one has no worker left.
    assert.matches('STATUS=stopping: 0/2 workers ready', rcv.msgs[#rcv.msgs], 1, true)
    lctest.rmrf(dir)
  end)

  it('reaches an abstract-namespace NOTIFY_SOCKET (@name)', function()
    rcv = receiver('@lcluster-spec-notify-' .. process.pid)
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'service_app.lua', { port }, { flags = { '-w', '1' },
      env = { NOTIFY_SOCKET = rcv.path } })
    rcv.find('READY=1')
    app:kill('SIGTERM')
    assert.equal(0, (app:waitExit(10000)))
    rcv.find('STOPPING=1')
  end)

  it('stops the watchdog pings while every worker crash-loops, and resumes them', function()
    local dir = lctest.tmpdir()
    rcv = receiver(dir .. '/notify.sock')
    local port = lctest.freePort()
    local flag = dir .. '/broken'
    local app = lctest.spawn(FIX .. 'life_app.lua', { port, flag }, { flags = { '-w', '1' },
      env = { NOTIFY_SOCKET = rcv.path, WATCHDOG_USEC = '100000', LCLUSTER_BACKOFF_BASE = '50',
        LCLUSTER_BACKOFF_CAP = '100' } })
    local ready = rcv.find('READY=1')
    rcv.find('WATCHDOG=1', ready + 1)
    -- From now on every new worker fails at start: no worker is ready.
    lctest.writeFile(flag, '')
    for _, p in ipairs(lctest.childPids(app.pid)) do
      core.kill(p, core.signals.SIGKILL)
    end
    app:waitOutput('exited unexpectedly.-before it was ready.-before it was ready', 5000, 'stderr')
    local count = #rcv.read()
    lctest.turn(400) -- eight ping periods: none may come
    for i = count + 1, #rcv.read() do
      assert.no.matches('WATCHDOG=1', rcv.msgs[i], 1, true)
    end
    os.remove(flag)
    app:waitOutput('worker ready', 5000)
    rcv.find('WATCHDOG=1', #rcv.msgs + 1)
    app:kill('SIGTERM')
    app:waitExit(10000)
    lctest.rmrf(dir)
  end)
end)

describe('socket activation', function()
  if not have(SSA) then
    pending('systemd-socket-activate is not installed (Debian package systemd)')
    return
  end
  after_each(lctest.cleanup)

  for _, balance in ipairs({ 'rr', 'none', 'least', 'sticky' }) do
    it(('serves on the inherited socket with balance %s (no bind of its own)'):format(balance), function()
      local port = lctest.freePort()
      -- Two sockets (fds 3 and 4); the app listens on the first only.
      local app = activate({ '127.0.0.1:' .. port, '127.0.0.1:' .. lctest.freePort() }, nil,
        { lctest.binary, '-w', '2', FIX .. 'service_app.lua', port, balance })
      -- The first connection makes systemd-socket-activate start lcluster; it waits in the
      -- backlog meanwhile. Binding 127.0.0.1:port again would fail (EADDRINUSE): an answer
      -- means the workers share the inherited socket.
      local r = getSync(port, '/', nil, 10000)
      assert.equal(200, r.status)
      app:waitOutput('worker %d+ listening on 127.0.0.1:' .. port .. '.*worker %d+ listening on 127.0.0.1:' .. port)
      for _ = 1, 4 do
        assert.equal(200, getSync(port).status)
      end
      assert.no.matches('EADDRINUSE', app.stderr, 1, true)
      if balance == 'rr' then
        -- The inherited socket is close-on-exec in the master: no worker holds it.
        local function sockets(pid)
          local f = io.popen('ls -l /proc/' .. pid .. '/fd 2>/dev/null')
          local out = f:read('*a')
          f:close()
          return out
        end
        local workers = lctest.childPids(app.pid)
        assert.equal(2, #workers)
        for fd = 3, 4 do
          local inode = sockets(app.pid):match(' ' .. fd .. ' %-> socket:%[(%d+)%]')
          assert.is_string(inode)
          for _, w in ipairs(workers) do
            assert.no.matches('socket:[' .. inode .. ']', sockets(w), 1, true)
          end
        end
      end
      app:kill('SIGTERM')
      assert.equal(0, (app:waitExit(10000)))
    end)
  end

  it("takes the socket by name with listen{fdName=} and falls back from 'reuseport' to 'rr'", function()
    local port = lctest.freePort()
    local app = activate({ '127.0.0.1:' .. port }, { '--fdname=web' },
      { lctest.binary, '-w', '2', FIX .. 'service_app.lua', 0, 'reuseport', 'web' })
    assert.equal(200, getSync(port, '/', nil, 10000).status)
    app:waitOutput('worker %d+ listening on 127.0.0.1:' .. port .. '.*worker %d+ listening on 127.0.0.1:' .. port)
    app:waitOutput("balance 'reuseport' cannot share a socket inherited from systemd", 5000, 'stderr')
    app:kill('SIGTERM')
    assert.equal(0, (app:waitExit(10000)), app.stderr)
  end)

  it('fails a listen whose fdName names no inherited socket with ENOENT', function()
    local port = lctest.freePort()
    local app = activate({ '127.0.0.1:' .. port }, { '--fdname=web' },
      { lctest.binary, '-w', '1', FIX .. 'service_app.lua', 0, '-', 'api' })
    local r = get(port) -- starts the master; never answered
    app:waitOutput('ENOENT: no inherited socket named api', 10000, 'stderr')
    app:kill('SIGTERM')
    app:waitExit(10000)
    lctest.waitFor(function()
      return r.done
    end, 5000, 'the pending GET to end')
  end)

  it('shares an inherited UDP socket with the workers', function()
    local dgram = require('dgram')
    local uport = lctest.freePort()
    local app = activate({ '127.0.0.1:' .. uport }, { '-d', '--fdname=dns', '-E', 'SERVICE_UDP=dns' },
      { lctest.binary, '-w', '2', FIX .. 'service_app.lua', lctest.freePort() })
    local got
    local s = lctest.track(dgram.createSocket('udp4', function(msg)
      got = msg
    end))
    s:bind(0, '127.0.0.1')
    -- The first datagram starts lcluster and waits in the socket's queue until a worker reads.
    s:send('ping', uport, '127.0.0.1')
    local t = setInterval(function()
      if not got then
        s:send('ping', uport, '127.0.0.1')
      end
    end, 200)
    local ok, err = pcall(lctest.waitFor, function()
      return got
    end, 10000, 'a UDP answer')
    clearInterval(t)
    assert(ok, tostring(err) .. '\n' .. app.stdout .. app.stderr)
    assert.matches('^udp %d+ ping$', got)
    app:waitOutput('bound udp ' .. uport .. '.*bound udp ' .. uport)
    lctest.closeTracked()
    app:kill('SIGTERM')
    assert.equal(0, (app:waitExit(10000)), app.stderr)
  end)

  it('works for a script master, which notifies through the systemd module', function()
    local dir = lctest.tmpdir()
    local rcv = receiver(dir .. '/notify.sock')
    local port = lctest.freePort()
    local app = activate({ '127.0.0.1:' .. port }, { '-E', 'NOTIFY_SOCKET=' .. rcv.path },
      { lctest.binary, FIX .. 'service_master.lua', port })
    local ok, err = pcall(function()
      local r = getSync(port, '/env', nil, 10000)
      assert.equal(200, r.status)
      assert.matches('NOTIFY_SOCKET=nil', r.body, 1, true)
      app:waitOutput('sockets inherited: 1')
      assert.matches('STATUS=script master ready', rcv.msgs[rcv.find('READY=1')], 1, true)
      app:kill('SIGTERM')
      assert.equal(0, (app:waitExit(10000)))
      rcv.find('STOPPING=1')
    end)
    rcv.close()
    lctest.rmrf(dir)
    assert(ok, err)
  end)

  it('ignores LISTEN_FDS meant for another process (LISTEN_PID) and still hides it from workers', function()
    local port = lctest.freePort()
    -- fd 3 of this master is not a socket from systemd: taking it would be a bug.
    local app = lctest.spawn(FIX .. 'service_app.lua', { port }, { flags = { '-w', '1' },
      env = { LISTEN_FDS = '1', LISTEN_PID = '1', LISTEN_FDNAMES = 'web' } })
    app:waitOutput('worker %d+ listening on 127.0.0.1:' .. port)
    local r = getSync(port, '/env')
    assert.equal(200, r.status)
    assert.matches('LISTEN_FDS=nil LISTEN_PID=nil LISTEN_FDNAMES=nil', r.body, 1, true)
    assert.no.matches('LISTEN_FDS', app.stderr, 1, true)
    app:kill('SIGTERM')
    assert.equal(0, (app:waitExit(10000)))
  end)

  it('fails fdName with ENOTSUP outside a worker (net and dgram)', function()
    local net, dgram = require('net'), require('dgram')
    local errs = {}
    local srv = lctest.track(net.createServer())
    srv:on('error', function(e)
      errs.net = e.code
    end)
    srv:listen({ fdName = 'web' })
    local sock = lctest.track(dgram.createSocket('udp4'))
    sock:on('error', function(e)
      errs.dgram = e.code
    end)
    sock:bind({ fdName = 'dns' })
    lctest.waitFor(function()
      return errs.net and errs.dgram
    end, 2000, 'both errors')
    assert.same({ net = 'ENOTSUP', dgram = 'ENOTSUP' }, errs)
    lctest.closeTracked()
  end)

  it('restarts the master with no refused connection: the socket outlives it', function()
    local dir = lctest.tmpdir()
    local port = lctest.freePort()
    -- A stand-in for systemd's Restart=always (systemctl restart): it holds the listening
    -- socket (fd 3) and starts a new master whenever the last one exits.
    local holder = lctest.writeFile(dir .. '/holder.sh', [[
while :; do
  sh -c 'export LISTEN_PID=$$; exec "$@"' sh "$@"
  [ -e "$STOPFILE" ] && exit 0
done
]])
    local app = activate({ '127.0.0.1:' .. port }, { '--fdname=web', '-E', 'STOPFILE=' .. dir .. '/stop' },
      { '/bin/sh', holder, lctest.binary, '-w', '2', FIX .. 'service_app.lua', port })
    local ok, err = pcall(function()
      assert.equal(200, getSync(port, '/', nil, 10000).status)
      local master = poll(function()
        return lctest.childPids(app.pid)[1]
      end, 5000, 'the first master')
      local load = loadLoop(port)
      lctest.waitFor(function()
        return load.ok >= 20
      end, 10000, 'answers before the restart')
      core.kill(master, core.signals.SIGTERM)
      local second = poll(function()
        local p = lctest.childPids(app.pid)[1]
        return p ~= master and p
      end, 10000, 'the second master')
      local served = load.ok
      lctest.waitFor(function()
        return load.ok >= served + 20 and not lctest.isAlive(master)
      end, 10000, 'answers from the second master')
      load.stop()
      assert.same({}, load.errors)
      assert.equal(0, load.failed)
      lctest.writeFile(dir .. '/stop', '')
      core.kill(second, core.signals.SIGTERM)
      assert.equal(0, (app:waitExit(10000)))
    end)
    if not ok then
      for _, p in ipairs(lctest.childPids(app.pid)) do
        core.kill(p, core.signals.SIGKILL)
      end
    end
    lctest.rmrf(dir)
    assert(ok, err)
  end)
end)

describe('--drain-delay and GET /health', function()
  after_each(lctest.cleanup)

  it('needs --workers', function()
    local app = lctest.spawn(FIX .. 'service_app.lua', { 0 }, { flags = { '--drain-delay', '100' } })
    assert.equal(2, (app:waitExit()))
    assert.matches('--drain-delay needs --workers', app.stderr, 1, true)
  end)

  it('answers 503 on /health as soon as a graceful stop begins while the workers keep serving', function()
    local port, hport = lctest.freePort(), lctest.freePort()
    local app = lctest.spawn(FIX .. 'service_app.lua', { port }, {
      flags = { '-w', '2', '--drain-delay', '1500', '--metrics', '127.0.0.1:' .. hport } })
    poll(function()
      local r = getSync(hport, '/health')
      return r.status == 200
    end, 10000, '/health to answer 200')
    app:kill('SIGTERM')
    app:waitOutput('draining for 1500 ms', 5000, 'stderr')
    assert.equal(503, getSync(hport, '/health').status)
    -- Announced, not stopped: the workers still answer.
    assert.equal(200, getSync(port).status)
    assert.equal(0, (app:waitExit(10000)))
    assert.matches('draining for 1500 ms.*stopping 2 workers gracefully', app.stderr)
  end)
end)

-- Three lcluster hosts on 127.0.0.2-4 behind a balancer started by startLb(dir, hosts, port,
-- hport, fport) -> child; a client loop through the balancer while each host is restarted
-- in turn (SIGTERM, wait for its exit, start it again, wait until it serves again). Returns
-- the loop's counts.
local function threeHosts(dir, drainDelay, startLb)
  local port, hport, fport = lctest.freePort(), lctest.freePort(), lctest.freePort()
  local t = { hosts = { '127.0.0.2', '127.0.0.3', '127.0.0.4' }, apps = {} }
  function t.start(host)
    return lctest.spawn(FIX .. 'service_app.lua', { port }, {
      flags = { '-w', '2', '--name', host, '--drain-delay', drainDelay, '--metrics', host .. ':' .. hport },
      env = { SERVICE_HOST = host } })
  end
  for i, h in ipairs(t.hosts) do
    t.apps[i] = t.start(h)
  end
  for _, h in ipairs(t.hosts) do
    poll(function()
      return getSync(hport, '/health', h).status == 200
    end, 10000, h .. ' to be ready')
  end
  t.lb = startLb(dir, t.hosts, port, hport, fport)
  poll(function()
    return getSync(fport).status == 200
  end, 10000, 'the balancer to answer')
  -- A host serves when an answer names one of its workers.
  function t.servedBy(app)
    for _, p in ipairs(lctest.childPids(app.pid)) do
      if t.load.bodies[tostring(p)] then
        return true
      end
    end
  end
  t.load = loadLoop(fport)
  for i = 1, 3 do
    lctest.waitFor(function()
      return t.servedBy(t.apps[i])
    end, 10000, 'host ' .. t.hosts[i] .. ' to serve')
  end
  function t.finish()
    t.load.stop()
    t.lb:kill('SIGTERM')
    t.lb:waitExit(5000)
    return t.load
  end
  return t
end

local function rollingRestart(dir, drainDelay, startLb)
  local t = threeHosts(dir, drainDelay, startLb)
  for i, h in ipairs(t.hosts) do
    t.apps[i]:kill('SIGTERM')
    assert.equal(0, (t.apps[i]:waitExit(10000)))
    t.load.bodies = {}
    t.apps[i] = t.start(h)
    lctest.waitFor(function()
      return t.servedBy(t.apps[i])
    end, 10000, 'the restarted host ' .. h .. ' to serve')
  end
  return t.finish()
end

-- The HAProxy configuration of the specs: checks every 200 ms, a host is down after one
-- failed check. extra: more lines for the defaults section.
local function haproxy(extra)
  return function(d, hosts, port, hport, fport)
    local cfg = {
      'global', '  maxconn 256',
      'defaults', '  mode http', '  timeout connect 2s', '  timeout client 10s',
      '  timeout server 10s', '  timeout check 500ms', extra,
      'frontend fe', '  bind 127.0.0.1:' .. fport, '  default_backend be',
      'backend be', '  balance roundrobin', '  option httpchk GET /health',
      '  default-server inter 200ms fall 1 rise 1',
    }
    for i, h in ipairs(hosts) do
      cfg[#cfg + 1] = ('  server h%d %s:%d check port %d'):format(i, h, port, hport)
    end
    lctest.writeFile(d .. '/haproxy.cfg', table.concat(cfg, '\n') .. '\n')
    return lctest.spawn(nil, nil, { binary = 'haproxy', flags = { '-db', '-f', d .. '/haproxy.cfg' } })
  end
end

-- LCLUSTER_SPEC_DRAIN overrides the drain delay (0 shows what the drain is for).
local DRAIN = tonumber(process.env.LCLUSTER_SPEC_DRAIN or '') or 1000

describe('three hosts behind a load balancer', function()
  local dir
  after_each(function()
    lctest.cleanup()
    lctest.rmrf(dir)
  end)

  it('HAProxy (httpchk GET /health): no failed request in a rolling restart with --drain-delay', function()
    if not have('haproxy') then
      pending('haproxy is not installed (deps/install.sh installs it)')
      return
    end
    dir = lctest.tmpdir()
    -- No retries and no redispatch: a request sent to a host that refuses fails, so only the
    -- drain (the check sees 503 before the workers stop accepting) keeps the count at 0.
    local load = rollingRestart(dir, DRAIN, haproxy('  retries 0'))
    assert.same({}, load.errors)
    assert.equal(0, load.failed)
    assert.is_true(load.ok > 0)
  end)

  it('HAProxy: a host killed outright costs at most the requests it had in flight', function()
    if not have('haproxy') then
      pending('haproxy is not installed (deps/install.sh installs it)')
      return
    end
    dir = lctest.tmpdir()
    -- deploy/haproxy.cfg's answer to a lost host: retry a failed connection elsewhere.
    local t = threeHosts(dir, DRAIN, haproxy('  retries 2\n  option redispatch'))
    local victim = t.apps[2]
    local workers = lctest.childPids(victim.pid)
    local before = t.load.ok
    victim:kill('SIGKILL')
    for _, p in ipairs(workers) do
      core.kill(p, core.signals.SIGKILL)
    end
    victim:waitExit(5000)
    lctest.waitFor(function()
      return t.load.ok >= before + 30
    end, 10000, 'answers from the two other hosts')
    local load = t.finish()
    -- The loop has 4 requests in flight at any time: nothing else may fail.
    assert.is_true(load.failed <= 4, ('%d failed: %s'):format(load.failed, table.concat(load.errors, ', ')))
  end)

  it('nginx (max_fails, proxy_next_upstream): no failed GET in the same rolling restart', function()
    if not have('nginx') then
      pending('nginx is not installed (deps/install.sh installs nginx-light)')
      return
    end
    dir = lctest.tmpdir()
    local load = rollingRestart(dir, DRAIN, function(d, hosts, port, _, fport)
      local up = {}
      for _, h in ipairs(hosts) do
        up[#up + 1] = ('    server %s:%d max_fails=1 fail_timeout=2s;'):format(h, port)
      end
      local temp = ''
      for _, t in ipairs({ 'client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi' }) do
        temp = temp .. ('  %s_temp_path %s/%s;\n'):format(t, d, t)
      end
      lctest.writeFile(d .. '/nginx.conf', table.concat({
        'daemon off;', 'worker_processes 1;', 'pid ' .. d .. '/nginx.pid;',
        'error_log ' .. d .. '/error.log;', 'events { worker_connections 256; }',
        'http {', '  access_log off;', temp,
        '  upstream app {', table.concat(up, '\n'), '    keepalive 16;', '  }',
        '  server {', '    listen 127.0.0.1:' .. fport .. ';', '    location / {',
        '      proxy_pass http://app;', '      proxy_http_version 1.1;',
        '      proxy_set_header Connection "";',
        '      proxy_next_upstream error timeout http_502 http_503 http_504;',
        '    }', '  }', '}',
      }, '\n') .. '\n')
      return lctest.spawn(nil, nil, { binary = 'nginx', flags = { '-p', d .. '/', '-c', d .. '/nginx.conf' } })
    end)
    assert.same({}, load.errors)
    assert.equal(0, load.failed)
    assert.is_true(load.ok > 0)
  end)
end)
