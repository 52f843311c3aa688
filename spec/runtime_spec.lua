-- The runtime foundation: exit codes, errors, timers, signals, process, embedded modules.
-- Every case starts a real lcluster process on a fixture script.
local lctest = require('lctest')
local cjson = require('cjson')

local FIX = 'spec/fixtures/'

describe('lcluster command line', function()
  after_each(lctest.cleanup)

  it('exits with the code given to process.exit', function()
    local c = lctest.spawn(FIX .. 'rt_exit_code.lua', { 7 })
    assert.are.equal(7, c:waitExit())
    c = lctest.spawn(FIX .. 'rt_exit_code.lua', { 0 })
    assert.are.equal(0, c:waitExit())
  end)

  it('exits 0 when the loop runs dry', function()
    local c = lctest.spawn(FIX .. 'rt_timers.lua')
    assert.are.equal(0, c:waitExit())
    assert.matches('exit 0', c.stdout)
  end)

  it('exits 1 with a traceback naming file and line on an error in the main chunk', function()
    local c = lctest.spawn(FIX .. 'rt_error_main.lua')
    assert.are.equal(1, c:waitExit())
    assert.matches('rt_error_main.lua:3:', c.stderr, 1, true)
    assert.matches('stack traceback', c.stderr, 1, true)
  end)

  it('exits 1 on an error in a callback, after earlier output', function()
    local c = lctest.spawn(FIX .. 'rt_error_timer.lua')
    assert.are.equal(1, c:waitExit())
    assert.are.equal('started\n', c.stdout)
    assert.matches('rt_error_timer.lua:4: boom in timer', c.stderr, 1, true)
  end)

  it('prints error objects through __tostring', function()
    local c = lctest.spawn(FIX .. 'rt_error_table.lua')
    assert.are.equal(1, c:waitExit())
    assert.matches('custom error EFOO', c.stderr, 1, true)
  end)

  it('exits 2 naming a script that does not exist', function()
    local c = lctest.spawn('/nonexistent/missing_script.lua')
    assert.are.equal(2, c:waitExit())
    assert.matches('missing_script.lua', c.stderr, 1, true)
  end)

  it('exits 2 naming a script that does not compile', function()
    local c = lctest.spawn(FIX .. 'rt_syntax.lua')
    assert.are.equal(2, c:waitExit())
    assert.matches('rt_syntax.lua:1:', c.stderr, 1, true)
  end)

  it('exits 2 at once when the built-in master is given a script that cannot load', function()
    local c = lctest.spawn('/nonexistent/worker_script.lua', {}, { flags = { '-w', '2' } })
    assert.are.equal(2, c:waitExit())
    assert.matches('cannot load script /nonexistent/worker_script.lua', c.stderr, 1, true)
    assert.is_nil(c.stderr:find('restarting'))
    c = lctest.spawn(FIX .. 'rt_timers.lua', {}, { flags = { '-w', '1', '--agent', FIX .. 'rt_syntax.lua' } })
    assert.are.equal(2, c:waitExit())
    assert.matches('cannot load agent script', c.stderr, 1, true)
  end)

  it('exits 2 on usage errors', function()
    local c = lctest.spawn(nil, { '--no-such-option' })
    assert.are.equal(2, c:waitExit())
    assert.matches('unknown option --no-such-option', c.stderr, 1, true)
    c = lctest.spawn(nil, {})
    assert.are.equal(2, c:waitExit())
    assert.matches('no script', c.stderr, 1, true)
    c = lctest.spawn(nil, { '-w', 'lots', 'x.lua' })
    assert.are.equal(2, c:waitExit())
    assert.matches('--workers needs a number', c.stderr, 1, true)
  end)

  it('prints usage and version', function()
    local c = lctest.spawn(nil, { '--help' })
    assert.are.equal(0, c:waitExit())
    assert.matches('usage: lcluster', c.stdout, 1, true)
    assert.matches('--workers', c.stdout, 1, true)
    c = lctest.spawn(nil, { '-v' })
    assert.are.equal(0, c:waitExit())
    assert.matches('^lcluster %d+%.%d+%.%d+', c.stdout)
  end)
end)

describe('uncaught errors', function()
  after_each(lctest.cleanup)

  it('go to uncaughtException listeners and the process keeps running', function()
    local c = lctest.spawn(FIX .. 'rt_uncaught.lua')
    assert.are.equal(0, c:waitExit())
    assert.matches('caught: [^\n]*first', c.stdout)
    assert.matches('caught: [^\n]*second', c.stdout)
    assert.matches('still running, caught 2', c.stdout, 1, true)
    assert.are.equal('', c.stderr)
  end)
end)

