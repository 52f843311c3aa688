-- Large messages through the channel's shared-memory rings (runtime/ipc.c, docs/architecture.md
-- "IPC"): the stream goes through the ring each way (its counters and the memfd mappings in
-- /proc/self/maps say so) with every byte intact, each message after the first (which makes
-- the ring and goes by the socket, the ring's fd ahead of it) encoded straight into it
-- (in_place); small socket frames and ring frames keep their send order; a full ring and a
-- message larger than the ring fall back to the socket in order; a killed worker leaves no
-- mapping or fd in the master; LC_IPC_SHM=0 turns it off; a ring fd dropped at the
-- receiver's fd limit, or a ring it cannot map, loses nothing: the message comes by the
-- socket, the fd comes again; a ring that could not be made (the sender out of fds) is made
-- later; a RESEND for an ATTACH still in the sender's queue (a peer asking without reading)
-- closes the channel.
-- Malformed ring references are in cluster_spec ("closes a channel on a bad frame").
local lctest = require('lctest')

local FIX = 'spec/fixtures/'

local results = require('spec.helpers.result_lines')

local function run(mode, mib, extra)
  local c = lctest.spawn(FIX .. 'ipc_shm.lua', { mode, extra }, { env = { LC_IPC_SHM = mib } })
  local code, signal = c:waitExit(30000)
  assert.are.equal(0, code, ('master exited %s %s\n--- stdout:\n%s\n--- stderr:\n%s'):format(
    tostring(code), tostring(signal), c.stdout, c.stderr))
  return results(c.stdout), c
end

describe('IPC shared-memory rings', function()
  after_each(lctest.cleanup)

  it('carry a stream of large table messages each way, byte for byte, in order with small ones', function()
    local r, c = run('stream', '4')
    -- Worker -> master: the first of the 10 large messages by the socket with the ring's fd
    -- ahead of it, the 9 others through the master's mapping of the worker's ring, each
    -- encoded straight into it (the ring is in use once the master has mapped it).
    assert.are.equal('up 10 sent=0 in_place=0 outgrown=0 received=9 full=0 too_big=0 maps=1 mapped=1', r[1], c.stderr)
    -- Master -> worker: the worker maps the master's ring too (and keeps its own).
    assert.are.equal('down 10 sent=9 in_place=9 outgrown=0 received=9 full=0 too_big=0 maps=2 mapped=2',
      r[2], c.stderr)
    assert.are.equal('master sent=9 in_place=9 outgrown=0 received=9 full=0 too_big=0 maps=2', r[3])
    assert.are.equal('worker-exit 0 nil', r[4])
  end)

  it('are not used with LC_IPC_SHM=0', function()
    local r = run('stream', '0')
    assert.are.equal('up 10 sent=0 in_place=0 outgrown=0 received=0 full=0 too_big=0 maps=0 mapped=0', r[1])
    assert.are.equal('down 10 sent=0 in_place=0 outgrown=0 received=0 full=0 too_big=0 maps=0 mapped=0', r[2])
  end)

  it('fall back to the socket when the receiver is behind and the ring is full, keeping order', function()
    local dir = lctest.tmpdir()
    local fifo = dir .. '/fifo'
    assert(os.execute('mkfifo ' .. fifo) == 0)
    local ok, r, c = pcall(run, 'full', '1', fifo)
    lctest.rmrf(dir)
    assert(ok, r)
    -- The worker's answer to the first large message came after it mapped the ring, so the
    -- master had closed the memfd it kept to send again.
    assert.are.equal('warm memfds=0', r[1])
    -- 8 large messages (~450 KiB encoded) into a 1 MiB ring the worker does not empty (a
    -- first one made it). They are encoded straight into it while the room left looks large
    -- enough (timing: the worker takes the first before it stalls), else copied in.
    local sent, inPlace, full = r[2]:match(
      '^sent sent=(%d+) in_place=(%d+) outgrown=%d+ received=0 full=(%d+) too_big=0 maps=1$')
    assert.is_truthy(sent, r[2])
    assert.is_true(tonumber(sent) >= 1 and tonumber(full) >= 1, r[2])
    assert.is_true(tonumber(inPlace) <= tonumber(sent), r[2])
    assert.are.equal(8, tonumber(sent) + tonumber(full))
    -- The worker got all 16 messages in order, every byte checked, the ring ones among them.
    assert.are.equal('worker 16 sent=0 in_place=0 outgrown=0 received=' .. sent .. ' full=0 too_big=0 maps=1',
      r[3], c.stderr)
    assert.are.equal('worker-exit 0 nil', r[4])
  end)

  it('fall back to the socket for a message larger than the ring, keeping order', function()
    local r, c = run('toobig', '1')
    assert.are.equal('small1 large3 large2 small4', r[1], c.stderr)
    -- Only the ring-sized one went through the ring (encoded into it). The 2 MiB one was
    -- encoded into the empty ring, outgrew it and went on in the encoder's buffer.
    assert.are.equal('master sent=0 in_place=0 outgrown=0 received=1 full=0 too_big=0 maps=1', r[2])
    assert.are.equal('worker sent=1 in_place=1 outgrown=1 received=0 full=0 too_big=1 maps=1', r[3])
  end)

  for _, case in ipairs({
    { 'fdlimit', "the ring's fd is dropped at the receiver's fd limit" },
    { 'nomap', 'the receiver cannot map the ring (out of address space)' },
  }) do
    it('lose nothing when ' .. case[2] .. ': it comes again', function()
      local r, c = run(case[1], '4')
      -- Starved, the worker got the message (by the socket, every byte checked) but not the
      -- ring (lost=1), and asked for it again; once freed, the next message brought it and
      -- the one after went through it. The channel stayed open throughout.
      assert.are.same({
        'at the limit: got 1 received=0 lost=1 maps=0',
        'then: got 3 sent=0 in_place=0 outgrown=0 received=1 full=0 too_big=0 maps=1 lost=1',
        'worker-exit 0 nil',
      }, r, c.stderr)
      assert.no.matches('EPROTO', c.stderr, 1, true)
    end)
  end

  it('refuse a RESEND while the ATTACH it would answer is still queued (a peer asking without reading)', function()
    local c = lctest.spawn(FIX .. 'ipc_resend_flood.lua', {}, { env = { LC_IPC_SHM = '4' } })
    local code = c:waitExit(30000)
    assert.are.equal(0, code, c.stderr)
    -- The second RESEND came while the ATTACH it asked for was in the queue: the channel
    -- closed, holding the ring's fd and that ATTACH's copy. (It took all 20 rounds and held
    -- 21 memfds, one more per large message, before.)
    assert.are.equal('error=EPROTO: malformed frame: a shared-memory frame out of place (a reference '
      .. 'before its ring, a second ring, a RESEND not asked for, or file descriptors where none '
      .. 'belong) rounds=1 memfds=2\n', c.stdout)
  end)

  it('are made again after 64 large messages when one could not be made (out of fds)', function()
    local r, c = run('nomemfd', '4')
    -- The 66 messages before the master's answer went by the socket (the ring was made with
    -- the 66th); of the 5 after it, those the ring had room for went through it.
    local sent, full = (r[1] or ''):match('^before the answer sent=0, after it sent=(%d+) full=(%d+) maps=1$')
    assert.is_truthy(sent, tostring(r[1]) .. '\n' .. c.stderr)
    assert.is_true(tonumber(sent) >= 1)
    assert.are.equal(5, tonumber(sent) + tonumber(full))
    assert.are.equal('worker-exit 0 nil', r[2])
  end)

  it('are unmapped, and no memfd is left, when a worker is killed mid-stream', function()
    local r, c = run('kill', '4')
    -- Both directions' rings were mapped in the master. It closed the worker's fd once mapped
    -- and keeps its own until the worker says it mapped it (it may have to send it again).
    assert.are.equal('before mapped=2 memfds=1 maps=2', r[1], c.stderr)
    assert.are.equal('worker-exit nil SIGKILL', r[2])
    assert.are.equal('after mapped=0 memfds=0 maps=0', r[3])
  end)

  -- The C decode of a frame allocates, so the GC may run a finalizer that closes the channel
  -- in the middle of a read: the frames' bytes (the ring's, or the read buffer's) must stay
  -- until the read is over (was a SIGSEGV, both ways).
  it('and the read buffer stay until the read is over when a finalizer closes the channel', function()
    -- (The three messages go through the ring with LC_IPC_SHM=4: else this checks the socket
    -- twice. They did not once the ring was used only after the receiver mapped it.)
    for mib, ring in pairs({ ['4'] = 3, ['0'] = 0 }) do
      local c = lctest.spawn(FIX .. 'ipc_close_in_gc.lua', {}, { env = { LC_IPC_SHM = mib } })
      local code, signal = c:waitExit(30000)
      assert.are.equal(0, code, ('LC_IPC_SHM=%s: exited %s %s\n%s'):format(mib, tostring(code),
        tostring(signal), c.stderr))
      assert.matches('^closed %d+ ring=' .. ring .. '\n$', c.stdout)
    end
  end)
end)
