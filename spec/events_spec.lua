-- The Emitter, in-process.
local events = require('events')

describe('events.Emitter', function()
  it('calls listeners in order with arguments', function()
    local e = events.Emitter.new()
    local got = {}
    e:on('x', function(a, b) got[#got + 1] = 'first' .. a .. b end)
    e:on('x', function(a) got[#got + 1] = 'second' .. a end)
    assert.is_true(e:emit('x', 1, 2))
    assert.are.same({ 'first12', 'second1' }, got)
    assert.is_false(e:emit('nothing'))
  end)

  it('once fires once and can be removed by its listener', function()
    local e = events.Emitter.new()
    local n = 0
    local function f() n = n + 1 end
    e:once('x', f)
    e:emit('x')
    e:emit('x')
    assert.are.equal(1, n)
    e:once('y', f)
    e:off('y', f)
    e:emit('y')
    assert.are.equal(1, n)
    assert.are.equal(0, e:listenerCount('y'))
  end)

  it('off removes one listener; removing during emit does not skip others', function()
    local e = events.Emitter.new()
    local got = {}
    local function b() got[#got + 1] = 'b' end
    e:on('x', function() got[#got + 1] = 'a'; e:off('x', b) end)
    e:on('x', b)
    e:emit('x')
    e:emit('x')
    assert.are.same({ 'a', 'b', 'a' }, got)
    assert.are.equal(1, e:listenerCount('x'))
  end)

  it('raises an error event that has no listener', function()
    local e = events.Emitter.new()
    local err = events.makeError('EFOO', 'went wrong')
    local ok, raised = pcall(e.emit, e, 'error', err)
    assert.is_false(ok)
    assert.are.equal(err, raised)
    assert.are.equal('EFOO: went wrong', tostring(raised))
    local seen
    e:on('error', function(x) seen = x end)
    e:emit('error', err)
    assert.are.equal(err, seen)
  end)

  it('rejects a listener that is not a function', function()
    local e = events.Emitter.new()
    assert.has_error(function() e:on('x', 42) end)
  end)

  it('binds module tables for dot and colon calls', function()
    local m = events.bind({})
    local n = 0
    m.on('x', function(v) n = n + v end)
    m:on('x', function(v) n = n + v end)
    m.emit('x', 2)
    assert.are.equal(4, n)
    assert.are.equal(2, m.listenerCount('x'))
  end)
end)
