-- Shared ports: servers and UDP sockets in workers share one port through the master
-- (lualib/cluster/_cluster_shared.lua, runtime/rr.c). Every case runs a real master with real workers
-- (spec/fixtures/shared_*.lua) and real loopback clients in this process; who holds which
-- socket is read from /proc.
local lctest = require('lctest')
local cjson = require('cjson')
local core = require('_core')
local net = require('net')
local dgram = require('dgram')

local FIX = 'spec/fixtures/'
local waitFor = lctest.waitFor

---------------------------------------------------------------------------------------------
-- Clients

-- Connects to 127.0.0.1:port (from `from`, a local address, when given) or to a Unix path,
-- reads until the server ends; returns a record {done, text, pid, err, sock}.
local function fetch(port, from, send)
  local r = { done = false, text = '' }
  local h
  h = core.tcp(function(ev, a)
    if ev == 'connect' then
      if a then
        r.err, r.done = a, true
        h:close()
        return
      end
      if send then
        h:write(send)
      end
      h:read_start()
    elseif ev == 'data' then
      r.text = r.text .. a
      r.pid = r.pid or tonumber(r.text:match('^(%d+)\n'))
    elseif ev == 'end' or ev == 'error' then
      if ev == 'error' then
        r.err = a
      end
      r.done = true
      h:close()
    end
  end)
  r.handle = h
  if from then
    assert(h:bind(from, 0))
  end
  assert(h:connect('127.0.0.1', port))
  return r
end

local function fetchPath(path)
  local r = { done = false, text = '' }
  local s = net.connect(path)
  s:on('error', function(err)
    r.err = err
  end)
  s:on('data', function(d)
    r.text = r.text .. d
    r.pid = r.pid or tonumber(r.text:match('^(%d+)\n'))
  end)
  s:on('close', function()
    r.done = true
  end)
  return r
end

local function waitAll(list, ms, what)
  lctest.waitAll(list, ms or 10000, what or 'every client to finish')
  for i, r in ipairs(list) do
    assert(r.err == nil, ('client %d failed: %s'):format(i, tostring(r.err)))
  end
  return list
end

-- n concurrent connections; returns {pid = count}, list.
local function spread(port, n, from)
  local list = {}
  for i = 1, n do
    list[i] = fetch(port, from)
  end
  waitAll(list, 15000)
  local count = {}
  for i, r in ipairs(list) do
    assert(r.pid, ('client %d got no pid: %q'):format(i, r.text))
    count[r.pid] = (count[r.pid] or 0) + 1
  end
  return count, list
end

local function closeClients(list)
  for _, r in ipairs(list) do
    if r.handle and not r.handle:is_closing() then
      r.handle:close()
    end
  end
end

---------------------------------------------------------------------------------------------
-- /proc

local function readFile(path)
  local f = io.open(path, 'r')
  if not f then
    return nil
  end
  local s = f:read('*a')
  f:close()
  return s
end

