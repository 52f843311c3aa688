-- The lifecycle contract (docs/api.md, "Graceful stop, reload and crashes"): the 'shutdown'
-- event with the channel still open, exit 0 even with timers set, draining on SIGTERM sent to
-- every process at once (systemd's KillMode=control-group), the -w master's signals,
-- --master, a port in use, the watchdog and the hand-off skipping a stalled worker. Real
-- processes, real signals, HTTP over loopback.
local lctest = require('lctest')
local core = require('_core')

local FIX = 'spec/fixtures/'
local APP = FIX .. 'life_contract.lua'
local AGENT = FIX .. 'life_contract_agent.lua'

-- One GET (a new connection each); returns {done, status, body, err}, filled in later.
local function get(port, path)
  return lctest.get(port, path, { headers = { Connection = 'close' } })
end

local waitAll = lctest.waitAll

local function count(text, pattern)
  local _, n = text:gsub(pattern, '')
  return n
end

local function readyPids(app, n)
  return (lctest.waitPids(app, 'worker ready pid (%d+)', n, 5000, n .. ' workers ready'))
end

describe('the stop sequence', function()
  after_each(lctest.cleanup)

  it("reloads a worker that has a setInterval: 'shutdown' reload, exit 0, no SIGKILL", function()
    local port = lctest.freePort()
    -- A kill timeout far beyond the wait below: a step that waited for it would fail here.
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1', '--kill-timeout', '30000' } })
    local old = readyPids(app, 1)[1]
    app:kill('SIGHUP')
    app:waitOutput('reload complete', 8000, 'stderr')
    assert.matches('shutdown reload pid ' .. old, app.stdout, 1, true)
    assert.matches('(pid ' .. old .. ', slot 1) exited with code 0', app.stderr, 1, true)
    assert.is_nil(app.stderr:find('SIGKILL', 1, true))
    assert.is_nil(app.stderr:find('did not exit', 1, true))
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(8000))
  end)

  it("lets 'shutdown' listeners flush state to the agent, with the reason", function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2', '--agent', AGENT } })
    readyPids(app, 2)
    app:kill('SIGHUP')
    app:waitOutput('reload complete', 8000, 'stderr')
    -- Both old workers flushed to the agent from 'shutdown' (reason reload), and the agent
    -- was reloaded after them.
    assert.are.equal(2, count(app.stdout, 'agent %d+ got flush from %d+ reload'))
    assert.matches('agent shutdown reload pid', app.stdout, 1, true)
    assert.are.equal(2, count(app.stdout, 'agent ready pid'))
    local lastFlush = app.stdout:find('got flush from %d+ reload[^\n]*\n.*got flush from %d+ reload')
    local agentStop = app.stdout:find('agent shutdown reload')
    assert.is_true(lastFlush < agentStop)
    app:kill('SIGTERM')
    app:waitOutput('agent shutdown stop', 8000)
    assert.are.equal(0, app:waitExit(8000))
    assert.are.equal(2, count(app.stdout, 'got flush from %d+ stop'))
  end)

  it('SIGTERM to the master and every worker at once: requests in flight complete, no respawn', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2' } })
    local pids = readyPids(app, 2)
    local reqs = {}
    for i = 1, 4 do
      reqs[i] = get(port, '/slow')
    end
    lctest.waitFor(function()
      return count(app.stdout, 'got /slow') == 4
    end, 5000, 'the four requests to reach the workers')
    -- What systemd's KillMode=control-group does: every process of the service at once.
    core.kill(app.pid, core.signals.SIGTERM)
    for _, pid in ipairs(pids) do
      core.kill(pid, core.signals.SIGTERM)
    end
    waitAll(reqs, 5000, 'the slow responses')
    for _, r in ipairs(reqs) do
      assert.are.equal(200, r.status, r.err)
      assert.matches('slow done', r.body)
    end
    assert.are.equal(0, app:waitExit(8000))
    -- Whichever came first, the signal or the master's stop, each worker stopped once.
    assert.are.equal(2, count(app.stdout, 'shutdown %a+ pid'))
    assert.are.equal(2, count(app.stdout, 'worker ready pid'))
    assert.is_nil(app.stderr:find('restarting', 1, true))
  end)

  it('with --drain-delay, workers signalled with the master keep serving for the delay', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1', '--drain-delay', '1500' } })
    local pid = readyPids(app, 1)[1]
    core.kill(app.pid, core.signals.SIGTERM)
    core.kill(pid, core.signals.SIGTERM)
    app:waitOutput('draining for 1500 ms', 5000, 'stderr')
    -- A new request during the delay is still served.
    local r = get(port, '/')
    waitAll({ r })
    assert.are.equal(200, r.status, r.err)
    assert.are.equal(0, app:waitExit(8000))
  end)

  it("a scale-down stops the removed worker with reason 'scale'", function()
    local port = lctest.freePort()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    local env = { LCLUSTER_RUN_DIR = dir }
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2' }, env = env })
    readyPids(app, 2)
    local ctl = lctest.spawn(nil, nil, { flags = { 'scale', 'life_contract', '1' }, env = env })
    assert.are.equal(0, ctl:waitExit(10000), ctl.stderr)
    app:waitOutput('shutdown scale pid')
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(8000))
    assert.are.equal(1, count(app.stdout, 'shutdown scale pid'))
    assert.are.equal(1, count(app.stdout, 'shutdown stop pid'))
  end)

  it('a worker SIGTERMed alone drains its requests, then the master replaces it', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1' } })
    local pid = readyPids(app, 1)[1]
    local r = get(port, '/slow')
    app:waitOutput('got /slow')
    core.kill(pid, core.signals.SIGTERM)
    waitAll({ r })
    assert.are.equal(200, r.status, r.err)
    readyPids(app, 2)
    assert.matches('got SIGTERM and drains', app.stderr, 1, true)
    assert.are.equal(200, lctest.waitFor(function()
      local x = get(port, '/')
      waitAll({ x })
      return x.status
    end, 5000, 'the replacement to answer'))
  end)
