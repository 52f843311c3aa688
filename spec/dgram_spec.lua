-- dgram: UDP sockets over real loopback sockets in this process. Every socket a case opens
-- must have emitted 'close' by the end of the case.
local dgram = require('dgram')
local lctest = require('lctest')

local waitFor = lctest.waitFor

local track, closeAll = lctest.track, lctest.closeTracked

-- A socket of `kind` bound on `host` port 0; returns it and its port.
local function bound(kind, host, fn)
  local s = track(dgram.createSocket(kind, fn))
  local ready = false
  s:bind(0, host, function()
    ready = true
  end)
  waitFor(function()
    return ready
  end, 2000, 'the socket to bind')
  return s, s:address().port
end

describe('dgram', function()
  after_each(closeAll)

  it('echoes a datagram over 127.0.0.1 with rinfo', function()
    local server, port = bound('udp4', '127.0.0.1')
    local rinfo
    server:on('message', function(msg, r)
      rinfo = r
      server:send('echo:' .. msg, r.port, r.address)
    end)
    assert.are.same({ address = '127.0.0.1', family = 'IPv4', port = port }, server:address())
    local client, cport = bound('udp4', '127.0.0.1')
    local reply
    client:on('message', function(msg)
      reply = msg
    end)
    local sentErr = 'unset'
    client:send('hello', port, '127.0.0.1', function(err)
      sentErr = err
    end)
    waitFor(function()
      return reply ~= nil
    end, 2000, 'the echo')
    assert.is_nil(sentErr)
    assert.are.equal('echo:hello', reply)
    assert.are.same({ address = '127.0.0.1', family = 'IPv4', port = cport, size = 5 }, rinfo)
  end)

  it('echoes over IPv6 loopback', function()
    local server, port
    server, port = bound('udp6', '::1', function(msg, r)
      assert.are.equal('IPv6', r.family)
      assert.are.equal('::1', r.address)
      server:send(msg:upper(), r.port, r.address)
    end)
    assert.are.equal('IPv6', server:address().family)
    local client = track(dgram.createSocket('udp6'))
    local reply
    client:on('message', function(msg)
      reply = msg
    end)
    client:send('six', port, '::1')
    waitFor(function()
      return reply ~= nil
    end, 2000, 'the IPv6 echo')
    assert.are.equal('SIX', reply)
  end)

  it('binds implicitly on the first send and sends to loopback without an address', function()
    local got = {}
    local _, port = bound('udp4', '127.0.0.1', function(msg)
      got[#got + 1] = msg
    end)
    local client = track(dgram.createSocket({ type = 'udp4' }))
    local listening = false
    client:on('listening', function()
      listening = true
    end)
    client:send('one', port)
    client:send({ 't', 'wo' }, port, function(err)
      assert.is_nil(err)
    end)
    waitFor(function()
      return #got == 2 and listening
    end, 2000, 'both datagrams and listening')
    assert.are.same({ 'one', 'two' }, got)
    assert.is_true(client:address().port > 0)
  end)

  it('resolves host names for send and bind', function()
    local got
    local server = track(dgram.createSocket('udp4', function(msg)
      got = msg
    end))
    local ready = false
    server:bind({ port = 0, address = 'localhost' }, function()
      ready = true
    end)
    waitFor(function()
      return ready
    end, 3000, 'the bind through localhost')
    assert.are.equal('127.0.0.1', server:address().address)
    local client = track(dgram.createSocket('udp4'))
    client:send('named', server:address().port, 'localhost')
    waitFor(function()
      return got ~= nil
    end, 3000, 'the datagram sent to localhost')
    assert.are.equal('named', got)
  end)

  it('reports EADDRINUSE as an error event, and reuseAddr shares the port', function()
    local _, port = bound('udp4', '127.0.0.1')
    local second = track(dgram.createSocket('udp4'))
    local err
    second:on('error', function(e)
      err = e
    end)
    second:bind(port, '127.0.0.1')
    waitFor(function()
      return err ~= nil
    end, 2000, 'the error')
    assert.are.equal('EADDRINUSE', err.code)

    local a = track(dgram.createSocket({ type = 'udp4', reuseAddr = true }))
    local b = track(dgram.createSocket({ type = 'udp4', reuseAddr = true }))
    local n = 0
    a:bind(0, '127.0.0.1', function()
      n = n + 1
      b:bind(a:address().port, '127.0.0.1', function()
        n = n + 1
      end)
    end)
    waitFor(function()
      return n == 2
    end, 2000, 'both reuseAddr binds')
    assert.are.equal(a:address().port, b:address().port)
  end)

  it('sets socket options on a bound socket', function()
    local s = bound('udp4', '127.0.0.1')
    assert.are.equal(s, s:setBroadcast(true))
    assert.are.equal(64, s:setTTL(64))
    assert.are.equal(4, s:setMulticastTTL(4))
    s:setMulticastLoopback(true)
    local ok, err = pcall(s.addMembership, s, '224.0.0.114')
    -- Some sandboxes have no multicast route; the failure must still carry a code.
    if not ok then
      assert.matches('^E[%u_]+:', err)
    else
      s:dropMembership('224.0.0.114')
    end
  end)

  it('raises on bad input', function()
    local function raises(code, fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      assert.matches(code, err, 1, true)
    end
    raises('ERR_SOCKET_BAD_TYPE', dgram.createSocket, 'udp5')
    raises('ERR_SOCKET_BAD_TYPE', dgram.createSocket, {})
    raises('ERR_INVALID_ARG_TYPE', dgram.createSocket, 4)
    raises('ERR_INVALID_ARG_VALUE', dgram.createSocket, { type = 'udp4', bogus = 1 })
    local s = track(dgram.createSocket('udp4'))
    raises('ERR_SOCKET_DGRAM_NOT_RUNNING', s.address, s)
    raises('ERR_SOCKET_DGRAM_NOT_RUNNING', s.setBroadcast, s, true)
    raises('ERR_SOCKET_BAD_PORT', s.send, s, 'x', 0)
    raises('ERR_SOCKET_BAD_PORT', s.send, s, 'x', 70000)
    raises('ERR_SOCKET_BAD_PORT', s.send, s, 'x', 'abc')
    raises('ERR_SOCKET_BAD_PORT', s.bind, s, -1)
    raises('ERR_INVALID_ARG_TYPE', s.send, s, 42, 1234)
    raises('ERR_INVALID_ARG_TYPE', s.send, s, 'x', 1234, 5)
    raises('ERR_INVALID_ARG_VALUE', s.bind, s, { port = 0, nope = 1 })
    local ready = false
    s:bind(0, '127.0.0.1', function()
      ready = true
    end)
    raises('ERR_SOCKET_ALREADY_BOUND', s.bind, s, 0)
    waitFor(function()
      return ready
    end, 2000, 'the bind')
    raises('ERR_OUT_OF_RANGE', s.setTTL, s, 0)
    raises('ERR_OUT_OF_RANGE', s.setTTL, s, 256)
    raises('ERR_MISSING_ARGS', s.addMembership, s)
    -- An IPv6 address on a udp4 socket is an error event.
    local t = track(dgram.createSocket('udp4'))
    local err
    t:on('error', function(e)
      err = e
    end)
    t:bind(0, '::1')
    waitFor(function()
      return err ~= nil
    end, 2000, 'the family error')
    assert.are.equal('EINVAL', err.code)
  end)

  it('close emits close once, and a closed socket refuses use', function()
    local s = bound('udp4', '127.0.0.1')
    local closes = 0
    s:on('close', function()
      closes = closes + 1
    end)
    local viaFn = false
    s:close(function()
      viaFn = true
    end)
    waitFor(function()
      return closes == 1 and viaFn
    end, 2000, 'close')
    local ok, err = pcall(s.send, s, 'x', 1234)
    assert.is_false(ok)
    assert.matches('ERR_SOCKET_DGRAM_NOT_RUNNING', err, 1, true)
    ok = pcall(s.close, s)
    assert.is_false(ok)
    lctest.turn(20)
    assert.are.equal(1, closes)
  end)

  it('adopts a bound handle through the cluster bind hook', function()
    local core = require('_core')
    local seen
    dgram._bindHook = function(_, opts, cb)
      seen = opts
      local h = core.udp()
      assert(h:bind(opts.address, opts.port))
      cb(nil, h)
    end
    local got
    local s = track(dgram.createSocket('udp4', function(msg)
      got = msg
    end))
    local ok, err = pcall(s.bind, s, 0, '127.0.0.1')
    dgram._bindHook = nil
    assert.is_true(ok, err)
    waitFor(function()
      return s._state == 'bound'
    end, 2000, 'listening on the adopted handle')
    assert.are.equal('127.0.0.1', seen.address)
    assert.are.equal('IPv4', seen.family)
    assert.is_false(seen.exclusive)
    local c = track(dgram.createSocket('udp4'))
    c:send('via hook', s:address().port)
    waitFor(function()
      return got ~= nil
    end, 2000, 'the datagram')
    assert.are.equal('via hook', got)
  end)
end)
