-- Hardening of the master and the IPC channel: running out of file descriptors (accept,
-- hand-off, fork), IPC backpressure and IPC limits. Real processes under real limits
-- (`ulimit -n` through sh, `prlimit --pid` on a running process), real loopback clients.
local lctest = require('lctest')
local core = require('_core')

local FIX = 'spec/fixtures/'
local waitFor = lctest.waitFor

local function readFile(path)
  local f = io.open(path, 'r')
  if not f then
    return nil
  end
  local s = f:read('*a')
  f:close()
  return s
end

-- CPU time (clock ticks: utime + stime) pid has used.
local function cpuTicks(pid)
  local stat = readFile('/proc/' .. pid .. '/stat') or ''
  local rest = stat:match('^%d+ %b() (.*)$') or ''
  local fields = {}
  for f in rest:gmatch('%S+') do
    fields[#fields + 1] = f
  end
  -- rest starts at field 3 (state): utime is field 14, stime field 15.
  return (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
end

local function fdCount(pid)
  local n = 0
  local f = io.popen(('ls /proc/%d/fd 2>/dev/null'):format(pid))
  for _ in f:lines() do
    n = n + 1
  end
  f:close()
  return n
end

-- Sets pid's soft limit on open files (the hard one stays, so it can be raised again).
local function prlimit(pid, nofile)
  local ok = os.execute(('prlimit --pid %d --nofile=%d:'):format(pid, nofile))
  assert(ok == 0 or ok == true, 'prlimit failed')
end

local function count(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do
    n = n + 1
  end
  return n
end

-- A client that records the first line the server sends (the worker's pid) and whether the
-- server closed; ping() asks a held connection for another line.
local function client(port)
  local r = { done = false, text = '' }
  local h
  h = core.tcp(function(ev, a)
    if ev == 'connect' then
      if a then
        r.done, r.err = true, a
        return h:close()
      end
      h:read_start()
    elseif ev == 'data' then
      r.text = r.text .. a
      r.pid = r.pid or tonumber(r.text:match('^(%d+)\n'))
    elseif ev == 'end' or ev == 'error' then
      r.done = true
      if not h:is_closing() then
        h:close()
      end
    end
  end)
  r.handle = h
  assert(h:connect('127.0.0.1', port))
  function r.close()
    if not h:is_closing() then
      h:close()
    end
  end
  function r.ping()
    h:write('ping\n')
  end
  return r
end

local function closeAll(list)
  for _, r in ipairs(list) do
    r.close()
  end
end

-- Starts the two-worker fixture, under `ulimit -n nofile` when given; returns the child, the
-- port and {pid = true} of its workers.
local function startCluster(nofile)
  local port = lctest.freePort()
  local c
  if nofile then
    c = lctest.spawn('-c', { ('ulimit -n %d; exec %s %shard_accept.lua %d'):format(nofile,
      lctest.binary, FIX, port) }, { binary = '/bin/sh' })
  else
    c = lctest.spawn(FIX .. 'hard_accept.lua', { port })
  end
  c:waitOutput('ready %d+', 10000)
  local workers = {}
  for pid in c.stdout:gmatch('worker %d+ (%d+)') do
    workers[tonumber(pid)] = true
  end
  return c, port, workers
end

describe('fd exhaustion', function()
  after_each(function()
    lctest.cleanup()
  end)

  it('the master sheds connections at EMFILE, logs at most once a second, stays idle and serves again', function()
    local c, port, workers = startCluster(64)
    local held = {}
    for i = 1, 200 do
      held[i] = client(port)
    end
    -- Every client is served (pid) or closed promptly: none waits in a backlog.
    waitFor(function()
      for _, r in ipairs(held) do
        if not r.pid and not r.done then
          return false
        end
      end
      return true
    end, 15000, 'every client to be served or closed')
    local served = 0
    for _, r in ipairs(held) do
      if r.pid then
        served = served + 1
      end
    end
    assert.is_true(served > 20, 'only ' .. served .. ' clients served')
    assert.is_true(served < 200, 'no client hit the fd limit')

    -- Two seconds of exhaustion with new clients arriving all the time.
    local before = cpuTicks(c.pid)
    local logBefore = count(c.stderr .. c.stdout, 'EMFILE')
    local extra = {}
    for _ = 1, 20 do
      for _ = 1, 5 do
        extra[#extra + 1] = client(port)
      end
      lctest.turn(100)
    end
    local ticks = cpuTicks(c.pid) - before
    local logLines = count(c.stderr .. c.stdout, 'EMFILE') - logBefore
    -- A spinning accept loop burns the whole 2 s (200 ticks); a paused one almost nothing.
    assert.is_true(ticks < 60, ('master used %d ticks of CPU in 2 s at EMFILE'):format(ticks))
    assert.is_true(logLines <= 4, ('%d EMFILE lines in 2 s:\n%s'):format(logLines, c.stderr))
    assert.is_true(lctest.isAlive(c.pid), 'the master died')
    assert.are.equal(0, count(c.stdout, 'exit %d'), 'a worker exited:\n' .. c.stdout)

    -- The clients go away: the cluster serves again by itself.
    closeAll(held)
    closeAll(extra)
    local again = {}
    waitFor(function()
      local r = again[#again]
      if r and r.pid then
        return true
      end
      if r == nil or r.done then
        again[#again + 1] = client(port)
      end
      return false
    end, 10000, "a new connection to be served after the clients left\n" .. c.stdout .. c.stderr:sub(-3000))
    assert.is_truthy(workers[again[#again].pid])
    closeAll(again)
  end)

  it('a master held at its fd limit sheds connections, logs once a second, stays idle, recovers', function()
    local c, port = startCluster()
    -- Nothing more can be opened in the master: every accept fails with EMFILE.
    prlimit(c.pid, fdCount(c.pid))
    local before = cpuTicks(c.pid)
    local logBefore = count(c.stderr .. c.stdout, 'EMFILE')
    local list = {}
    for _ = 1, 25 do
      for _ = 1, 4 do
        list[#list + 1] = client(port)
      end
      lctest.turn(100)
    end
    local ticks = cpuTicks(c.pid) - before
    local logLines = count(c.stderr .. c.stdout, 'EMFILE') - logBefore
    -- Waiting clients were closed (the spare-fd trick), not left in the backlog.
    assert.matches('closed %d+ waiting connections', c.stderr)
    -- 2.5 s at EMFILE: a spinning accept loop burns all of it (250 ticks).
    assert.is_true(ticks < 60, ('master used %d ticks of CPU in 2.5 s at EMFILE'):format(ticks))
    assert.is_true(logLines >= 1 and logLines <= 4, ('%d EMFILE lines in 2.5 s:\n%s'):format(logLines,
      c.stderr))
    assert.is_true(lctest.isAlive(c.pid), 'the master died')
    -- Descriptors again: accepting resumes by itself.
    prlimit(c.pid, 1024)
    local r = client(port)
    waitFor(function()
      return r.pid
    end, 5000, 'the cluster to serve again')
    r.close()
  end)

  it('a worker at its fd limit keeps its channel and connections; the other worker serves', function()
    local c, port, workers = startCluster()
    local pids = {}
    for pid in pairs(workers) do
      pids[#pids + 1] = pid
    end
    -- A few connections held by each worker before the limit.
    local early = {}
    for i = 1, 8 do
      early[i] = client(port)
    end
    waitFor(function()
      for _, r in ipairs(early) do
        if not r.pid then
          return false
        end
      end
      return true
    end, 10000, 'the early clients to be served')
    local limited = early[1].pid
    local other = limited == pids[1] and pids[2] or pids[1]
    prlimit(limited, fdCount(limited) + 3)

    local flood = {}
    for i = 1, 60 do
      flood[i] = client(port)
    end
    waitFor(function()
      for _, r in ipairs(flood) do
        if not r.pid and not r.done then
          return false
        end
      end
      return true
    end, 15000, 'every flood client to be served or closed')
    local byOther, byLimited = 0, 0
    for _, r in ipairs(flood) do
      if r.pid == other then
        byOther = byOther + 1
      elseif r.pid == limited then
        byLimited = byLimited + 1
      end
    end
    assert.is_true(byLimited <= 6, byLimited .. ' served by the worker at its limit')
    assert.are.equal(60 - byLimited, byOther, 'connections lost instead of going to the other worker')
    -- The limited worker is still there, with its channel and its connections.
    assert.is_true(lctest.isAlive(limited))
    assert.are.equal(0, count(c.stdout, 'exit %d'), 'a worker exited:\n' .. c.stdout)
    for _, r in ipairs(early) do
      if r.pid == limited then
        r.ping()
      end
    end
    waitFor(function()
      for _, r in ipairs(early) do
        if r.pid == limited and not r.text:find('pong') then
          return false
        end
      end
      return true
    end, 5000, 'the limited worker to answer its old connections')
    closeAll(early)
    closeAll(flood)
  end)
end)

describe('fork failure', function()
  after_each(function()
    lctest.cleanup()
  end)

  it('a respawn that fails with EMFILE is retried with backoff and the master stays up', function()
    local port = lctest.freePort()
    local c = lctest.spawn(FIX .. 'hard_accept.lua', { port }, { flags = { '-w', '2' } })
    c:waitOutput('started 2 workers', 10000, 'both')
    local pids = waitFor(function()
      local list = lctest.childPids(c.pid)
      return #list == 2 and list
    end, 10000, 'two workers')
    -- Below what the master holds now: the socketpair for a replacement cannot be made.
    prlimit(c.pid, fdCount(c.pid) - 1)
    assert(core.kill(pids[1], core.signals.SIGKILL))
    c:waitOutput('cannot start worker %d+: EMFILE[^\n]*retrying in %d+ ms', 10000, 'both')
    c:waitOutput('cannot start worker %d+: EMFILE[^\n]*retrying in 400 ms', 10000, 'both')
    assert.is_true(lctest.isAlive(c.pid), 'the master died')
    -- Descriptors are back: the retry starts the replacement by itself.
    prlimit(c.pid, 1024)
    waitFor(function()
      local list = lctest.childPids(c.pid)
      return #list == 2 and list[1] ~= pids[1] and list[2] ~= pids[1]
    end, 10000, 'the replacement worker')
    local r = client(port)
    waitFor(function()
      return r.pid
    end, 10000, 'the cluster to serve')
    r.close()
  end)
end)

describe('IPC', function()
  after_each(function()
    lctest.cleanup()
  end)

  local function result(mode, ms, env, extra)
    local c = lctest.spawn(FIX .. 'hard_ipc.lua', { mode, extra }, { env = env })
    local json = c:waitOutput('result (%b{})', ms or 20000)
    local code = c:waitExit(10000)
    assert.are.equal(0, code, c.stderr)
    return require('cjson').decode(json), c
  end

  it('process.send returns false above the high-water mark and emits drain; nothing is lost', function()
    -- The master stops reading until the worker saw false (it blocks opening this FIFO
    -- until the worker opens it), so the queue must build up whatever the machine's speed.
    local dir = lctest.tmpdir()
    local fifo = dir .. '/saw-false'
    assert(os.execute('mkfifo ' .. fifo) == 0)
    local ok, r = pcall(result, 'flood', 60000, nil, fifo)
    lctest.rmrf(dir)
    assert(ok, r)
    assert.is_number(r.firstFalse, 'process.send never returned false')
    -- Returned false early: well before 200,000 x 1 KB were queued.
    assert.is_true(r.firstFalse < 100000, 'first false after ' .. tostring(r.firstFalse) .. ' sends')
    assert.are.equal(r.falses, r.drains)
    assert.are.equal(200000, r.received)
    assert.are.equal(200000 * 1024, r.bytes)
  end)

  it('an over-size or over-deep message raises a named error and the channel stays usable', function()
    local r, c = result('limits', 30000)
    assert.matches('^ERR_IPC_MESSAGE_TOO_LARGE: the message is 268435457 bytes encoded, '
      .. 'over the limit of 268435456 bytes', r.big)
    assert.matches('hard_ipc%.lua:%d+: ERR_IPC_MESSAGE_TOO_LARGE: the message is 268435457 bytes encoded, '
      .. 'over the limit of 268435456 bytes', r.bigTable)
    assert.matches('ERR_INVALID_ARG_TYPE: .*nested deeper than 1000 levels', r.deep)
    assert.is_true(r.limitSent)
    assert.is_true(r.after)
    assert.matches('deep 999', c.stdout) -- {deep = <999 levels>}: 1000 in all
    -- The 1000-deep message and 'still working' both arrived.
    assert.are.equal(2, r.received)
  end)

  it('the encoder does not keep the buffer of a large (32 MB) message', function()
    -- ASan's quarantine would keep freed memory mapped; it is off for this measurement.
    local r = result('shrink', 30000, { ASAN_OPTIONS = 'quarantine_size_mb=0:detect_leaks=0' })
    local grown = (r.after - r.before) / 1048576
    -- Kept, lua-cjson's buffer would be 32-64 MB (it grows by doubling).
    -- (Measured: about 40 MB without the fix, 56 under ASan; 0 with it, 20 under ASan.)
    assert.is_true(grown < 30, ('worker RSS grew by %.0f MB after one 32 MB message'):format(grown))
  end)
end)