end)

describe('lcluster -w signals', function()
  after_each(lctest.cleanup)

  it('SIGQUIT stops gracefully: the request in flight is answered, exit 0', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1' } })
    readyPids(app, 1)
    local r = get(port, '/slow')
    app:waitOutput('got /slow')
    app:kill('SIGQUIT')
    waitAll({ r })
    assert.are.equal(200, r.status, r.err)
    assert.are.equal(0, app:waitExit(8000))
    assert.matches('SIGQUIT: stopping', app.stderr, 1, true)
    assert.matches('shutdown stop pid', app.stdout, 1, true)
  end)

  it('a second SIGTERM or SIGQUIT stops at once', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1', '--kill-timeout', '30000' } })
    readyPids(app, 1)
    get(port, '/hang')
    lctest.waitFor(function()
      return app.stdout:find('worker ready')
    end)
    app:kill('SIGTERM')
    app:waitOutput('SIGTERM: stopping', 5000, 'stderr')
    app:kill('SIGQUIT')
    assert.are.equal(128 + core.signals.SIGQUIT, app:waitExit(5000))
  end)

  it('SIGUSR1 does not kill the master: with no log file it says so and serves on', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1' } })
    readyPids(app, 1)
    app:kill('SIGUSR1')
    app:waitOutput('SIGUSR1: no log file to reopen', 5000, 'stderr')
    local r = get(port, '/')
    waitAll({ r })
    assert.are.equal(200, r.status)
    assert.is_false(app.exited)
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(8000))
  end)
end)

