-- Large messages on the cluster channel: frames around the sizes where the channel changes
-- path (64 KiB: a chunk of the write queue and an ordinary read; 1 MiB: the high-water mark;
-- 16 MiB), interleaved with small messages and handles; strings queued without a copy stay
-- alive until written; a worker dying in the middle of a large frame.
local lctest = require('lctest')

local FIX = 'spec/fixtures/'

local results = require('spec.helpers.result_lines')

local function run(mode, extra, ms)
  local c = lctest.spawn(FIX .. 'ipc_large.lua', { mode, extra })
  local code, signal = c:waitExit(ms or 30000)
  assert.are.equal(0, code, ('master exited %s %s\n--- stdout:\n%s\n--- stderr:\n%s'):format(
    tostring(code), tostring(signal), c.stdout, c.stderr))
  return results(c.stdout), c
end

-- Runs a scenario whose master blocks on a FIFO until the worker opens it.
local function withFifo(mode)
  local dir = lctest.tmpdir()
  local fifo = dir .. '/fifo'
  assert(os.execute('mkfifo ' .. fifo) == 0)
  local ok, r, c = pcall(run, mode, fifo)
  lctest.rmrf(dir)
  assert(ok, r)
  return r, c
end

describe('large IPC messages', function()
  after_each(lctest.cleanup)

  it('arrive intact and in order around 64 KiB, 1 MiB and 16 MiB, with small messages and fds, each way', function()
    local r = run('sizes')
    -- 11 sizes: a small and a table message each, 3 fds and 6 raw strings among them.
    assert.are.same({ 'master-got 31', 'worker-got 31', 'worker-exit 0 nil' }, r)
  end)

  it('keep a queued string alive until written, after the sender dropped it and collected', function()
    local r = withFifo('gc')
    local done, falses, got = r[1]:match('^gc (%d+) (%d+) (%d+)$')
    assert.is_truthy(done, r[1])
    -- The queue built up (send returned false) and every message arrived intact.
    assert.is_true(tonumber(falses) >= 1)
    assert.are.equal(done, got)
  end)

  it('keep a queued table message (a C buffer, no Lua string) until written, after release and collection', function()
    local r = withFifo('gctable')
    local done, falses, got = r[1]:match('^gc (%d+) (%d+) (%d+)$')
    assert.is_truthy(done, r[1])
    assert.is_true(tonumber(falses) >= 1)
    assert.are.equal(done, got)
  end)

  it('broadcast one large table message to several workers intact', function()
    local r = run('broadcast')
    assert.are.same({ 'broadcast 3' }, r)
  end)

  it('a worker that dies in the middle of a large frame leaves the master working', function()
    local r, c = withFifo('die')
    assert.are.same({ 'worker-exit nil SIGKILL', 'echo 2 true' }, r, c.stderr)
    assert.matches('EPROTO: truncated frame', c.stderr, 1, true)
  end)
end)