describe('timers', function()
  after_each(lctest.cleanup)

  it('refresh restarts a timeout from now, not only an interval', function()
    -- Due order, not durations: a refreshed at 100 ms is due at 300 or later, after b (250).
    -- (libuv's again restarts only repeating timers: refresh did nothing to a timeout.)
    local order = {}
    local a = setTimeout(function()
      order[#order + 1] = 'a'
    end, 200)
    setTimeout(function()
      a:refresh()
    end, 100)
    setTimeout(function()
      order[#order + 1] = 'b'
    end, 250)
    lctest.waitFor(function()
      return #order == 2
    end, 5000, 'both timeouts')
    assert.are.same({ 'b', 'a' }, order)
  end)

  it('fire in order, pass arguments, cancel, repeat, and unref', function()
    local c = lctest.spawn(FIX .. 'rt_timers.lua')
    assert.are.equal(0, c:waitExit())
    local order = c.stdout:match('([^\n]*)\nexit')
    local pos = {}
    local i = 0
    for name in order:gmatch('[^,]+') do
      i = i + 1
      pos[name] = i
    end
    -- Each chain keeps its order; loop timing may interleave the chains differently.
    local function before(a, b)
      assert.is_truthy(pos[a], a .. ' fired in ' .. order)
      assert.is_truthy(pos[b], b .. ' fired in ' .. order)
      assert.is_true(pos[a] < pos[b], a .. ' before ' .. b .. ' in ' .. order)
    end
    before('immediate1', 'immediate2')
    before('immediate2', 'immediate3')
    before('iv1', 'iv2')
    before('iv2', 'iv3')
    -- Timeouts fire in the order they are due: t10, args:xy, t30 (set last-due first), 5 and
    -- 15 ms apart unless the machine stalled between the calls (then only the ones still
    -- 2 ms or more apart, past libuv's millisecond clock, are checked).
    local due = {}
    for name, ms in c.stdout:match('due ([^\n]*)'):gmatch('([^,=]+)=([%d.]+)') do
      due[name] = tonumber(ms)
    end
    for _, pair in ipairs({ { 't10', 'args:xy' }, { 'args:xy', 't30' }, { 't10', 't30' } }) do
      if due[pair[1]] + 2 <= due[pair[2]] then
        before(pair[1], pair[2])
      end
    end
    -- Immediates set in an I/O callback run in that turn of the loop, before any timer set
    -- there (immediate3, set by immediate1, runs in the next turn: a due timer may come first).
    before('immediate2', 't10')
    before('immediate2', 'iv1')
    assert.is_nil(pos.cancelled)
    assert.is_nil(pos['unref fired'])
    assert.is_nil(pos.iv4)
    assert.are.equal(9, i)
  end)

  it('count from when they are set, not from when the loop last woke', function()
    -- The loop's clock is read when it wakes; a timer set after Lua ran 300 ms since then
    -- fired at once (300 ms early) before the clock was read at start: lctest.waitFor's
    -- deadline too, which made specs time out at once after slow synchronous work.
    local hrtime = require('_core').hrtime
    local function busy(ms)
      local t0 = hrtime()
      while hrtime() - t0 < ms * 1e6 do
      end
    end
    lctest.turn(0) -- the clock is read here
    busy(300)
    local set, fired = hrtime(), nil
    setTimeout(function()
      fired = hrtime()
    end, 200)
    lctest.waitFor(function()
      return fired
    end, 10000, 'the timeout')
    local ms = (fired - set) / 1e6
    assert.is_true(ms >= 199, ('setTimeout(fn, 200) fired after %.0f ms'):format(ms))
    busy(300)
    set = hrtime()
    assert.has_error(function()
      lctest.waitFor(function()
        return false
      end, 200, 'nothing')
    end)
    ms = (hrtime() - set) / 1e6
    local want = 200 * lctest.timeScale
    assert.is_true(ms >= want - 1, ('lctest.waitFor(fn, 200) gave up after %.0f ms, not %d'):format(ms, want))
  end)
end)

describe('signals', function()
  after_each(lctest.cleanup)

  it('are delivered to listeners, which replace the default action', function()
    local c = lctest.spawn(FIX .. 'rt_signals.lua')
    c:waitOutput('ready')
    for _, sig in ipairs({ 'SIGHUP', 'SIGUSR2', 'SIGINT' }) do
      c:kill(sig)
      c:waitOutput('got ' .. sig)
    end
    assert.is_false(c.exited)
    c:kill('SIGTERM')
    assert.are.equal(0, c:waitExit())
    assert.matches('terminating', c.stdout, 1, true)
  end)

  it('keep their default action without a listener', function()
    local c = lctest.spawn(FIX .. 'rt_flush.lua')
    c:waitOutput('line before waiting')
    c:kill('SIGTERM')
    local _, sig = c:waitExit()
    assert.are.equal('SIGTERM', sig)
  end)
end)

describe('process', function()
  after_each(lctest.cleanup)

  it('exposes pid, ppid, argv, env, hrtime, memoryUsage, os.cpus and package.path', function()
    local c = lctest.spawn(FIX .. 'rt_process.lua', { 'first' }, { env = { LC_SPEC_VAR = 'hello' } })
    assert.are.equal(0, c:waitExit())
    local info = cjson.decode(c.stdout)
    assert.are.equal(c.pid, info.pid)
    assert.are.equal(process.pid, info.ppid)
    assert.are.equal('first', info.arg1)
    assert.are.equal(FIX .. 'rt_process.lua', info.arg0)
    assert.are.equal(FIX .. 'rt_process.lua', info.argv[2])
    assert.are.equal('first', info.argv[3])
    assert.are.equal('hello', info.env)
    assert.are.equal('hello', info.getenv)
    assert.are.equal('yes', info.written)
    assert.is_true(info.hrtimeOk)
    assert.is_true(info.rss > 1e6)
    assert.is_true(info.cpus >= 1)
    assert.is_true(#info.hostname > 0)
    assert.are.equal('sibling', info.sibling)
  end)

  it('writes stdout lines to a pipe at once', function()
    local c = lctest.spawn(FIX .. 'rt_flush.lua')
    c:waitOutput('line before waiting\n')
    c:waitOutput('io.write line\n')
    assert.is_false(c.exited)
  end)
end)

describe('embedded lualib', function()
  after_each(lctest.cleanup)

  it('runs from a copy of the binary with no files beside it', function()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    assert.are.equal(0, os.execute('cp ' .. lctest.binary .. ' ' .. dir .. '/lcluster'))
    assert.are.equal(0, os.execute('cp ' .. FIX .. 'rt_modules.lua ' .. dir .. '/main.lua'))
    local c = lctest.spawn('main.lua', {}, {
      binary = dir .. '/lcluster',
      cwd = dir,
      env = { LCLUSTER_LUALIB = false },
    })
    assert.are.equal(0, c:waitExit())
    assert.are.equal('{"got":42}\n', c.stdout)
  end)
end)

describe('lctest.freePort', function()
  it('never gives a port twice, nor one a connect() or bind(0) could take meanwhile', function()
    local f = assert(io.open('/proc/sys/net/ipv4/ip_local_port_range'))
    local lo = tonumber(f:read('*l'):match('^(%d+)'))
    f:close()
    -- With fewer than 1000 ports below the range (a host that widened it, "1024 65000") the
    -- helper lets the kernel choose: only "never twice" holds there.
    local below = lo - math.max(1024, lo - 12000) >= 1000
    local seen = {}
    for _ = 1, 100 do
      local port = lctest.freePort()
      assert.is_nil(seen[port])
      seen[port] = true
      assert.is_true(port < lo or not below, port .. ' is in the ephemeral range from ' .. lo)
    end
  end)

  -- Suites running side by side (other worktrees, CI jobs) each draw ports from the same
  -- range: they must be spread over all of it. (The first generator, an LCG computed in
  -- doubles, lost its low bits: 5 of 32 residues, ~600 ports in all, and two processes drew
  -- 30 times as many common ports as chance would.)
  it('spreads its ports over the whole range below the ephemeral one', function()
    local f = assert(io.open('/proc/sys/net/ipv4/ip_local_port_range'))
    local lo = tonumber(f:read('*l'):match('^(%d+)'))
    f:close()
    local base = math.max(1024, lo - 12000)
    if lo - base < 1000 then
      return -- no room below the range: the kernel chooses (nothing of ours to check)
    end
    local residues, quarters, nr, nq = {}, {}, 0, 0
    for _ = 1, 100 do
      local port = lctest.freePort()
      assert.is_true(port >= base and port < lo, tostring(port))
      if not residues[port % 32] then
        residues[port % 32], nr = true, nr + 1
      end
      local q = math.floor((port - base) * 4 / (lo - base))
      if not quarters[q] then
        quarters[q], nq = true, nq + 1
      end
    end
    -- 100 uniform draws miss more than 16 of 32 residues, or a quarter, with a chance
    -- below 1e-12.
    assert.is_true(nr >= 16, nr .. ' residues mod 32')
    assert.are.equal(4, nq)
  end)
end)