describe('lcluster -w --master FILE', function()
  after_each(lctest.cleanup)

  it("runs FILE in the master, which receives what workers send to 'master'", function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2', '--master', FIX .. 'life_master_ext.lua' },
      env = { LIFE_HELLO = 1 } })
    app:waitOutput('master got hello 4 from worker')
    assert.matches('master saw fork 1', app.stdout, 1, true)
    lctest.waitFor(function()
      return count(app.stdout, 'sendTo master true true') == 2
    end, 5000, 'both workers to report')
    assert.is_nil(app.stderr:find('dropped', 1, true))
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(8000))
  end)

  it("without it, sendTo('master') returns false with one warning per process", function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2' }, env = { LIFE_HELLO = 1 } })
    lctest.waitFor(function()
      return count(app.stdout, 'sendTo master false false') == 2
    end, 5000, 'both workers to report')
    lctest.waitFor(function()
      return count(app.stderr, 'start it with %-%-master FILE') == 2
    end, 5000, 'one warning per worker')
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(8000))
    assert.are.equal(2, count(app.stderr, 'start it with %-%-master FILE'))
  end)

  it('refuses a --master file that cannot load, and --master without -w', function()
    local bad = lctest.spawn(APP, { 1 }, { flags = { '-w', '1', '--master', FIX .. 'nope.lua' } })
    assert.are.equal(2, bad:waitExit())
    assert.matches('cannot load --master', bad.stderr, 1, true)
    local nw = lctest.spawn(APP, { 1 }, { flags = { '--master', FIX .. 'life_master_ext.lua' } })
    assert.are.equal(2, nw:waitExit())
    assert.matches('--master needs --workers', nw.stderr, 1, true)
  end)
end)

describe('lcluster -w with a port in use', function()
  after_each(function()
    lctest.cleanup()
    lctest.closeTracked()
  end)

  it('names the address, backs off and exits 1 after a bounded number of failed starts', function()
    local net = require('net')
    local busy = lctest.track(net.createServer())
    local port
    busy:listen(0, '127.0.0.1', function()
      port = busy:address().port
    end)
    lctest.waitFor(function()
      return port
    end)
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2' },
      env = { LCLUSTER_BACKOFF_BASE = 20, LCLUSTER_MAX_START_FAILS = 3 } })
    assert.are.equal(1, app:waitExit(10000))
    assert.matches('cannot listen on 127.0.0.1:' .. port .. ': EADDRINUSE', app.stderr, 1, true)
    assert.matches('restarting in 40 ms', app.stderr, 1, true)
    assert.matches('giving up', app.stderr, 1, true)
    -- Bounded: a few forks per slot, not a loop.
    assert.is_true(count(app.stderr, 'cannot listen on') <= 8)
  end)
end)

