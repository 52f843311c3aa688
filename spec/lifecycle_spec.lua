-- The built-in master (lcluster -w N): respawn with stable slots, crash-loop backoff,
-- rolling reload without failed requests, graceful stop, kill timeout, graceful exit on
-- uncaught errors. Real processes, real HTTP over loopback.
local lctest = require('lctest')

local FIX = 'spec/fixtures/'

-- One GET; returns a result table filled in when it completes: {done, status, body, err}.
local get, getSync = lctest.get, lctest.getSync

-- Requests one after another on `loops` concurrent loops (every third asks for /slow, so
-- requests are in flight whenever a worker is replaced) until stop() is called: counts
-- answers and errors.
local function loadLoop(port, loops)
  return require('spec.helpers.load_loop')(loops or 6, function(i)
    return get(port, i % 3 == 0 and '/slow' or '/')
  end, 5000)
end

-- Keep-alive clients: each sends a request, waits for the answer, sends the next on the same
-- connection, and reconnects when the server says Connection: close. A connection that
-- closes with a request outstanding is a failed request.
local function keepAliveLoop(port, conns)
  local net = require('net')
  local st = { ok = 0, failed = 0, errors = {}, running = true, live = conns }
  local function connect()
    if not st.running then
      st.live = st.live - 1
      return
    end
    local sock = net.connect(port, '127.0.0.1')
    local buf, outstanding = '', false
    local function send()
      outstanding = true
      sock:write('GET / HTTP/1.1\r\nHost: spec\r\n\r\n')
    end
    sock:on('connect', send)
    sock:on('data', function(d)
      buf = buf .. d
      while true do
        local hend = buf:find('\r\n\r\n', 1, true)
        if not hend then
          return
        end
        local head = buf:sub(1, hend):lower()
        local len = tonumber(head:match('content%-length: (%d+)')) or 0
        if #buf < hend + 3 + len then
          return
        end
        buf = buf:sub(hend + 4 + len)
        outstanding = false
        if head:match('^http/1%.1 200') then
          st.ok = st.ok + 1
        else
          st.failed = st.failed + 1
          st.errors[#st.errors + 1] = head:match('^[^\r]*')
        end
        if head:find('connection: close', 1, true) or not st.running then
          sock:finish()
          return
        end
        send()
      end
    end)
    sock:on('error', function() end)
    sock:on('close', function()
      if outstanding then
        st.failed = st.failed + 1
        st.errors[#st.errors + 1] = 'connection closed with a request outstanding'
      end
      connect()
    end)
  end
  for _ = 1, conns do
    connect()
  end
  function st.stop()
    st.running = false
    lctest.waitFor(function()
      return st.live == 0
    end, 5000, 'the keep-alive clients to stop')
  end
  return st
end

local function readyPids(app, n)
  local _, set = lctest.waitPids(app, 'worker ready pid (%d+)', n, 5000, n .. ' workers ready')
  return set
end

describe('lcluster -w', function()
  after_each(lctest.cleanup)

  it('forks N workers that share the port and answer', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '2' } })
    readyPids(app, 2)
    local seen = {}
    for _ = 1, 6 do
      local r = getSync(port, '/')
      assert.are.equal(200, r.status)
      seen[r.body:match('slot (%d+)')] = true
    end
    assert.is_truthy(seen['1'] and seen['2'])
    assert.are.equal(2, #lctest.childPids(app.pid))
  end)

  it('takes the worker count from LCLUSTER_WORKERS, and its workers stay workers', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { env = { LCLUSTER_WORKERS = 2 } })
    readyPids(app, 2)
    assert.are.equal(200, getSync(port, '/').status)
    assert.are.equal(2, #lctest.childPids(app.pid))
    for _, pid in ipairs(lctest.childPids(app.pid)) do
      assert.are.same({}, lctest.childPids(pid))
    end
    local bad = lctest.spawn(FIX .. 'life_app.lua', { port }, { env = { LCLUSTER_WORKERS = 'many' } })
    assert.are.equal(2, bad:waitExit())
    assert.matches('LCLUSTER_WORKERS needs a number', bad.stderr, 1, true)
  end)

  it('respawns a worker that dies, keeping its slot', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '2' } })
    readyPids(app, 2)
    local victim, slot = app.stdout:match('worker ready pid (%d+) slot (%d+)')
    assert.is_true(lctest.isAlive(tonumber(victim)))
    require('_core').kill(tonumber(victim), 9)
    local newPid = app:waitOutput('worker ready pid (%d+) slot ' .. slot .. '\n.-worker ready pid (%d+) slot ' .. slot)
    assert.is_truthy(newPid)
    app:waitOutput('exited unexpectedly with signal SIGKILL', 5000, 'stderr')
    local pids = readyPids(app, 3)
    assert.is_truthy(pids[victim])
    assert.are.equal(2, #lctest.childPids(app.pid))
    assert.are.equal(200, getSync(port, '/').status)
  end)

  it('backs off a crash-looping worker and stays up, saying why', function()
    local app = lctest.spawn(FIX .. 'life_crashloop.lua', {}, { flags = { '-w', '1' },
      env = { LCLUSTER_BACKOFF_BASE = 50 } })
    app:waitOutput('restarting in 400 ms', 10000, 'stderr')
    local _, starts = app.stdout:gsub('crashing worker', '')
    -- 50, 100, 200, 400: the fourth failure, not hundreds of forks.
    assert.is_true(starts <= 5, 'forks so far: ' .. starts)
    assert.matches('before it was ready', app.stderr, 1, true)
    assert.matches('cannot start: missing configuration', app.stderr, 1, true)
    assert.is_false(app.exited)
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit())
  end)

  -- Reloads a -w 2 cluster with SIGHUP while `startLoad(port)` runs (before, during and
  -- after the reload, `n` answers each side); no request may fail and every pid is new.
  local function reloadUnderLoad(startLoad, n)
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '2' } })
    local old = readyPids(app, 2)
    local load = startLoad(port)
    lctest.waitFor(function()
      return load.ok >= n
    end, 5000, 'load before the reload')
    app:kill('SIGHUP')
    app:waitOutput('reload complete', 10000, 'stderr')
    local mark = load.ok
    lctest.waitFor(function()
      return load.ok >= mark + n
    end, 5000, 'load after the reload')
    load.stop()
    assert.are.same({}, load.errors)
    assert.are.equal(0, load.failed)
    local now = lctest.childPids(app.pid)
    assert.are.equal(2, #now)
    for _, pid in ipairs(now) do
      assert.is_nil(old[tostring(pid)], 'pid ' .. pid .. ' was not replaced')
    end
  end

  it('reloads every worker on SIGHUP under load with no failed request', function()
    reloadUnderLoad(loadLoop, 20)
  end)

  it('reloads under keep-alive load with no failed request', function()
    reloadUnderLoad(function(port)
      return keepAliveLoop(port, 8)
    end, 200)
  end)

  it('a reload takes over a pending respawn: the slot gets one worker, not two', function()
    local port = lctest.freePort()
    -- Slot 1 dies; its respawn is due in 300 ms, while the reload's replacement for slot 1
    -- takes 600 ms to start: the respawn must not fork a second worker for the slot.
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '2' },
      env = { LCLUSTER_BACKOFF_BASE = 300, LCLUSTER_STABLE_AFTER = 60000, LIFE_READY_DELAY = 600 } })
    readyPids(app, 2)
    local victim = tonumber(app.stdout:match('worker ready pid (%d+) slot 1'))
    require('_core').kill(victim, 9)
    app:waitOutput('restarting in 300 ms', 5000, 'stderr')
    app:kill('SIGHUP')
    app:waitOutput('reload complete', 10000, 'stderr')
    lctest.turn(300)
    assert.are.equal(2, #lctest.childPids(app.pid))
    assert.are.equal(200, getSync(port, '/').status)
  end)

  it('coalesces overlapping reload signals', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '1' } })
    readyPids(app, 1)
    app:kill('SIGHUP')
    app:kill('SIGUSR2')
    app:kill('SIGHUP')
    app:waitOutput('reload complete.-reload complete', 10000, 'stderr')
    lctest.turn(300)
    local _, reloads = app.stderr:gsub('reloading 1 workers', '')
    assert.are.equal(2, reloads)
  end)

  it('keeps serving on the old workers when the new version cannot start', function()
    local port = lctest.freePort()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    local flag = dir .. '/broken'
    local app = lctest.spawn(FIX .. 'life_app.lua', { port, flag }, { flags = { '-w', '2' } })
    local old = readyPids(app, 2)
    lctest.writeFile(flag, 'x')
    app:kill('SIGHUP')
    app:waitOutput('reload aborted', 10000, 'stderr')
    for _ = 1, 4 do
      local r = getSync(port, '/')
      assert.are.equal(200, r.status)
      assert.is_truthy(old[r.body:match('pid (%d+)')])
    end
  end)

  it('stops gracefully on SIGTERM: a slow request in flight is answered, exit 0', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '2' } })
    readyPids(app, 2)
    local r = get(port, '/slow')
    app:waitOutput('got /slow') -- in flight
    app:kill('SIGTERM')
    lctest.waitFor(function()
      return r.done
    end, 5000, 'the slow response')
    assert.are.equal(200, r.status)
    assert.matches('slow done', r.body)
    assert.are.equal(0, app:waitExit())
  end)

  it('kills what is left after the kill timeout and exits non-zero', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '1', '--kill-timeout', '300' } })
    local pids = readyPids(app, 1)
    local r = get(port, '/hang')
    app:waitOutput('got /hang')
    app:kill('SIGTERM')
    local code = app:waitExit(5000)
    assert.are.equal(1, code)
    assert.matches('SIGKILL', app.stderr, 1, true)
    for pid in pairs(pids) do
      assert.is_false(lctest.isAlive(tonumber(pid)))
    end
    lctest.waitFor(function()
      return r.done
    end)
  end)

  it('a second SIGINT stops at once', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '1', '--kill-timeout', '10000' } })
    readyPids(app, 1)
    get(port, '/hang')
    app:waitOutput('got /hang')
    app:kill('SIGINT')
    app:waitOutput('SIGINT: stopping', 5000, 'stderr')
    app:kill('SIGINT')
    assert.are.equal(130, app:waitExit(3000))
  end)

  it('on an uncaught error, finishes in-flight requests and a replacement serves', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_app.lua', { port }, { flags = { '-w', '1', '--kill-timeout', '1000' } })
    local first = readyPids(app, 1)
    local slow = get(port, '/slow')
    app:waitOutput('got /slow')
    get(port, '/crash')
    app:waitOutput('handler crashed on purpose', 5000, 'stderr')
    lctest.waitFor(function()
      return slow.done
    end, 5000, 'the slow request to finish')
    assert.are.equal(200, slow.status)
    local pids = readyPids(app, 2)
    local r = getSync(port, '/')
    assert.are.equal(200, r.status)
    local servedBy = r.body:match('pid (%d+)')
    assert.is_nil(first[servedBy])
    assert.is_truthy(pids[servedBy])
    app:waitOutput('hit an uncaught error', 5000, 'stderr')
  end)

  it('cluster.reload() in a script master replaces every worker with no failed request', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'life_script_master.lua', { port })
    local old = readyPids(app, 2)
    local load = loadLoop(port)
    lctest.waitFor(function()
      return load.ok >= 20
    end, 5000, 'load before the reload')
    app:kill('SIGUSR2')
    app:waitOutput('reloaded nil', 10000)
    local mark = load.ok
    lctest.waitFor(function()
      return load.ok >= mark + 20
    end, 5000, 'load after the reload')
    load.stop()
    assert.are.same({}, load.errors)
    local now = lctest.childPids(app.pid)
    assert.are.equal(2, #now)
    for _, pid in ipairs(now) do
      assert.is_nil(old[tostring(pid)], 'pid ' .. pid .. ' was not replaced')
    end
    assert.is_nil(app.stdout:find('unexpected exit'))
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit())
  end)
end)
