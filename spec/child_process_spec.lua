-- child_process against real programs (sh, cat, sleep, head), run from the spec's loop.
local lctest = require('lctest')
local cp = require('child_process')

local function waitEvent(obj, ev, ms)
  local got
  obj:once(ev, function(...)
    got = { n = select('#', ...), ... }
  end)
  lctest.waitFor(function()
    return got
  end, ms or 5000, ev)
  return unpack(got, 1, got.n)
end

local function collect(stream)
  local parts = {}
  stream:on('data', function(d)
    parts[#parts + 1] = d
  end)
  return function()
    return table.concat(parts)
  end
end

describe('child_process.spawn', function()
  after_each(lctest.cleanup)

  it('runs a program with args, cwd and env; exit then close with the status', function()
    local c = cp.spawn('sh', { '-c', 'pwd; echo "$FOO"; echo oops >&2; exit 3' },
      { cwd = '/tmp', env = { FOO = 'a b' } })
    assert.are.equal('number', type(c.pid))
    local out, err = collect(c.stdout), collect(c.stderr)
    local order = {}
    c:on('exit', function()
      order[#order + 1] = 'exit'
    end)
    local code, signal = waitEvent(c, 'close')
    assert.are.equal(3, code)
    assert.is_nil(signal)
    assert.are.same({ 'exit' }, order)
    assert.are.equal('/tmp\na b\n', out())
    assert.are.equal('oops\n', err())
  end)

  it('emits error ENOENT for a missing program, never a crash', function()
    local c = cp.spawn('/nonexistent/program', { 'x' })
    assert.is_nil(c.pid)
    local err = waitEvent(c, 'error')
    assert.are.equal('ENOENT', err.code)
    assert.are.equal('spawn /nonexistent/program', err.syscall)
    assert.are.equal('/nonexistent/program', err.path)
  end)

  it('writes stdin and reads stdout (cat), binary safe', function()
    local c = cp.spawn('cat')
    local out = collect(c.stdout)
    local bytes = {}
    for i = 0, 255 do
      bytes[#bytes + 1] = string.char(i)
    end
    local data = table.concat(bytes):rep(100)
    c.stdin:write(data)
    c.stdin:finish('\0end')
    assert.are.equal(0, (waitEvent(c, 'close')))
    assert.is_true(out() == data .. '\0end')
  end)

  it('kills a child mid-output: exit with the signal, then close', function()
    local c = cp.spawn('sh', { '-c', 'while :; do echo line; done' })
    local got = 0
    c.stdout:on('data', function(d)
      got = got + #d
      if got > 10000 and not c.killed then
        assert.is_true(c:kill())
      end
    end)
    local exit, closed
    c:on('exit', function(...)
      exit = { ... }
    end)
    c:on('close', function(...)
      closed = { ... }
    end)
    lctest.waitFor(function()
      return closed
    end, 5000, 'close')
    assert.are.same({ nil, 'SIGTERM' }, exit)
    assert.are.same({ nil, 'SIGTERM' }, closed)
    assert.is_true(c.killed)
    assert.is_false(c:kill('SIGKILL')) -- already gone
    assert.has_error(function()
      cp.spawn('sleep', { '1' }):kill('SIGNOPE')
    end, 'ERR_UNKNOWN_SIGNAL: unknown signal: SIGNOPE')
  end)

  it('pauses a child that floods stdout while the parent does not read', function()
    local total = 50 * 1024 * 1024
    local c = cp.spawn('head', { '-c', tostring(total), '/dev/zero' })
    local got, exited = 0, false
    c:on('exit', function()
      exited = true
    end)
    c.stdout:on('data', function(d)
      got = got + #d
      if got >= 1024 * 1024 and got - #d < 1024 * 1024 then
        c.stdout:pause()
      end
    end)
    lctest.waitFor(function()
      return got >= 1024 * 1024
    end, 5000, 'the first megabyte')
    assert.is_true(c.stdout:isPaused())
    local before = got
    lctest.turn(300)
    -- Paused: nothing more was read, and the child is blocked on the full pipe.
    assert.are.equal(before, got)
    assert.is_false(exited)
    assert.is_true(collectgarbage('count') < 16 * 1024)
    c.stdout:resume()
    waitEvent(c, 'close', 20000)
    assert.are.equal(total, got)
  end)

  it('returns false from stdin:write above highWaterMark and drains', function()
    -- The child starts reading only after a second: a `cat` that reads at once can keep up
    -- with the writes on another core, and then write never has to queue.
    local c = cp.spawn('sh', { '-c', 'sleep 1; exec cat' }, { stdio = { 'pipe', 'ignore', 'ignore' } })
    local chunk = ('x'):rep(65536)
    local writes = 0
    while c.stdin:write(chunk) do
      writes = writes + 1
      assert.is_true(writes < 1000, 'write never returned false')
    end
    waitEvent(c.stdin, 'drain')
    c.stdin:finish()
    assert.are.equal(0, (waitEvent(c, 'close')))
  end)

  it('inherits or ignores stdio and runs detached in its own session', function()
    local c = cp.spawn('sh', { '-c', 'echo $$ $(cut -d" " -f6 /proc/$$/stat)' }, { detached = true })
    local out = collect(c.stdout)
    waitEvent(c, 'close')
    local pid, sid = out():match('(%d+) (%d+)')
    assert.are.equal(pid, sid)
    local i = cp.spawn('true', {}, { stdio = 'ignore' })
    assert.is_nil(i.stdout)
    assert.are.equal(0, (waitEvent(i, 'close')))
  end)

  it('rejects bad arguments with coded errors', function()
    assert.has_error(function()
      cp.spawn(42)
    end, 'ERR_INVALID_ARG_TYPE: the "command" argument must be a non-empty string, got number')
    assert.has_error(function()
      cp.spawn('ls', { {} })
    end, 'ERR_INVALID_ARG_TYPE: args[1] must be a string, got table')
    assert.has_error(function()
      cp.spawn('ls', {}, { cwd = 1 })
    end, 'ERR_INVALID_ARG_TYPE: the "options.cwd" option must be a string, got number')
    assert.has_error(function()
      cp.spawn('ls', {}, { stdio = { 'bogus' } })
    end)
  end)

  it('starts children that are not workers (no LCLUSTER_* cluster variables)', function()
    local c = lctest.spawn('spec/fixtures/cp_worker_env.lua')
    c:waitOutput('child env: %[(.-)%]')
    assert.matches('child env: []', c.stdout, 1, true)
    c:stop()
  end)
end)

describe('child_process.exec / execFile', function()
  after_each(lctest.cleanup)

  local function run(fn)
    local res
    fn(function(...)
      res = { n = select('#', ...), ... }
    end)
    lctest.waitFor(function()
      return res
    end, 10000, 'the callback')
    return unpack(res, 1, res.n)
  end

  it('collects stdout and stderr; a failing status is an error with the code', function()
    local err, out, errOut = run(function(cb)
      cp.exec('echo hi; echo there >&2', cb)
    end)
    assert.is_nil(err)
    assert.are.equal('hi\n', out)
    assert.are.equal('there\n', errOut)
    err, out = run(function(cb)
      cp.exec('echo partial; echo bad >&2; exit 4', cb)
    end)
    assert.are.equal(4, err.code)
    assert.are.equal('partial\n', out)
    assert.are.equal('Command failed: echo partial; echo bad >&2; exit 4\nbad\n', err.message)
  end)

  it('runs a file without a shell', function()
    local err, out = run(function(cb)
      cp.execFile('printf', { '%s|', 'a b', '$HOME' }, cb)
    end)
    assert.is_nil(err)
    assert.are.equal('a b|$HOME|', out)
    err = run(function(cb)
      cp.execFile('/nonexistent/x', {}, cb)
    end)
    assert.are.equal('ENOENT', err.code)
  end)

  it('kills at maxBuffer and at the timeout', function()
    local err, out = run(function(cb)
      cp.exec('head -c 1000000 /dev/zero; sleep 10', { maxBuffer = 1000 }, cb)
    end)
    assert.are.equal('ERR_CHILD_PROCESS_STDIO_MAXBUFFER', err.code)
    assert.are.equal(1000, #out)
    err = run(function(cb)
      cp.exec('sleep 10', { timeout = 50 }, cb)
    end)
    assert.is_true(err.killed)
    assert.are.equal('SIGTERM', err.signal)
    err = run(function(cb)
      cp.execFile('sleep', { '10' }, { timeout = 50, killSignal = 'SIGKILL' }, cb)
    end)
    assert.are.equal('SIGKILL', err.signal)
  end)
end)