describe('stuck workers', function()
  after_each(lctest.cleanup)

  it('a stalled worker gets no new connections after a second; all 100 are answered meanwhile', function()
    local port = lctest.freePort()
    -- The watchdog off: only the hand-off's rule is at work.
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2', '--watchdog', '0' } })
    local pids = readyPids(app, 2)
    local stuck = pids[1]
    core.kill(stuck, core.signals.SIGSTOP)
    finally(function()
      core.kill(stuck, core.signals.SIGCONT)
    end)
    -- New connections (at most one each 20 ms) until the master says the stopped worker
    -- stalled; those it got before hang until it resumes.
    local early = {}
    local probe = setInterval(function()
      early[#early + 1] = get(port, '/')
    end, 20)
    lctest.waitFor(function()
      return app.stderr:find('has not acknowledged new connections')
    end, 5000, 'the master to notice the stall')
    clearInterval(probe)
    local reqs = {}
    for i = 1, 100 do
      reqs[i] = get(port, '/')
    end
    waitAll(reqs, 5000, '100 answers while a worker is stopped')
    for _, r in ipairs(reqs) do
      assert.are.equal(200, r.status, r.err)
      assert.is_nil(r.body:find('pid ' .. stuck, 1, true))
    end
    -- It takes connections again once it acknowledges: the early ones are answered too.
    core.kill(stuck, core.signals.SIGCONT)
    waitAll(early, 5000, 'the connections the stopped worker held')
    for _, r in ipairs(early) do
      assert.are.equal(200, r.status, r.err)
    end
  end)

  it("the watchdog replaces a worker whose loop stopped answering, reason 'watchdog'", function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2', '--watchdog', '300', '--kill-timeout', '5000' } })
    readyPids(app, 2)
    -- Busy for 2 s: past the watchdog, short of the kill timeout, so the stuck worker runs its
    -- stop sequence once its loop turns again.
    local spin = get(port, '/spin?ms=2000')
    local stuck = tonumber(app:waitOutput('spinning pid (%d+)'))
    local reqs = {}
    for i = 1, 100 do
      reqs[i] = get(port, '/')
    end
    app:waitOutput('%(pid ' .. stuck .. '%) has not answered for %d+ ms %(watchdog%)', 5000, 'stderr')
    waitAll(reqs, 8000, '100 answers during the stall')
    for _, r in ipairs(reqs) do
      assert.are.equal(200, r.status, r.err)
    end
    app:waitOutput('shutdown watchdog pid ' .. stuck, 5000)
    waitAll({ spin })
    assert.are.equal(200, spin.status)
    readyPids(app, 3)
    app:waitOutput('pid ' .. stuck .. ', slot %d%) exited with code 0', 5000, 'stderr')
  end)

  it('a handler looping for ever under -w 2: 100 new connections answered, the worker SIGKILLed', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '2', '--watchdog', '300', '--kill-timeout', '300' } })
    readyPids(app, 2)
    get(port, '/loop')
    local stuck = tonumber(app:waitOutput('looping pid (%d+)'))
    -- Those handed to the stuck worker before the master noticed are never touched by it:
    -- the master keeps them until acknowledged and gives them to others once it is killed.
    local reqs = {}
    for i = 1, 100 do
      reqs[i] = get(port, '/')
    end
    waitAll(reqs, 8000, '100 answers with a worker stuck for good')
    for _, r in ipairs(reqs) do
      assert.are.equal(200, r.status, r.err)
      assert.is_nil(r.body:find('pid ' .. stuck .. ' ', 1, true))
    end
    app:waitOutput('pid ' .. stuck .. ', slot %d%) exited with signal SIGKILL', 5000, 'stderr')
    assert.matches('(pid ' .. stuck .. ') has not answered', app.stderr, 1, true)
    readyPids(app, 3)
  end)

  it('the watchdog SIGKILLs a worker stuck for good (SIGSTOP) and a replacement serves', function()
    local port = lctest.freePort()
    local app = lctest.spawn(APP, { port }, { flags = { '-w', '1', '--watchdog', '200', '--kill-timeout', '300' } })
    local stuck = readyPids(app, 1)[1]
    core.kill(stuck, core.signals.SIGSTOP)
    app:waitOutput('pid ' .. stuck .. ', slot 1%) exited with signal SIGKILL', 5000, 'stderr')
    assert.matches('(pid ' .. stuck .. ') has not answered', app.stderr, 1, true)
    readyPids(app, 2)
    local r = get(port, '/')
    waitAll({ r })
    assert.are.equal(200, r.status)
    assert.is_nil(r.body:find('pid ' .. stuck, 1, true))
  end)
end)

describe('script masters', function()
  after_each(lctest.cleanup)

  it('opt in to the watchdog with cluster.settings.watchdog; cluster.disconnect ends workers with timers', function()
    local app = lctest.spawn(FIX .. 'life_watchdog_master.lua')
    local pid = tonumber(app:waitOutput('online 1 pid (%d+)'))
    core.kill(pid, core.signals.SIGSTOP)
    app:waitOutput('unresponsive 1 after number')
    app:waitOutput('exit 1 SIGKILL')
    app:waitOutput('online 2 pid')
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit(5000))
    assert.matches('worker shutdown stop', app.stdout, 1, true)
    assert.matches('exit 2 0', app.stdout, 1, true)
  end)
end)
