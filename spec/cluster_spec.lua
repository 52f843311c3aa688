-- cluster: fork, the worker object and its events, messaging over the IPC channel, and the
-- channel's robustness. Scenarios after Node's test-cluster-* suite; every case runs a real
-- master (a fixture script) that forks real workers, and reads what the master printed.
local lctest = require('lctest')
local cjson = require('cjson')

local FIX = 'spec/fixtures/'

-- The lines of `text` that start with `prefix` (prefix removed), in order.
local function lines(text, prefix)
  local out = {}
  for line in text:gmatch('[^\n]+') do
    if line:sub(1, #prefix) == prefix then
      out[#out + 1] = line:sub(#prefix + 1)
    end
  end
  return out
end

-- Index of the first line of `list` equal to (or, with a trailing '*', starting with) `want`.
local function indexOf(list, want)
  local prefix = want:match('^(.*)%*$')
  for i, l in ipairs(list) do
    if l == want or (prefix and l:sub(1, #prefix) == prefix) then
      return i
    end
  end
  return nil
end

local function assertOrder(list, ...)
  local last = 0
  for _, want in ipairs({ ... }) do
    local i = indexOf(list, want)
    assert(i, ('no line %q in:\n%s'):format(want, table.concat(list, '\n')))
    assert(i > last, ('%q came out of order in:\n%s'):format(want, table.concat(list, '\n')))
    last = i
  end
end

-- Runs a fixture to its exit; returns the child (stdout/stderr captured) after checking the
-- master exited 0.
local function run(script, args, ms)
  local c = lctest.spawn(FIX .. script, args)
  local code, signal = c:waitExit(ms or 10000)
  assert.are.equal(0, code, ('master exited %s %s\n--- stdout:\n%s\n--- stderr:\n%s'):format(
    tostring(code), tostring(signal), c.stdout, c.stderr))
  return c
end

-- A process that still runs: a zombie (dead, waiting to be reaped by an init that may
-- never reap it) does not count.
local function running(pid)
  local f = io.open('/proc/' .. pid .. '/stat', 'r')
  if not f then
    return false
  end
  local stat = f:read('*a')
  f:close()
  local state = stat:match('^%d+ %b() (%a)')
  return state ~= nil and state ~= 'Z' and state ~= 'X'
end

local function lifecycle(mode)
  local c = run('cluster_lifecycle.lua', { mode })
  return lines(c.stdout, 'M '), lines(c.stdout, 'W '), c
end

describe('cluster worker lifecycle', function()
  after_each(lctest.cleanup)

  it("emits 'fork' before 'online', and 'disconnect' before 'exit' on worker and cluster", function()
    local m = lifecycle('exit42')
    assertOrder(m, 'fork 1 none', 'worker-online', 'online 1 online true false',
      'worker-message bye', 'cluster-message 1 bye', 'worker-disconnect',
      'disconnect 1 disconnected false false', 'worker-exit 42 nil', 'exit 1 42 nil*')
  end)

  it('reports the exit code, isDead, state and removal from cluster.workers', function()
    local m = lifecycle('exit42')
    assert.are.equal('exit 1 42 nil false true dead false', m[#m])
  end)

  it('exits 0 when the worker loop runs dry, exitedAfterDisconnect false', function()
    local m, w = lifecycle('natural')
    assert.are.same({ 'start 1 true false true', 'natural end' }, w)
    assertOrder(m, 'online*', 'disconnect 1 disconnected false false', 'exit 1 0 nil false true dead false')
  end)

  it('reports a worker killed from outside: signal, no code, exitedAfterDisconnect false', function()
    local m = lifecycle('extkill')
    assertOrder(m, 'online*', 'worker-disconnect', 'disconnect*', 'worker-exit nil SIGKILL',
      'exit 1 nil SIGKILL false true dead false')
  end)

  it('worker:kill() ends a worker stuck in a busy loop with SIGTERM', function()
    local m = lifecycle('kill')
    assertOrder(m, 'worker-message busy', 'disconnect 1 disconnected false true',
      'worker-exit nil SIGTERM', 'exit 1 nil SIGTERM true true dead false')
  end)

  it("worker:kill('SIGKILL') sends that signal; exitedAfterDisconnect is true", function()
    local m = lifecycle('killsig')
    assertOrder(m, 'worker-message busy', 'disconnect 1 disconnected false true',
      'exit 1 nil SIGKILL true true dead false')
  end)

  it('worker:disconnect() in the master: the worker exits 0 by itself, exitedAfterDisconnect', function()
    local m = lifecycle('disconnect')
    assertOrder(m, 'worker-online', 'after-disconnect-call true', 'worker-disconnect',
      'disconnect 1 disconnected false true', 'worker-exit 0 nil', 'exit 1 0 nil true true dead false')
  end)

  it("cluster.worker:disconnect() in the worker: 'disconnect' is not synchronous, exit 0", function()
    local m, w = lifecycle('wdisconnect')
    assertOrder(w, 'disconnect-sync false', 'disconnect-event false')
    assertOrder(m, 'disconnect 1 disconnected false true', 'exit 1 0 nil true true dead false')
  end)

  it('cluster.worker:kill() in the worker: exit 0 and exitedAfterDisconnect true', function()
    local m = lifecycle('wkill')
    assertOrder(m, 'disconnect 1 disconnected false true', 'exit 1 0 nil true true dead false')
  end)

  it('process.disconnect() in the worker: it exits 0, exitedAfterDisconnect false', function()
    local m, w = lifecycle('pdisconnect')
    assert.are.same({ 'start 1 true false true', 'process-disconnect' }, w)
    assertOrder(m, 'disconnect 1 disconnected false false', 'exit 1 0 nil false true dead false')
  end)

  it('an uncaught error in a worker exits it with 1 and leaves the master running', function()
    local m, _, c = lifecycle('error')
    assert.matches('worker boom', c.stderr, 1, true)
    assertOrder(m, 'disconnect*', 'exit 1 1 nil false true dead false')
  end)
end)

describe('cluster messaging', function()
  after_each(lctest.cleanup)

  local function messages(mode, ms)
    local c = run('cluster_messages.lua', { mode }, ms)
    return lines(c.stdout, 'RESULT '), c
  end

  it('keeps the order of 10,000 messages each way', function()
    local r = messages('order')
    assertOrder(r, 'master-got-all 10000', 'worker-exit 0 nil')
    assert.is_nil(indexOf(r, 'out-of-order*'))
  end)

  it('carries a 16 MiB message intact each way', function()
    local r = messages('big', 20000)
    local sum = r[indexOf(r, 'master-sum*')]:match('^master%-sum (.*)$')
    assert.is_truthy(sum:match('^%d+:16777216:'))
    assertOrder(r, 'worker-sum ' .. sum, 'master-got-big ' .. sum, 'worker-exit 0 nil')
  end)

  it('keeps order across strings, tables, numbers and a 2 MiB string, each way', function()
    local r = messages('mixed')
    assertOrder(r, 'mixed-ok 3000', 'worker-exit 0 nil')
  end)

  it('queues messages sent before the worker is online, in order', function()
    local r = messages('early')
    assertOrder(r, 'sent-early 1 true', 'sent-early 5 true', 'echo 1', 'echo 2', 'echo 3', 'echo 4',
      'echo 5', 'worker-exit 0 nil')
  end)

  it("queues messages in the worker until a 'message' listener exists", function()
    local r = messages('queue')
    assertOrder(r, 'echo q1', 'echo q2', 'echo q3', 'worker-exit 0 nil')
  end)

  it('delivers a user message shaped like an internal one as a user message', function()
    local r = messages('lookalike')
    assert.are.equal(6, #r, table.concat(r, '\n'))
    assert.are.equal('cluster-online 1', r[1])
    local echoed = {}
    for i = 2, 5 do
      echoed[#echoed + 1] = cjson.decode((assert(r[i]:match('^echo (.*)$'))))
    end
    assert.are.same({ { cmd = 'disconnect' }, { cmd = 'online' }, { act = 'newconn', cmd = 'listening' },
      { done = true, connected = true } }, echoed)
    assert.are.equal('worker-exit 0 nil', r[6])
  end)

  it('refuses values JSON cannot carry with an error naming the problem, sending nothing', function()
    local r = messages('bad')
    local want = {
      ['function'] = 'msg.f is a function',
      cycle = 'msg.a.b.self is a cycle',
      nan = 'msg.x is NaN',
      inf = 'msg[3] is inf',
      sparse = 'excessively sparse array',
      userdata = 'msg[1] is a userdata',
      coroutine = 'msg is a thread',
      boolkey = 'msg has a boolean key',
      ['nil'] = 'ERR_MISSING_ARGS',
    }
    local seen = 0
    for _, l in ipairs(r) do
      local case, rest = l:match('^bad (%S+) false (.*)$')
      if case then
        seen = seen + 1
        assert.matches(want[case], rest, 1, true)
        if case ~= 'nil' then
          assert.matches('^ERR_INVALID_ARG_TYPE: ', rest)
        end
      end
    end
    assert.are.equal(9, seen)
    -- Only the valid message reached the worker.
    assertOrder(r, 'echo {"got":"valid"}', 'worker-exit 0 nil')
    assert.are.equal(1, #lines(table.concat(r, '\n') .. '\n', 'echo'))
  end)

  it("send after exit returns false, emits 'error' ERR_IPC_CHANNEL_CLOSED, master survives", function()
    local r = messages('after-exit')
    assertOrder(r, 'worker-exit 0 nil', 'send-no-listener false', 'send-with-listener false',
      'error-event ERR_IPC_CHANNEL_CLOSED', 'still-alive', 'callback ERR_IPC_CHANNEL_CLOSED')
  end)

  it("process 'message' gets (msg, handle, from='master'); values round-trip", function()
    local r = messages('from')
    local echo = cjson.decode(r[1]:match('^echo (.*)$'))
    assert.are.equal('master', echo.from)
    assert.are.equal(1, echo.id)
    assert.is_true(echo.handle)
    assert.are.same({ 1, 2, 3 }, echo.msg.list)
    assert.are.equal(cjson.null, echo.msg.null)
    assert.are.equal(1.5, echo.msg.f)
    assert.are.equal('é\0x', echo.msg.s)
  end)

  it('passes a file descriptor with a message (SCM_RIGHTS), delivered as an integer', function()
    local r = messages('fd')
    assertOrder(r, 'handle my stdout number', 'passed-fd-works')
  end)
end)

describe('cluster settings', function()
  after_each(lctest.cleanup)

  local r
  local function settings()
    if not r then
      local dir = process.cwd() .. '/spec/fixtures'
      r = lines(run('cluster_settings.lua', { dir }).stdout, 'RESULT ')
    end
    return r
  end

  it('has defaults and merges setupPrimary settings', function()
    local s = settings()
    assert.are.equal('settings-before-setup {}', s[1])
    -- cluster.settings is empty until the first setupPrimary, as in Node.
    assert.are.equal('settings true ["one","two"] false nil', s[2])
  end)

  it('gives ids from 1 and lists live workers in cluster.workers', function()
    assert.is_truthy(indexOf(settings(), 'ids 1 2 true true'))
  end)

  it('passes fork env and settings.args; a worker has cluster.worker and no cluster.workers', function()
    local s = settings()
    local w1 = cjson.decode(s[indexOf(s, 'worker 1 *')]:match('^worker 1 (.*)$'))
    local w2 = cjson.decode(s[indexOf(s, 'worker 2 *')]:match('^worker 2 (.*)$'))
    assert.are.same({ id = 1, foo = 'bar', argv = { 'one', 'two' }, workerId = false, workers = true }, w1)
    assert.is_nil(w2.foo)
    assert.are.equal(2, w2.id)
  end)

  it("emits 'setup' with the settings after setupPrimary and each fork", function()
    local s = settings()
    assertOrder(s, 'setup 1 false *', 'setup 2 false *', 'setup 3 false *', 'setup 4 true *')
  end)

  it('runs settings.exec in settings.cwd; silent output reaches worker.process streams', function()
    local s = settings()
    local dir = process.cwd() .. '/spec/fixtures'
    assertOrder(s, 'exit 2 0', 'third-exit 3 0',
      'silent-stdout exec worker 3 cwd=' .. dir .. ' arg=x foo=third|', 'silent-stderr to stderr|')
  end)

  it('starts workers as settings.uid / settings.gid', function()
    local f = assert(io.open('/proc/self/status'))
    local uid = f:read('*a'):match('\nUid:%s+(%d+)')
    f:close()
    if uid ~= '0' then
      pending('needs root to change uid')
      return
    end
    local c = run('cluster_uid.lua', { 65534, 65534 })
    assert.matches('WORKER ids 65534 65534\nWORKER exit 0', c.stdout, 1, true)
  end)

  it('has the scheduling policy constants', function()
    local cluster = require('cluster')
    assert.are.equal(1, cluster.SCHED_NONE)
    assert.are.equal(2, cluster.SCHED_RR)
    assert.is_truthy(cluster.schedulingPolicy == cluster.SCHED_RR
      or cluster.schedulingPolicy == cluster.SCHED_NONE)
    assert.is_true(cluster.isMaster and cluster.isPrimary and not cluster.isWorker)
  end)
end)

describe('cluster at scale and under faults', function()
  after_each(lctest.cleanup)

  it('forks 64 workers that come online and exit cleanly on cluster.disconnect(fn)', function()
    local c = run('cluster_many.lua', { 64 }, 30000)
    assert.matches('DONE forks=64 onlines=64 disconnects=64 exits=64 clean=64 left=0', c.stdout, 1, true)
  end)

  it('leaves no worker alive 1 s after the master is killed with SIGKILL', function()
    local c = lctest.spawn(FIX .. 'cluster_orphans.lua')
    local pids = c:waitOutput('PIDS ([%d ]+)\n', 10000)
    local list = {}
    for p in pids:gmatch('%d+') do
      list[#list + 1] = tonumber(p)
    end
    assert.are.equal(4, #list)
    -- Should the spec fail, the workers it proves gone must not stay behind.
    finally(function()
      for _, p in ipairs(list) do
        if running(p) then
          require('_core').kill(p, 9)
        end
      end
    end)
    for _, p in ipairs(list) do
      assert.is_true(running(p))
    end
    c:kill('SIGKILL')
    lctest.waitFor(function()
      for _, p in ipairs(list) do
        if running(p) then
          return false
        end
      end
      return true
    end, 1000, 'every worker to be gone')
    c:waitExit(5000)
  end)

  for _, case in ipairs({
    { 'kind', 'malformed frame: unknown kind' },
    { 'toobig', 'body length over the 256 MiB limit' },
    { 'fds', 'fewer file descriptors arrived than the frame announced' },
    { 'reserved', 'reserved header bytes are not zero' },
    { 'json', 'the body is not JSON' },
    { 'handle', 'a handle frame without its description' },
    { 'truncated', 'truncated frame' },
    { 'shmnofd', 'a shared-memory frame out of place (a reference before its ring' },
    { 'shmresend', 'a shared-memory frame out of place' },
    { 'shmbody', "a shared-memory frame's body is not a valid reference" },
    { 'shmrange', 'a shared-memory frame names a region outside the ring or out of order' },
    { 'shmnotmemfd', 'the shared-memory ring is not a sealed memfd of a valid size' },
    { 'shmdup', 'a shared-memory frame out of place' },
  }) do
    it('closes a channel on a bad frame (' .. case[1] .. ') with a clear error; the master lives', function()
      local c = run('cluster_malformed.lua', { case[1] })
      assert.matches('IPC channel of worker 1 %(pid %d+%) closed: EPROTO: ', c.stderr)
      assert.matches(case[2], c.stderr, 1, true)
      local m = lines(c.stdout, 'MASTER ')
      assertOrder(m, 'message before', 'worker-error EPROTO EPROTO: *', 'disconnect', 'exit *',
        'second before', 'second works')
    end)
  end

  it('a worker receiving a bad frame reports it and exits', function()
    local c = run('cluster_malformed.lua', { 'master-sends' })
    assert.matches('worker 1: IPC channel to the master closed: EPROTO: malformed frame',
      c.stderr, 1, true)
    assertOrder(lines(c.stdout, 'MASTER '), 'message before', 'disconnect', 'exit 0 nil',
      'second works')
  end)
end)
