-- Node's cluster semantics where lcluster used to differ (issue 11). Each case is named after
-- the test in Node's test/parallel/ it follows, and runs a real master (spec/fixtures/
-- node_compat.lua) with real workers.
local lctest = require('lctest')
local core = require('_core')

local FIX = 'spec/fixtures/node_compat.lua'

-- Runs the fixture in `mode` to its exit (status 0 expected) and returns the child.
local function run(mode, args, ms)
  local argv = { mode }
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = a
  end
  local c = lctest.spawn(FIX, argv)
  local code, signal = c:waitExit(ms or 10000)
  assert.are.equal(0, code, ('master exited %s %s\n--- stdout:\n%s\n--- stderr:\n%s'):format(
    tostring(code), tostring(signal), c.stdout, c.stderr))
  return c
end

local function has(c, line)
  assert.truthy(c.stdout:find(line .. '\n', 1, true),
    ('no line %q in:\n%s\n--- stderr:\n%s'):format(line, c.stdout, c.stderr))
end

describe("Node's cluster semantics", function()
  after_each(lctest.cleanup)

  it('test-cluster-worker-kill: worker.process:kill(sig) only sends the signal (exitedAfterDisconnect stays false)',
    function()
      local c = run('worker-kill')
      has(c, 'M kill true')
      has(c, 'M disconnect false disconnected')
      has(c, 'M exit nil SIGKILL false')
    end)

  it("test-cluster-worker-events: in a worker, process 'error' is re-emitted on cluster.worker", function()
    local c = run('worker-events')
    has(c, 'M send true')
    has(c, 'W both true SOME MESSAGE')
    has(c, 'W worker error HI')
    has(c, 'M exit 2')
  end)

  it('test-cluster-worker-forced-exit: worker.process:disconnect() cuts the channel and the worker exits 0',
    function()
      local c = run('forced-exit')
      has(c, 'M unforced exit 42')
      has(c, 'M forced exit 0 false')
    end)

  it('test-cluster-disconnect-race: a worker disconnected while its listen is pending exits 0 at once', function()
    -- Before, the second worker waited 30 s for an answer and exited 1 (ETIMEDOUT).
    local c = run('disconnect-race', nil, 8000)
    has(c, 'M exit 1 0 nil')
    has(c, 'M exit 2 0 nil')
    assert.is_nil(c.stdout:find('M w2 listening', 1, true), c.stdout)
    assert.is_nil(c.stderr:find('ETIMEDOUT', 1, true), c.stderr)
  end)

  it("test-cluster-dgram-1: a worker's bound dgram socket makes the master emit 'listening'; addresses carry "
    .. 'addressType', function()
    local dir = lctest.tmpdir()
    local path = dir .. '/s.sock'
    local ok, err = pcall(function()
      local c = run('listening', { path })
      has(c, 'M worker listening udp4 127.0.0.1')
      has(c, 'M worker listening 4 127.0.0.1')
      has(c, 'M worker listening -1 ' .. path)
      has(c, 'M worker said got ping')
      local port = c.stdout:match('M cluster listening udp4 127%.0%.0%.1 (%d+)\n')
      assert.truthy(tonumber(port), c.stdout)
      has(c, 'M exit 0')
    end)
    lctest.rmrf(dir)
    assert(ok, err)
  end)

  it('test-cluster-send-handle-twice: a socket sent twice goes the second time without the handle', function()
    local c = lctest.spawn(FIX, { 'send-handle-twice' })
    local port = tonumber(c:waitOutput('W port (%d+)\n'))
    local closed = false
    local h
    h = core.tcp(function(ev)
      if ev == 'connect' then
        h:read_start()
      elseif ev == 'end' or ev == 'error' then
        h:close(function()
          closed = true
        end)
      end
    end)
    assert(h:connect('127.0.0.1', port))
    local code = c:waitExit(10000)
    lctest.waitFor(function()
      return closed
    end, 5000, 'the client to be closed')
    assert.are.equal(0, code, c.stdout .. c.stderr)
    has(c, 'W send1 true true')
    has(c, 'W send2 true true')
    has(c, 'M message send-handle-1 true')
    has(c, 'M message send-handle-2 false')
    has(c, 'M exit 0 nil')
  end)
end)
