-- require('luv'): Debian's lua-luv on the runtime's loop, its errors on the runtime's path.
local lctest = require('lctest')

local FIX = 'spec/fixtures/'

describe('luv', function()
  after_each(lctest.cleanup)

  it('fires luv timers and lcluster timers in due order on one loop', function()
    local c = lctest.spawn(FIX .. 'luv_interleave.lua')
    assert.are.equal(0, c:waitExit())
    assert.are.equal('luv10 lc40 luv70 lc100\nreps=3 ticks>0=true run=false\n', c.stdout)
  end)

  it('gives an error in a luv callback to uncaughtException', function()
    local c = lctest.spawn(FIX .. 'luv_errors.lua')
    assert.are.equal(0, c:waitExit())
    assert.matches('ERR_LOOP_OWNED', c.stdout, 1, true)
    assert.matches('caught: ' .. FIX .. 'luv_errors.lua:12: boom in luv', c.stdout, 1, true)
    assert.matches('still running', c.stdout, 1, true)
  end)

  it('exits 1 with a traceback on an unhandled error in a luv callback', function()
    local c = lctest.spawn(FIX .. 'luv_errors.lua', { 'unhandled' })
    assert.are.equal(1, c:waitExit())
    assert.matches('luv_errors.lua:12: boom in luv', c.stderr, 1, true)
    assert.matches('stack traceback', c.stderr, 1, true)
    assert.is_nil(c.stdout:find('still running'))
  end)

  it('does not let luv handles keep a disconnected worker alive', function()
    local c = lctest.spawn(FIX .. 'luv_worker.lua', {}, { env = { LCLUSTER_KILL_TIMEOUT = 60000 } })
    assert.are.equal(0, c:waitExit(10000))
    assert.matches('worker exit code=0 signal=nil child alive=true', c.stdout, 1, true)
  end)
end)