-- Inodes of the sockets in `table` (tcp, tcp6, udp, udp6) of pid's network namespace bound to
-- port, with state st ('0A' = LISTEN; nil = any).
local function socketInodes(pid, proto, port, st)
  local out = {}
  for _, t in ipairs({ proto, proto .. '6' }) do
    local text = readFile(('/proc/%d/net/%s'):format(pid, t)) or ''
    for line in text:gmatch('[^\n]+') do
      local lport, state, inode = line:match(
        '^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x%x)%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)')
      if lport and tonumber(lport, 16) == port and (st == nil or state == st) and inode ~= '0' then
        out[#out + 1] = inode
      end
    end
  end
  return out
end

-- The set of socket inodes pid holds open (readlink /proc/<pid>/fd/*).
local function fdInodes(pid)
  local set = {}
  local f = io.popen(('readlink /proc/%d/fd/* 2>/dev/null'):format(pid))
  for line in f:lines() do
    local inode = line:match('^socket:%[(%d+)%]$')
    if inode then
      set[inode] = true
    end
  end
  f:close()
  return set
end

-- Which of pids hold a socket among inodes: {pid = count}.
local function holders(pids, inodes)
  local out = {}
  for _, pid in ipairs(pids) do
    local set = fdInodes(pid)
    for _, inode in ipairs(inodes) do
      if set[inode] then
        out[pid] = (out[pid] or 0) + 1
      end
    end
  end
  return out
end

local function keys(t)
  local out = {}
  for k in pairs(t) do
    out[#out + 1] = k
  end
  table.sort(out)
  return out
end

local function count(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do
    n = n + 1
  end
  return n
end

-- Waits until the child printed n lines matching pattern; returns the first captures of each.
local function waitCount(c, pattern, n, ms)
  local ok, err = pcall(waitFor, function()
    return count(c.stdout, pattern) >= n
  end, ms or 10000, n .. ' lines matching ' .. pattern)
  if not ok then
    error(('%s\n--- stdout:\n%s\n--- stderr:\n%s'):format(err, c.stdout, c.stderr), 2)
  end
  local out = {}
  for cap in c.stdout:gmatch(pattern) do
    out[#out + 1] = cap
  end
  return out
end

---------------------------------------------------------------------------------------------
-- The driven master (spec/fixtures/shared_master.lua)

local Master = {}
Master.__index = Master
local statsSeq = 0

local function master(n, env)
  local c = lctest.spawn(FIX .. 'shared_master.lua', { n or 2 }, { stdin = 'pipe', env = env })
  local m = setmetatable({ c = c, pids = {}, list = {} }, Master)
  for id = 1, n or 2 do
    m.pids[id] = tonumber(c:waitOutput('M online ' .. id .. ' (%d+)\n', 10000))
    m.list[id] = m.pids[id]
  end
  return m
end

function Master:cmd(line)
  self.c:write(line .. '\n')
end

function Master:send(target, msg)
  self:cmd('send ' .. target .. ' ' .. cjson.encode(msg))
end

function Master:wait(pattern, ms)
  return self.c:waitOutput(pattern, ms or 8000)
end

-- Asks worker(s) to listen; returns the port (or path) worker `id` reports.
function Master:listen(target, tag, args, extra)
  local msg = { op = 'listen', tag = tag, args = args }
  for k, v in pairs(extra or {}) do
    msg[k] = v
  end
  self:send(target, msg)
  local ids = target == 'all' and keys(self.pids) or { target }
  local port
  for _, id in ipairs(ids) do
    local p = self:wait('W' .. id .. ' listening ' .. tag .. ' (%S+)\n')
    port = tonumber(p) or p
  end
  return port
end

function Master:stats()
  statsSeq = statsSeq + 1
  local tag = 's' .. statsSeq
  self:cmd('stats ' .. tag)
  return cjson.decode(self:wait('M stats ' .. tag .. ' ([^\n]*)\n'))
end

-- The one rr key's stats.
function Master:keyStats()
  local s = self:stats()
  local k = next(s)
  return s[k]
end

local function pidsOf(m)
  local out = { m.c.pid }
  for _, p in ipairs(m.list) do
    out[#out + 1] = p
  end
  return out
end

---------------------------------------------------------------------------------------------

describe('shared ports: the seed 004 launcher', function()
  after_each(lctest.cleanup)

  it('TCP app: only the master holds the LISTEN socket, and new connections reach every worker', function()
    local port = lctest.freePort()
    local c = lctest.spawn(FIX .. 'shared_launcher.lua', { 'tcp', port, 3 })
    local workers = {}
    for i, pid in ipairs(waitCount(c, 'master: worker (%d+) listening on port ' .. port .. '\n', 3)) do
      workers[i] = tonumber(pid)
    end
    assert.are.equal(3, #lctest.childPids(c.pid))

    local inodes = socketInodes(c.pid, 'tcp', port, '0A')
    assert.are.equal(1, #inodes, 'one LISTEN socket on the port')
    local held = holders({ c.pid, workers[1], workers[2], workers[3] }, inodes)
    assert.are.same({ [c.pid] = 1 }, held)

    -- ss names the same single holder.
    local f = io.popen(('ss -Hltnp sport = :%d 2>/dev/null'):format(port))
    local ss = f:read('*a')
    f:close()
    if ss ~= '' then
      assert.are.equal(1, count(ss, 'LISTEN'))
      assert.truthy(ss:find('pid=' .. c.pid .. ',', 1, true), ss)
      for _, w in ipairs(workers) do
        assert.falsy(ss:find('pid=' .. w .. ',', 1, true), ss)
      end
    end

    -- Sequential HTTP requests, one connection each: every worker serves some.
    local served = {}
    for _ = 1, 12 do
      local r = waitAll({ fetch(port, nil, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n') })[1]
      local pid = tonumber(r.text:match('hello world from (%d+)'))
      assert(pid, r.text)
      served[pid] = (served[pid] or 0) + 1
    end
    table.sort(workers)
    assert.are.same(workers, keys(served))
  end)

  it('UDP app: the workers share one socket inode and each datagram of a burst arrives once', function()
    local port = lctest.freePort()
    local c = lctest.spawn(FIX .. 'shared_launcher.lua', { 'udp', port, 3 })
    waitCount(c, 'server listening 127%.0%.0%.1:' .. port .. '\n', 3)
    local workers = lctest.childPids(c.pid)
    assert.are.equal(3, #workers)
    local inodes = socketInodes(c.pid, 'udp', port)
    assert.are.equal(1, #inodes, 'one UDP socket on the port')
    local all = { c.pid }
    for _, w in ipairs(workers) do
      all[#all + 1] = w
    end
    local held = holders(all, inodes)
    for _, pid in ipairs(all) do
      assert.are.equal(1, held[pid], 'process ' .. pid .. ' holds the shared socket')
    end

    local N = 100
    local s = dgram.createSocket('udp4')
    local sent = 0
    for i = 1, N do
      s:send('d' .. i, port, '127.0.0.1', function()
        sent = sent + 1
      end)
    end
    waitFor(function()
      return sent == N and count(c.stdout, 'got: d%d+ from') >= N
    end, 10000, 'every datagram')
    local closed = false
    s:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000)
    local seen, byPid = {}, {}
    for pid, d in c.stdout:gmatch('server (%d+) got: d(%d+) from') do
      assert.is_nil(seen[d], 'datagram ' .. d .. ' arrived twice')
      seen[d] = true
      byPid[tonumber(pid)] = true
    end
    for i = 1, N do
      assert.is_true(seen[tostring(i)], 'datagram ' .. i)
    end
    for pid in pairs(byPid) do
      assert.truthy(held[pid], 'a receiver is a worker')
    end
    assert.is_nil(byPid[c.pid], 'the master reads nothing')
  end)
end)

describe('shared ports: listening', function()
  after_each(lctest.cleanup)

  it("port 0: every worker's first listen(0) shares a port, a second gets another; 'listening' has it", function()
    local m = master(2)
    m:send(1, { op = 'listen', tag = 'a', args = { 0, '127.0.0.1' } })
    local p1 = tonumber(m:wait('W1 listening a (%d+)\n'))
    m:send(2, { op = 'listen', tag = 'a', args = { 0, '127.0.0.1' } })
    local p2 = tonumber(m:wait('W2 listening a (%d+)\n'))
    assert.are.equal(p1, p2)
    assert.is_true(p1 > 0)
    assert.are.equal(p1, tonumber(m:wait('M listening 1 127%.0%.0%.1 (%d+)\n')))
    assert.are.equal(p1, tonumber(m:wait('M listening 2 127%.0%.0%.1 (%d+)\n')))

    -- Second concurrent listen(0) in each worker: a port of its own, shared by the seconds.
    local q1 = m:listen(1, 'b', { 0, '127.0.0.1' })
    local q2 = m:listen(2, 'b', { 0, '127.0.0.1' })
    assert.are_not.equal(p1, q1)
    assert.are.equal(q1, q2)

    -- Both ports serve, through both workers.
    local c1 = spread(p1, 20)
    local c2 = spread(q1, 20)
    assert.are.same({ m.pids[1], m.pids[2] }, keys(c1))
    assert.are.same({ m.pids[1], m.pids[2] }, keys(c2))
  end)

  it('EADDRINUSE in the master reaches the worker as an error, and a retry succeeds once the port is free', function()
    local blocker = net.createServer()
    local up = false
    blocker:listen(0, '127.0.0.1', function()
      up = true
    end)
    waitFor(function()
      return up
    end, 2000)
    local port = blocker:address().port
    local m = master(2)
    m:send(1, { op = 'listen', tag = 'x', args = { port, '127.0.0.1' } })
    local code, message = m:wait('W1 error x (%S+) ([^\n]*)\n')
    assert.are.equal('EADDRINUSE', code)
    assert.truthy(message:find('EADDRINUSE', 1, true))
    -- Nothing is kept for the key in the master.
    assert.are.same({}, m:stats())

    local closed = false
    blocker:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000)
    m:send(1, { op = 'listen', tag = 'y', args = { port, '127.0.0.1' } })
    assert.are.equal(port, tonumber(m:wait('W1 listening y (%d+)\n')))
    local r = waitAll({ fetch(port) })[1]
    assert.are.equal(m.pids[1], r.pid)
  end)

  it('SCHED_NONE: each worker gets the listening socket and accepts on it', function()
    local m = master(2, { LCLUSTER_SCHED_POLICY = 'none' })
    local port = lctest.freePort()
    m:listen('all', 'n', { port, '127.0.0.1' })
    local inodes = socketInodes(m.c.pid, 'tcp', port, '0A')
    assert.are.equal(1, #inodes)
    local held = holders(pidsOf(m), inodes)
    assert.are.same({ [m.c.pid] = 1, [m.pids[1]] = 1, [m.pids[2]] = 1 }, held)
    -- No hand-off in the master.
    assert.are.same({}, m:keyStats().sent)

    -- With one worker stopped, the other accepts; then the other way round.
    for _, stopped in ipairs({ 1, 2 }) do
      local other = 3 - stopped
      core.kill(m.pids[stopped], core.signals.SIGSTOP)
      local ok, served = pcall(spread, port, 5)
      core.kill(m.pids[stopped], core.signals.SIGCONT)
      assert(ok, served)
      assert.are.same({ [m.pids[other]] = 5 }, served)
    end
  end)

  it('exclusive = true: each worker binds its own socket (TCP and UDP)', function()
    local m = master(2)
    local p1 = m:listen(1, 'e', { { port = 0, host = '127.0.0.1', exclusive = true } })
    local p2 = m:listen(2, 'e', { { port = 0, host = '127.0.0.1', exclusive = true } })
    assert.are_not.equal(p1, p2)
    local i1 = socketInodes(m.c.pid, 'tcp', p1, '0A')
    assert.are.same({ [m.pids[1]] = 1 }, holders(pidsOf(m), i1))
    assert.are.same({ [m.pids[1]] = 3 }, spread(p1, 3))
    assert.are.same({}, m:stats())

    m:send(1, { op = 'bind', tag = 'u', args = { { port = 0, address = '127.0.0.1', exclusive = true } } })
    local up = tonumber(m:wait('W1 listening u (%d+)\n'))
    local iu = socketInodes(m.c.pid, 'udp', up)
    assert.are.same({ [m.pids[1]] = 1 }, holders(pidsOf(m), iu))
  end)

  it('serves a Unix socket path through the master and removes the file when the last worker closes', function()
    local dir = lctest.tmpdir()
    local path = dir .. '/s.sock'
    local m = master(2)
    assert.are.equal(path, m:listen('all', 'p', { { path = path } }))
    assert.are.equal(0, os.execute('test -S ' .. path))
    local list = {}
    for i = 1, 10 do
      list[i] = fetchPath(path)
    end
    waitAll(list)
    local served = {}
    for _, r in ipairs(list) do
      served[r.pid] = true
    end
    assert.are.same({ m.pids[1], m.pids[2] }, keys(served))

    m:send(1, { op = 'close', tag = 'p' })
    m:wait('W1 closed p\n')
    -- Still served, by the other worker only.
    local again = waitAll({ fetchPath(path), fetchPath(path) })
    assert.are.equal(m.pids[2], again[1].pid)
    assert.are.equal(m.pids[2], again[2].pid)
    assert.are.equal(0, os.execute('test -S ' .. path))
    m:send(2, { op = 'close', tag = 'p' })
    m:wait('W2 closed p\n')
    waitFor(function()
      return os.execute('test -e ' .. path) ~= 0
    end, 3000, 'the socket file to be removed')
    lctest.rmrf(dir)
  end)

  it('a closed key frees the port: after every worker closed, the port can be bound again', function()
    local m = master(2)
    local port = m:listen('all', 'c', { 0, '127.0.0.1' })
    m:send('all', { op = 'close', tag = 'c' })
    m:wait('W1 closed c\n')
    m:wait('W2 closed c\n')
    waitFor(function()
      return #socketInodes(m.c.pid, 'tcp', port, '0A') == 0
    end, 3000, 'the LISTEN socket to go')
    local s = net.createServer()
    local ok, failed = false, nil
    s:on('error', function(e)
      failed = e
    end)
    s:listen(port, '127.0.0.1', function()
      ok = true
    end)
    waitFor(function()
      return ok or failed
    end, 2000)
    assert.is_nil(failed)
    local closed = false
    s:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000)
  end)
end)

describe('shared ports: closing early', function()
  after_each(lctest.cleanup)

  it('a server or udp socket closed before the master answered leaves nothing in the master', function()
    local m = master(1)
    local port = lctest.freePort()
    m:send(1, { op = 'listenclose', tag = 'q', args = { port, '127.0.0.1' } })
    m:wait('W1 closed q\n')
    waitFor(function()
      return next(m:stats()) == nil and #socketInodes(m.c.pid, 'tcp', port, '0A') == 0
        and #socketInodes(m.c.pid, 'udp', port) == 0
    end, 5000, 'the master to let go of the keys')
    -- The same worker can listen on the port again, and serves.
    assert.are.equal(port, m:listen(1, 'q2', { port, '127.0.0.1' }))
    assert.are.equal(m.pids[1], waitAll({ fetch(port) })[1].pid)
  end)
end)

describe('shared ports: round-robin hand-off', function()
  after_each(lctest.cleanup)

  it('spreads 200 concurrent connections over every worker within 25% of even', function()
    local m = master(3)
    local port = m:listen('all', 'r', { 0, '127.0.0.1' })
    -- Warm up first: a worker's first connections run while LuaJIT compiles their path, and
    -- the master rightly sends less to a worker that is slow to take what it has. The
    -- balance checked is the steady state's.
    spread(port, 60)
    local counts = spread(port, 200)
    assert.are.same(keys({ [m.pids[1]] = 1, [m.pids[2]] = 1, [m.pids[3]] = 1 }), keys(counts))
    for pid, n in pairs(counts) do
      assert(n >= 200 / 3 * 0.75 and n <= 200 / 3 * 1.25,
        ('worker %d served %d of 200'):format(pid, n))
    end
    -- Every hand-off was acknowledged.
    waitFor(function()
      local s = m:keyStats()
      return s.inflight['1'] == 0 and s.inflight['2'] == 0 and s.inflight['3'] == 0
    end, 5000, 'the acks')
  end)

  it('loses no connection queued for a worker killed with SIGKILL: the other worker answers', function()
    local m = master(2)
    local port = m:listen('all', 'k', { 0, '127.0.0.1' })
    m:send(2, { op = 'hang' })
    m:wait('W2 hanging\n')
    local list = {}
    for i = 1, 40 do
      list[i] = fetch(port)
    end
    -- Worker 1 answers its share; worker 2 holds some unacknowledged.
    waitFor(function()
      local s = m:keyStats()
      local done = 0
      for _, r in ipairs(list) do
        done = done + (r.done and 1 or 0)
      end
      return s.inflight['2'] and s.inflight['2'] > 0 and s.sent['1'] + s.sent['2'] == 40
        and done == s.sent['1']
    end, 8000, 'the connections to be handed out')
    local queued = m:keyStats().inflight['2']
    assert.is_true(queued >= 1)
    core.kill(m.pids[2], core.signals.SIGKILL)
    m:wait('M exit 2 nil SIGKILL\n')
    waitAll(list, 10000)
    for i, r in ipairs(list) do
      assert.are.equal(m.pids[1], r.pid, 'client ' .. i .. ': ' .. r.text)
    end
    -- Worker 2 never acknowledged anything: every connection ended up handed to worker 1.
    local s = m:keyStats()
    assert.are.equal(40, s.sent['1'])
    assert.is_nil(s.sent['2'])
  end)

  it('sticky: a client address always reaches the same worker', function()
    local m = master(3)
    local port = m:listen('all', 's', { { port = 0, host = '127.0.0.1', balance = 'sticky' } })
    local byAddr, used = {}, {}
    for round = 1, 3 do
      for i = 2, 13 do
        local from = '127.0.0.' .. i
        local got = spread(port, 4, from)
        local pids = keys(got)
        assert.are.equal(1, #pids, from .. ' went to several workers')
        if round == 1 then
          byAddr[from] = pids[1]
          used[pids[1]] = true
        else
          assert.are.equal(byAddr[from], pids[1], from .. ' changed worker')
        end
      end
    end
    assert.is_true(#keys(used) >= 2, 'the addresses spread over several workers')
  end)

  it('sticky: a stalled worker does not stop the others being served', function()
    local m = master(2)
    local port = m:listen('all', 't', { { port = 0, host = '127.0.0.1', balance = 'sticky' } })
    -- Two client addresses that map to different workers.
    local owner, addrA, addrB = {}, nil, nil
    for i = 2, 40 do
      local from = '127.0.0.' .. i
      local pid = keys(spread(port, 1, from))[1]
      owner[from] = pid
      if not addrA then
        addrA = from
      elseif owner[addrA] ~= pid then
        addrB = from
        break
      end
    end
    assert.is_truthy(addrB, 'two addresses on different workers')
    local stalled = owner[addrA]
    core.kill(stalled, core.signals.SIGSTOP)
    finally(function()
      core.kill(stalled, core.signals.SIGCONT)
    end)
    -- More connections for the stalled worker than its window of unacknowledged hand-offs.
    local waiting = {}
    for i = 1, 80 do
      waiting[i] = fetch(port, addrA)
    end
    lctest.turn(200)
    local other = fetch(port, addrB)
    waitAll({ other }, 5000, 'the other worker to answer while one is stalled')
    assert.are.equal(owner[addrB], other.pid)
    core.kill(stalled, core.signals.SIGCONT)
    waitAll(waiting, 10000, 'the stalled worker to answer its clients')
    for _, r in ipairs(waiting) do
      assert.are.equal(stalled, r.pid)
    end
  end)

  it("least: long-lived connections on one worker push new ones to the other", function()
    local m = master(2)
    local port = m:listen(1, 'l', { { port = 0, host = '127.0.0.1', balance = 'least' } }, { hold = true })
    assert.are.equal(port, m:listen(2, 'l', { { port = 0, host = '127.0.0.1', balance = 'least' } }))
    -- Worker 1 keeps its connections open; worker 2 ends them. One at a time, each after the
    -- master has the workers' counts.
    local held, byPid = {}, {}
    for _ = 1, 10 do
      local r = fetch(port)
      waitFor(function()
        return r.pid ~= nil
      end, 5000, 'an answer')
      byPid[r.pid] = (byPid[r.pid] or 0) + 1
      if r.pid == m.pids[1] then
        held[#held + 1] = r
      else
        waitAll({ r })
      end
      waitFor(function()
        local s = m:keyStats()
        return s.load['1'] == #held and s.load['2'] == 0
      end, 5000, 'the load reports')
    end
    assert.are.equal(1, byPid[m.pids[1]])
    assert.are.equal(9, byPid[m.pids[2]])
    -- Closing the held connection brings worker 1 back to 0, and it gets the next one.
    closeClients(held)
    waitFor(function()
      return m:keyStats().load['1'] == 0
    end, 5000, 'worker 1 to report no connection')
    local r = fetch(port)
    waitFor(function()
      return r.pid ~= nil
    end, 5000)
    closeClients({ r })
  end)

  it('reuseport: each worker holds its own LISTEN socket on one port, and the kernel spreads', function()
    local m = master(2)
    local port = m:listen('all', 'u', { { port = 0, host = '127.0.0.1', balance = 'reuseport' } })
    local inodes = socketInodes(m.c.pid, 'tcp', port, '0A')
    assert.are.equal(2, #inodes)
    assert.are.same({ [m.pids[1]] = 1, [m.pids[2]] = 1 }, holders(pidsOf(m), inodes))
    local counts = spread(port, 60)
    assert.are.same({ m.pids[1], m.pids[2] }, keys(counts))
    assert.are.same({}, m:stats(), 'the master hands nothing off')
  end)
end)

describe('shared ports: bad input', function()
  after_each(lctest.cleanup)

  it('invalid ports, addresses and options raise clear errors in a worker', function()
    local m = master(1)
    m:send(1, { op = 'bad' })
    m:wait('W1 bad done\n', 10000)
    local out = {}
    for what, msg in m.c.stdout:gmatch('W1 bad (%S+) ([^\n]*)\n') do
      out[what] = msg
    end
    local want = {
      ['port-negative'] = 'ERR_SOCKET_BAD_PORT', ['port-big'] = 'ERR_SOCKET_BAD_PORT',
      ['port-float'] = 'ERR_SOCKET_BAD_PORT', ['port-string'] = 'ERR_SOCKET_BAD_PORT',
      ['no-port'] = 'ERR_INVALID_ARG_VALUE', balance = 'ERR_INVALID_ARG_VALUE',
      option = 'ERR_INVALID_ARG_VALUE', ['host-type'] = 'ERR_INVALID_ARG_TYPE',
      backlog = 'ERR_INVALID_ARG_VALUE', ['path-empty'] = 'ERR_INVALID_ARG_VALUE',
      ['server-option'] = 'ERR_INVALID_ARG_VALUE', ['udp-port'] = 'ERR_SOCKET_BAD_PORT',
      ['udp-option'] = 'ERR_INVALID_ARG_VALUE', ['udp-type'] = 'ERR_SOCKET_BAD_TYPE',
      ['foreign-host'] = 'EADDRNOTAVAIL', ['bad-name'] = 'E',
    }
    for what, code in pairs(want) do
      assert.truthy(out[what], 'no line for ' .. what)
      assert.truthy(out[what]:find(code, 1, true), ('%s: %s (want %s)'):format(what, out[what], code))
    end
    -- Nothing stays open in the master.
    assert.are.same({}, m:stats())
  end)

  it('bogus internal-looking messages cannot hurt the master; user messages stay user messages', function()
    local m = master(2)
    local port = m:listen('all', 'g', { 0, '127.0.0.1' })
    m:send(1, { op = 'bogus' })
    m:wait('W1 bogus sent\n')
    m:wait('M message 1 ([^\n]*"rrack"[^\n]*)\n')
    local msgs = {}
    for json in m.c.stdout:gmatch('M message 1 ([^\n]*) false\n') do
      msgs[#msgs + 1] = cjson.decode(json)
    end
    assert.are.equal(3, #msgs)
    assert.are.equal('queryServer', msgs[1].cmd)
    assert.are.equal('newconn', msgs[2].cmd)
    assert.are.equal('rrack', msgs[3].cmd)
    -- The master still serves through both workers, and holds nothing it should not.
    local counts = spread(port, 20)
    assert.are.same({ m.pids[1], m.pids[2] }, keys(counts))
    local s = m:stats()
    assert.are.equal(1, #keys(s), 'one key: ' .. cjson.encode(s))
    assert.falsy(m.c.exited)
    assert.is_nil(m.c.stdout:find('M exit', 1, true), 'no worker died:\n' .. m.c.stdout .. m.c.stderr)
    assert.are.equal(1, #socketInodes(m.c.pid, 'tcp', port, '0A'))
  end)
end)
