-- `lcluster upgrade` (docs/api.md "Upgrading the binary"): a running -w master starts a new
-- master from the binary on disk that inherits its listening sockets, and drains once the
-- new one is ready. Real processes, sockets and a client loop running through the upgrade.
local lctest = require('lctest')
local dgram = require('dgram')
local cjson = require('cjson')
local core = require('_core')

local FIX = 'spec/fixtures/'

-- A cluster of a copy of upgrade_app.lua (the failure cases rewrite it) in a fresh folder.
-- extra: {flags=, env=} added to the master's.
local function start(balance, n, extra)
  local dir = lctest.tmpdir()
  local src = assert(io.open(FIX .. 'upgrade_app.lua', 'r'))
  lctest.writeFile(dir .. '/app.lua', src:read('*a'))
  src:close()
  local c = { dir = dir, run = dir .. '/run', port = lctest.freePort(), fail = dir .. '/fail',
    balance = balance }
  c.uport = lctest.freePort()
  c.env = { LCLUSTER_RUN_DIR = c.run, UPGRADE_FAIL_FILE = c.fail }
  -- The ready timeout is long: a new master (and its workers) must not be given up on because
  -- a loaded machine started it slowly; the never-ready case sets a short one itself.
  local flags = { '-w', tostring(n or 2), '--ready-timeout', '60000', '--kill-timeout', '3000' }
  for _, f in ipairs(extra and extra.flags or {}) do
    flags[#flags + 1] = f
  end
  for k, v in pairs(extra and extra.env or {}) do
    c.env[k] = v
  end
  c.app = lctest.spawn(dir .. '/app.lua', { c.port, c.uport, balance }, { flags = flags, env = c.env,
    binary = extra and extra.binary })
  c.app:waitOutput(('worker ready.*'):rep(n or 2), 8000)
  c.app:waitOutput('started %d+ workers', 8000, 'both')
  return c
end

-- `lcluster ARGS...` to its end: code, stdout, stderr.
local function ctl(c, args, ms)
  local child = lctest.spawn(nil, nil, { flags = args, env = { LCLUSTER_RUN_DIR = c.run } })
  local code = child:waitExit(ms or 10000)
  return code, child.stdout, child.stderr
end

local function status(c)
  local code, out, err = ctl(c, { 'status', '--json' })
  assert.are.equal(0, code, err)
  return cjson.decode(out)
end

local function workerPids(st)
  local pids = {}
  for _, r in ipairs(st.processes) do
    if r.proc:match('^w%d') then
      pids[#pids + 1] = r.pid
    end
  end
  return pids
end

-- The old master's stdout/stderr pipes stay open in the new master, so the spec stops the new
-- one through the control socket (and by pid if that fails), then reaps the old one.
local function finish(c)
  pcall(ctl, c, { 'stop' }, 10000)
  if c.newPid and lctest.isAlive(c.newPid) then
    os.execute('kill -9 ' .. c.newPid .. ' 2>/dev/null')
  end
  if not c.app.exited then
    c.app:kill('SIGTERM')
  end
  c.app:waitExit(10000)
  lctest.rmrf(c.dir)
end

-- waitFor on a condition no event of this process signals (another process's exit).
local poll = lctest.poll

-- One GET with Connection: close (a new connection each time, so every request goes through
-- an accept): calls cb(err, status, body).
local function get(port, path, cb)
  lctest.get(port, path, { headers = { Connection = 'close' }, onDone = function(r)
    cb(r.err, r.status, r.body)
  end })
end

-- `conc` loops of sequential GETs until stop() and each has seen the new master; counts
-- answers per master pid and failures.
local function clientLoop(port, conc)
  local L = { ok = 0, failed = 0, errors = {}, byMaster = {}, running = conc, stopping = false }
  local function loop(seenNew)
    get(port, '/', function(err, code, body)
      local master = body and tonumber(body:match('master (%d+)'))
      if err or code ~= 200 then
        L.failed = L.failed + 1
        L.errors[#L.errors + 1] = err or ('status ' .. tostring(code))
      else
        L.ok = L.ok + 1
        L.byMaster[master] = (L.byMaster[master] or 0) + 1
      end
      seenNew = seenNew or (L.newMaster and master == L.newMaster)
      if L.stopping and seenNew then
        L.running = L.running - 1
        return
      end
      loop(seenNew)
    end)
  end
  for _ = 1, conc do
    loop(false)
  end
  function L.stop(newMaster)
    L.newMaster, L.stopping = newMaster, true
    lctest.waitFor(function()
      return L.running == 0
    end, 10000, 'the client loops to finish')
  end
  return L
end

-- One datagram to the UDP echo: the answer, waited for.
local function udpAsk(port)
  local s = dgram.createSocket('udp4')
  local answer
  s:on('message', function(msg)
    answer = msg
  end)
  s:send('hi', port, '127.0.0.1')
  lctest.waitFor(function()
    return answer
  end, 5000, 'a UDP answer')
  s:close()
  return answer
end

describe('lcluster upgrade', function()
  after_each(function()
    lctest.cleanup()
    lctest.closeTracked()
  end)

  for _, balance in ipairs({ 'rr', 'none' }) do
    it(('replaces the master under a client loop without a failed request (%s, UDP, --metrics, NOTIFY_SOCKET)'):format(
      balance), function()
      -- A NOTIFY_SOCKET receiver as systemd's (service_spec.lua does the same), and --metrics.
      local dir = lctest.tmpdir()
      local npath = dir .. '/notify'
      local nfd = assert(core.sd_recv_bind(npath))
      local msgs = {}
      local function notes()
        while true do
          local m = core.sd_recv(nfd)
          if not m then
            break
          end
          msgs[#msgs + 1] = m
        end
        return table.concat(msgs, '\n')
      end
      local mport = lctest.freePort()
      local c = start(balance, 2, { flags = { '--metrics', '127.0.0.1:' .. mport }, env = { NOTIFY_SOCKET = npath } })
      local ok, err = pcall(function()
        poll(function()
          return notes():find('READY=1', 1, true)
        end, 5000, 'READY=1 from the first master')
        local before = status(c)
        local oldPid = c.app.pid
        assert.are.equal(oldPid, before.pid)
        assert.is_truthy(udpAsk(c.uport):match('master ' .. oldPid))
        -- In flight on the old workers while the old master drains: served to the end.
        local slow = {}
        for i = 1, 4 do
          get(c.port, '/slow?ms=700', function(e, code, body)
            slow[i] = { err = e, code = code, body = body }
          end)
        end
        local loop = clientLoop(c.port, 4)
        lctest.waitFor(function()
          return loop.ok >= 20
        end, 5000, 'requests before the upgrade')
        local up = lctest.spawn(nil, nil, { flags = { 'upgrade' }, env = { LCLUSTER_RUN_DIR = c.run } })
        local code = up:waitExit(15000)
        assert.are.equal(0, code, up.stderr .. c.app.stderr)
        local newPid = tonumber(up.stdout:match('master pid (%d+)'))
        c.newPid = newPid
        assert.is_number(newPid)
        assert.are_not.equal(oldPid, newPid)
        -- upgrade returns once the old master has exited.
        assert.is_truthy(up.stdout:find('old master %(pid ' .. oldPid .. '%) exited'))
        lctest.waitFor(function()
          return c.app.exited
        end, 5000, 'the old master to exit')
        assert.are.equal(0, c.app.code)
        loop.stop(newPid)
        assert.are.same({}, loop.errors)
        assert.are.equal(0, loop.failed)
        assert.is_true((loop.byMaster[oldPid] or 0) > 0)
        assert.is_true((loop.byMaster[newPid] or 0) > 0)
        for i = 1, 4 do
          assert.is_table(slow[i], 'slow request ' .. i .. ' still open')
          assert.is_nil(slow[i].err)
          assert.are.equal(200, slow[i].code)
          assert.is_truthy(slow[i].body:match('master ' .. oldPid))
        end
        -- The old workers are gone; the new master answers status and serves both ports.
        for _, pid in ipairs(workerPids(before)) do
          assert.is_false(lctest.isAlive(pid), 'old worker ' .. pid .. ' still runs')
        end
        local after = status(c)
        assert.are.equal(newPid, after.pid)
        assert.are.equal(2, after.ready)
        assert.is_truthy(udpAsk(c.uport):match('master ' .. newPid))
        -- systemd follows the new master; the old one said nothing more (no STOPPING=1).
        local sent = notes()
        local at = sent:find('MAINPID=' .. newPid, 1, true)
        assert.is_number(at, sent)
        assert.is_nil(sent:find('STOPPING=1', 1, true), sent)
        -- The metrics port went along: the new master answers it.
        local mst
        get(mport, '/status', function(_, _, body)
          mst = body or ''
        end)
        lctest.waitFor(function()
          return mst
        end, 5000, 'GET /status')
        assert.are.equal(newPid, cjson.decode(mst).pid)
        -- And once more: a master started by an upgrade upgrades too (it renamed its control
        -- socket into place).
        local code2, out2, err2 = ctl(c, { 'upgrade' }, 15000)
        assert.are.equal(0, code2, err2)
        local third = tonumber(out2:match('master pid (%d+)'))
        c.newPid = third
        poll(function()
          return not lctest.isAlive(newPid)
        end, 5000, 'the second master to exit')
        assert.are.equal(third, status(c).pid)
        poll(function()
          return notes():find('MAINPID=' .. third, 1, true)
        end, 5000, 'MAINPID= of the third master')
      end)
      finish(c)
      core.ipc_closefd(nfd)
      lctest.rmrf(dir)
      assert(ok, err)
    end)
  end

  it('keeps the old master serving when the new one never becomes ready', function()
    local c = start('rr', nil, { flags = { '--ready-timeout', '2000' } })
    local ok, err = pcall(function()
      lctest.writeFile(c.fail, 'fail\n')
      local loop = clientLoop(c.port, 2)
      local up = lctest.spawn(nil, nil, { flags = { 'upgrade' }, env = { LCLUSTER_RUN_DIR = c.run } })
      c.app:waitOutput('upgrade: starting', 5000, 'both')
      local code = up:waitExit(15000)
      local stderr = up.stderr
      assert.are.equal(1, code)
      assert.is_truthy(stderr:find('ETIMEDOUT', 1, true), stderr)
      local newPid = tonumber(stderr:match('new master %(pid (%d+)%)'))
      assert.is_number(newPid)
      c.newPid = newPid
      assert.is_false(lctest.isAlive(newPid))
      assert.is_false(c.app.exited)
      assert.are.equal(c.app.pid, status(c).pid)
      loop.stop(c.app.pid)
      assert.are.same({}, loop.errors)
      assert.is_true(loop.byMaster[c.app.pid] > 0)
      c.newPid = nil
    end)
    finish(c)
    assert(ok, err)
  end)

  it('runs the binary now at the path the old one started from (a replaced file)', function()
    -- A copy of the binary, replaced by another file (a new inode: the old master's
    -- /proc/self/exe now reads "PATH (deleted)") before the upgrade.
    local bdir = lctest.tmpdir()
    local bin = bdir .. '/lcluster'
    assert.are.equal(0, os.execute(("cp '%s' '%s'"):format(lctest.binary, bin)))
    local c = start('rr', 1, { binary = bin })
    local ok, err = pcall(function()
      assert.are.equal(0, os.execute(("cp '%s' '%s.new' && mv '%s.new' '%s'"):format(bin, bin, bin, bin)))
      local function exe(pid)
        local p = io.popen('readlink /proc/' .. pid .. '/exe')
        local out = p:read('*l')
        p:close()
        return out
      end
      assert.are.equal(bin .. ' (deleted)', exe(c.app.pid))
      local code, out, stderr = ctl(c, { 'upgrade' }, 15000)
      assert.are.equal(0, code, stderr)
      c.newPid = tonumber(out:match('master pid (%d+)'))
      assert.are.equal(bin, exe(c.newPid))
    end)
    finish(c)
    lctest.rmrf(bdir)
    assert(ok, err)
  end)

  it('keeps a worker count changed by scale (the command line says 1)', function()
    local c = start('rr', 1)
    local ok, err = pcall(function()
      local scode, _, serr = ctl(c, { 'scale', '3' }, 15000)
      assert.are.equal(0, scode, serr)
      assert.are.equal(3, #workerPids(status(c)))
      local code, out, stderr = ctl(c, { 'upgrade' }, 15000)
      assert.are.equal(0, code, stderr)
      c.newPid = tonumber(out:match('master pid (%d+)'))
      assert.is_number(c.newPid)
      local st = status(c)
      assert.are.equal(c.newPid, st.pid)
      assert.are.equal(3, st.workers)
      assert.are.equal(3, #workerPids(st))
      -- The variable went no further than the new master: its workers do not see it.
      for _, pid in ipairs(workerPids(st)) do
        local f = assert(io.open('/proc/' .. pid .. '/environ', 'rb'))
        local environ = f:read('*a')
        f:close()
        assert.is_nil(environ:find('LCLUSTER_UPGRADE_WORKERS', 1, true))
      end
    end)
    finish(c)
    assert(ok, err)
  end)

  it('runs one upgrade at a time; stops the new master too when the old one is stopped during it', function()
    -- The second upgrade and the stop must come while the upgrade waits: with a 2 s
    -- --ready-timeout a loaded machine could take longer to run `lcluster stop` (or
    -- `upgrade`), and the upgrade ended first (ETIMEDOUT). The new master never becomes
    -- ready, so only the stop ends it here (start's ready timeout is 60 s).
    local c = start('rr')
    local ok, err = pcall(function()
      lctest.writeFile(c.fail, 'fail\n')
      local up = lctest.spawn(nil, nil, { flags = { 'upgrade' }, env = { LCLUSTER_RUN_DIR = c.run } })
      c.app:waitOutput('upgrade: starting', 5000, 'both')
      local bcode, _, berr = ctl(c, { 'upgrade' })
      assert.are.equal(1, bcode)
      assert.is_truthy(berr:find('EBUSY', 1, true), berr)
      local scode, _, serr = ctl(c, { 'stop' })
      assert.are.equal(0, scode, serr)
      assert.are.equal(1, up:waitExit(15000))
      assert.is_truthy(up.stderr:find('ESTOPPING', 1, true), up.stderr)
      c.newPid = tonumber(up.stderr:match('new master %(pid (%d+)%)'))
      assert.is_number(c.newPid)
      poll(function()
        return not lctest.isAlive(c.newPid)
      end, 5000, 'the new master to exit')
      lctest.waitFor(function()
        return c.app.exited
      end, 5000, 'the old master to exit')
    end)
    finish(c)
    assert(ok, err)
  end)

  it('passes a socket systemd gave the master on to the new one (socket activation)', function()
    local SSA = '/usr/bin/systemd-socket-activate'
    if not io.open(SSA, 'r') then
      pending('systemd-socket-activate is not installed (Debian package systemd)')
      return
    end
    local dir = lctest.tmpdir()
    local c = { dir = dir, run = dir .. '/run', port = lctest.freePort(), uport = lctest.freePort() }
    -- systemd-socket-activate binds the port and execs lcluster on the first connection.
    c.app = lctest.spawn(nil, nil, { binary = SSA, flags = { '-E', 'LCLUSTER_RUN_DIR=' .. c.run,
      '-l', '127.0.0.1:' .. c.port, lctest.binary, '-w', '2', FIX .. 'upgrade_app.lua', c.port, c.uport, 'rr' } })
    local ok, err = pcall(function()
      c.app:waitOutput('Listening on', 5000, 'stderr')
      local loop = clientLoop(c.port, 2)
      c.app:waitOutput(('worker ready.*'):rep(2), 8000)
      local code, out, stderr = ctl(c, { 'upgrade' }, 15000)
      assert.are.equal(0, code, stderr)
      c.newPid = tonumber(out:match('master pid (%d+)'))
      -- The inherited socket and the rr key on it are one socket: handed over once.
      assert.is_truthy(c.app.stderr:find('with 2 listening sockets', 1, true), c.app.stderr)
      loop.stop(c.newPid)
      assert.are.same({}, loop.errors)
      assert.is_true(loop.byMaster[c.app.pid] > 0)
      assert.are.equal(c.newPid, status(c).pid)
    end)
    finish(c)
    assert(ok, err)
  end)

  it('keeps the old master serving when the new one exits at start', function()
    local c = start('rr')
    local ok, err = pcall(function()
      -- The new master checks the script first: a syntax error is exit status 2.
      lctest.writeFile(c.dir .. '/app.lua', 'this is not Lua (\n')
      local code, _, stderr = ctl(c, { 'upgrade' }, 15000)
      assert.are.equal(1, code)
      assert.is_truthy(stderr:find('exited with code 2 before it was ready', 1, true), stderr)
      assert.is_false(c.app.exited)
      local st = status(c)
      assert.are.equal(c.app.pid, st.pid)
      assert.are.equal(2, st.ready)
      local done
      get(c.port, '/', function(e, scode)
        done = { e, scode }
      end)
      lctest.waitFor(function()
        return done
      end, 5000, 'a GET')
      assert.are.same({ nil, 200 }, { done[1], done[2] })
    end)
    finish(c)
    assert(ok, err)
  end)
end)
