-- net: servers and connections over real loopback sockets in this process. Every object a
-- case opens is tracked and must have emitted 'close' by the end of the case.
local net = require('net')
local core = require('_core')
local lctest = require('lctest')

local waitFor = lctest.waitFor

local track, closeAll = lctest.track, lctest.closeTracked

-- A server listening on 127.0.0.1 (or `host`) port 0; returns server, port.
local function listening(opts, onConn, host)
  local srv = track(net.createServer(opts, onConn))
  local ready = false
  srv:listen(0, host or '127.0.0.1', function()
    ready = true
  end)
  waitFor(function()
    return ready
  end, 2000, 'the server to listen')
  return srv, srv:address().port
end

-- An echo server: each connection writes back what it reads and ends when the peer ends.
local function echoServer(host)
  return listening(nil, function(s)
    s:on('data', function(d)
      s:write(d)
    end)
  end, host)
end

local function collect(sock)
  local out = { data = {}, ended = false, closed = false }
  sock:on('data', function(d)
    out.data[#out.data + 1] = d
  end)
  sock:on('end', function()
    out.ended = true
  end)
  sock:on('close', function(hadError)
    out.closed = true
    out.hadError = hadError
  end)
  function out.text()
    return table.concat(out.data)
  end
  return out
end

describe('net', function()
  after_each(function()
    closeAll()
    lctest.cleanup()
  end)

  it('echoes over 127.0.0.1 on a port chosen by the system', function()
    local srv, port = echoServer()
    assert.is_true(port > 0)
    local addr = srv:address()
    assert.are.same({ address = '127.0.0.1', family = 'IPv4', port = port }, addr)
    local connected = false
    local c = track(net.connect(port, '127.0.0.1', function()
      connected = true
    end))
    assert.is_true(c.connecting)
    local got = collect(c)
    c:write('hello ')
    c:write('world')
    waitFor(function()
      return got.text() == 'hello world'
    end, 2000, 'the echo')
    assert.is_true(connected)
    assert.are.equal('127.0.0.1', c.remoteAddress)
    assert.are.equal(port, c.remotePort)
    assert.are.equal('127.0.0.1', c.localAddress)
    assert.is_true(c.localPort > 0)
    assert.are.equal(11, c.bytesRead)
    assert.are.equal(11, c.bytesWritten)
    c:finish()
    waitFor(function()
      return got.closed
    end, 2000, 'the client to close')
    assert.is_true(got.ended)
    assert.is_false(got.hadError)
    -- The counts outlive the handle (the closed stream's userdata keeps them).
    assert.are.equal(11, c.bytesRead)
    assert.are.equal(11, c.bytesWritten)
    assert.are.equal('closed', c.readyState)
  end)

  it('reports pending, allowHalfOpen and the byte counts of accepted sockets, open and closed', function()
    local accepted, closed = {}, 0
    local _, port = listening({ allowHalfOpen = true }, function(s)
      accepted[#accepted + 1] = s
      s:on('data', function(d)
        s:finish(d)
      end)
      s:on('close', function()
        closed = closed + 1
      end)
    end)
    local _, port2 = listening(nil, function(s)
      accepted[#accepted + 1] = s
      s:on('close', function()
        closed = closed + 1
      end)
    end)
    local c = track(net.Socket.new())
    assert.is_true(c.pending)
    assert.is_false(c.allowHalfOpen)
    c:connect(port, '127.0.0.1')
    assert.is_true(c.pending)
    waitFor(function()
      return not c.connecting and accepted[1] ~= nil
    end, 2000, 'the connection')
    assert.is_false(c.pending)
    local s = accepted[1]
    assert.is_false(s.pending)
    local got = collect(c)
    c:write('abc')
    waitFor(function()
      return got.ended
    end, 2000, 'the echo and its end')
    assert.is_true(s.allowHalfOpen) -- the server's
    c:finish()
    local c2 = track(net.connect(port2, '127.0.0.1'))
    c2:finish()
    waitFor(function()
      return closed == 2 and got.closed
    end, 2000, 'both accepted sockets to close')
    assert.is_false(accepted[2].allowHalfOpen)
    assert.is_true(s.pending) -- as Node's: a destroyed socket has no handle
    assert.are.equal(3, s.bytesRead)
    assert.are.equal(3, s.bytesWritten)
    assert.are.equal(0, accepted[2].bytesRead)
  end)

  it('fills remote and local addresses on the accepted socket', function()
    local accepted
    local _, port = listening(nil, function(s)
      accepted = s
      track(s)
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    waitFor(function()
      return accepted ~= nil and not c.connecting
    end, 2000, 'the connection')
    assert.are.equal(c.localPort, accepted.remotePort)
    assert.are.equal('127.0.0.1', accepted.remoteAddress)
    assert.are.equal('IPv4', accepted.remoteFamily)
    assert.are.equal(port, accepted.localPort)
  end)

  it('listens on every address by default (dual-stack ::)', function()
    local srv = track(net.createServer(function(s)
      s:finish('hi')
    end))
    local ready = false
    srv:listen(0, function()
      ready = true
    end)
    waitFor(function()
      return ready
    end, 2000, 'listening')
    local addr = srv:address()
    assert.is_true(addr.address == '::' or addr.address == '0.0.0.0')
    local c = track(net.connect(addr.port, '127.0.0.1'))
    local got = collect(c)
    waitFor(function()
      return got.closed
    end, 2000, 'the reply')
    assert.are.equal('hi', got.text())
  end)

  it('connects to localhost by default, resolving the name', function()
    local srv, port = echoServer('localhost')
    assert.are.equal('127.0.0.1', srv:address().address)
    local c = track(net.connect(port))
    local got = collect(c)
    c:write('ping')
    waitFor(function()
      return got.text() == 'ping'
    end, 3000, 'the echo through localhost')
    local c2 = track(net.connect({ port = port, host = 'localhost' }))
    local got2 = collect(c2)
    c2:finish('pong')
    waitFor(function()
      return got2.closed
    end, 3000, 'the second echo')
    assert.are.equal('pong', got2.text())
  end)

  it('works over IPv6 loopback', function()
    local srv, port = echoServer('::1')
    assert.are.equal('IPv6', srv:address().family)
    assert.are.equal('::1', srv:address().address)
    local c = track(net.connect(port, '::1'))
    local got = collect(c)
    c:write('six')
    waitFor(function()
      return got.text() == 'six'
    end, 2000, 'the IPv6 echo')
    assert.are.equal('::1', c.remoteAddress)
    assert.are.equal('IPv6', c.remoteFamily)
  end)

  it('close() stops accepting and emits close once the open connections end', function()
    local accepted = {}
    local srv, port = listening(nil, function(s)
      accepted[#accepted + 1] = s
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    waitFor(function()
      return #accepted == 1
    end, 2000, 'the connection')
    local closedWith
    srv:close(function(...)
      closedWith = select('#', ...)
    end)
    assert.is_false(srv.listening)
    -- New connections are refused while the old one lives on.
    local refused
    local c2 = track(net.connect(port, '127.0.0.1'))
    c2:on('error', function(e)
      refused = e.code
    end)
    waitFor(function()
      return refused ~= nil
    end, 2000, 'the refusal')
    assert.are.equal('ECONNREFUSED', refused)
    lctest.turn(30)
    assert.is_nil(closedWith)
    -- The open connection still works both ways.
    local got = collect(c)
    accepted[1]:write('still here')
    waitFor(function()
      return got.text() == 'still here'
    end, 2000, 'data after close()')
    c:finish()
    waitFor(function()
      return closedWith ~= nil
    end, 2000, "the server's close")
    assert.are.equal(0, closedWith)
  end)

  it('close() on a server that is not listening reports ERR_SERVER_NOT_RUNNING', function()
    local srv = net.createServer()
    local err
    srv:close(function(e)
      err = e
    end)
    waitFor(function()
      return err ~= nil
    end, 1000, 'the callback')
    assert.are.equal('ERR_SERVER_NOT_RUNNING', err.code)
  end)

  it('getConnections counts open connections', function()
    local srv, port = listening(nil, function(s)
      track(s)
    end)
    local a = track(net.connect(port, '127.0.0.1'))
    local b = track(net.connect(port, '127.0.0.1'))
    local count
    waitFor(function()
      srv:getConnections(function(err, n)
        assert.is_nil(err)
        count = n
      end)
      lctest.turn(5)
      return count == 2
    end, 2000, 'two connections')
    a:destroy()
    b:destroy()
    waitFor(function()
      srv:getConnections(function(_, n)
        count = n
      end)
      lctest.turn(5)
      return count == 0
    end, 2000, 'no connections')
  end)

  it('applies backpressure to a large write: false, then drain, and every byte arrives', function()
    local received = 0
    local serverSock
    local _, port = listening({ pauseOnConnect = true }, function(s)
      serverSock = s
      track(s)
      s:on('data', function(d)
        received = received + #d
      end)
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    waitFor(function()
      return serverSock ~= nil and not c.connecting
    end, 2000, 'the connection')
    local big = string.rep('0123456789abcdef', 512 * 1024) -- 8 MiB
    local drained = false
    c:on('drain', function()
      drained = true
    end)
    local ret = c:write(big)
    assert.is_false(ret)
    lctest.turn(20)
    assert.is_false(drained) -- the reader is paused: nothing can drain
    serverSock:resume()
    waitFor(function()
      return drained
    end, 5000, 'drain')
    waitFor(function()
      return received == #big
    end, 5000, 'every byte')
    assert.are.equal(#big, c.bytesWritten)
    assert.are.equal(#big, serverSock.bytesRead)
  end)

  it('buffers writes made while connecting, with backpressure and drain', function()
    local received = 0
    local _, port = listening(nil, function(s)
      track(s)
      s:on('data', function(d)
        received = received + #d
      end)
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    local drained = false
    c:on('drain', function()
      drained = true
    end)
    assert.is_true(c:write('small'))
    assert.is_false(c:write(string.rep('x', 64 * 1024)))
    waitFor(function()
      return drained and received == 5 + 64 * 1024
    end, 3000, 'drain and the bytes')
  end)

  it('keeps a half-open connection with allowHalfOpen', function()
    local serverEnded = false
    local _, port = listening({ allowHalfOpen = true }, function(s)
      track(s)
      s:on('end', function()
        serverEnded = true
        -- The read side is over; this side may still write before ending.
        s:write('late ')
        s:finish('reply')
      end)
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    local got = collect(c)
    c:finish('request')
    waitFor(function()
      return got.closed
    end, 2000, 'the client to close')
    assert.is_true(serverEnded)
    assert.are.equal('late reply', got.text())
    assert.is_true(got.ended)
  end)

  it('ends the writable side on end without allowHalfOpen', function()
    local serverClosed = false
    local _, port = listening(nil, function(s)
      s:on('close', function()
        serverClosed = true
      end)
    end)
    local c = track(net.connect({ port = port, host = '127.0.0.1', allowHalfOpen = true }))
    local got = collect(c)
    c:finish()
    waitFor(function()
      return got.ended
    end, 2000, "the server's automatic end")
    assert.is_true(c.allowHalfOpen)
    c:destroy()
    waitFor(function()
      return serverClosed and got.closed
    end, 2000, 'both sides to close')
  end)

  it('pauseOnConnect delivers nothing until resume()', function()
    local serverSock
    local data = {}
    local _, port = listening({ pauseOnConnect = true }, function(s)
      serverSock = s
      track(s)
      s:on('data', function(d)
        data[#data + 1] = d
      end)
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    c:write('queued')
    waitFor(function()
      return serverSock ~= nil and not c.connecting
    end, 2000, 'the connection')
    assert.is_true(serverSock:isPaused())
    lctest.turn(50)
    assert.are.equal(0, #data)
    serverSock:resume()
    waitFor(function()
      return table.concat(data) == 'queued'
    end, 2000, 'the data after resume')
    serverSock:pause()
    c:write('more')
    lctest.turn(50)
    assert.are.equal('queued', table.concat(data))
    serverSock:resume()
    waitFor(function()
      return table.concat(data) == 'queuedmore'
    end, 2000, 'the data after the second resume')
  end)

  it('setTimeout emits timeout after inactivity and keeps the socket open', function()
    local _, port = echoServer()
    local c = track(net.connect(port, '127.0.0.1'))
    local timeouts = 0
    local viaFn = false
    -- Loop time, not wall time: the timer is due 60 ms of loop time after it was set, and
    -- the loop's clock is brought up to date first, so this holds however loaded the host.
    core.update_time()
    local started = core.now()
    c:setTimeout(60, function()
      viaFn = true
    end)
    c:on('timeout', function()
      timeouts = timeouts + 1
    end)
    waitFor(function()
      return timeouts == 1
    end, 2000, 'timeout')
    assert.is_true(viaFn)
    assert.is_true(core.now() - started >= 60)
    assert.is_false(c.destroyed)
    -- Activity re-arms it; 0 turns it off.
    c:write('x')
    c:setTimeout(0)
    lctest.turn(120)
    assert.are.equal(1, timeouts)
    local got = collect(c)
    c:write('y')
    waitFor(function()
      return got.text():find('y') ~= nil
    end, 2000, 'the socket to still work')
  end)

  it('destroy() closes at once; destroy(err) emits error then close(true)', function()
    local serverSide = {}
    local _, port = listening(nil, function(s)
      serverSide[#serverSide + 1] = collect(s)
      s:on('error', function() end)
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    waitFor(function()
      return #serverSide == 1 and not c.connecting
    end, 2000, 'the connection')
    local closedArg
    c:on('close', function(h)
      closedArg = h
    end)
    c:destroy()
    assert.is_true(c.destroyed)
    waitFor(function()
      return closedArg ~= nil and serverSide[1].closed
    end, 2000, 'both ends to close')
    assert.is_false(closedArg)

    local d = track(net.connect(port, '127.0.0.1'))
    local order = {}
    d:on('error', function(e)
      order[#order + 1] = 'error:' .. e.code
    end)
    d:on('close', function(h)
      order[#order + 1] = 'close:' .. tostring(h)
    end)
    d:destroy(require('events').makeError('EBOOM', 'on purpose'))
    waitFor(function()
      return #order == 2
    end, 2000, 'error and close')
    assert.are.same({ 'error:EBOOM', 'close:true' }, order)
    -- Writing to a destroyed socket fails without raising.
    assert.is_false(d:write('x'))
  end)

  it('emits ECONNREFUSED as an error event, then close(true)', function()
    local port = lctest.freePort()
    local c = track(net.connect(port, '127.0.0.1'))
    local err, hadError
    c:on('error', function(e)
      err = e
    end)
    c:on('close', function(h)
      hadError = h
    end)
    waitFor(function()
      return hadError ~= nil
    end, 2000, 'close')
    assert.are.equal('ECONNREFUSED', err.code)
    assert.are.equal(port, err.port)
    assert.matches('^ECONNREFUSED', tostring(err))
    assert.is_true(hadError)
  end)

  it('reports EADDRINUSE as an error event on the server', function()
    local first, port = echoServer()
    local second = track(net.createServer())
    local err
    second:on('error', function(e)
      err = e
    end)
    second:listen(port, '127.0.0.1')
    waitFor(function()
      return err ~= nil
    end, 2000, 'the error')
    assert.are.equal('EADDRINUSE', err.code)
    assert.is_false(second.listening)
    assert.is_true(first.listening)
    -- The server may listen again once the port is free.
    local ok = false
    second:listen(0, '127.0.0.1', function()
      ok = true
    end)
    waitFor(function()
      return ok
    end, 2000, 'the retry')
  end)

  it('raises ERR_SOCKET_BAD_PORT and friends on bad input', function()
    local srv = net.createServer()
    for _, bad in ipairs({ -1, 70000, 'abc', 1.5, 0 / 0, true }) do
      local ok, err = pcall(function()
        srv:listen(bad)
      end)
      assert.is_false(ok)
      -- The error points at the caller's line.
      assert.matches('net_spec.lua:%d+: ERR_SOCKET_BAD_PORT:', err)
    end
    for _, bad in ipairs({ 0, -1, 65536, 'abc', {} }) do
      local ok, err
      if type(bad) == 'table' then
        ok, err = pcall(net.connect, { host = '127.0.0.1' })
      else
        ok, err = pcall(net.connect, bad, '127.0.0.1')
      end
      assert.is_false(ok)
      assert.matches('ERR_SOCKET_BAD_PORT', err, 1, true)
    end
    local function raises(code, fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      assert.matches(code, err, 1, true)
    end
    raises('ERR_INVALID_ARG_VALUE', srv.listen, srv, { port = 1, bogus = true })
    raises('ERR_INVALID_ARG_VALUE', srv.listen, srv, {})
    raises('ERR_INVALID_ARG_VALUE', srv.listen, srv, { port = 0, balance = 'random' })
    raises('ERR_INVALID_ARG_VALUE', srv.listen, srv, { port = 0, backlog = -1 })
    raises('ERR_INVALID_ARG_TYPE', srv.listen, srv, 0, 12, 'x')
    raises('ERR_INVALID_ARG_TYPE', net.createServer, 'nope')
    raises('ERR_INVALID_ARG_VALUE', net.createServer, { allowHalfOpen = true, nope = 1 })
    raises('ERR_INVALID_ARG_TYPE', net.connect, { port = 80, host = 5 })
    raises('ERR_INVALID_ARG_VALUE', net.connect, { port = 80, family = 5 })
    assert.is_false(srv.listening)
    -- A string port of digits is a port.
    local c = track(net.createServer())
    local ready = false
    c:listen('0', '127.0.0.1', function()
      ready = true
    end)
    waitFor(function()
      return ready
    end, 2000, 'listening on "0"')
    raises('ERR_SERVER_ALREADY_LISTEN', c.listen, c, 0)
  end)

  it('serves a Unix socket path and removes the file on close', function()
    local dir = lctest.tmpdir()
    local path = dir .. '/echo.sock'
    local srv = track(net.createServer(function(s)
      s:on('data', function(d)
        s:write(d)
      end)
    end))
    local ready = false
    srv:listen({ path = path }, function()
      ready = true
    end)
    waitFor(function()
      return ready
    end, 2000, 'the path to listen')
    assert.are.equal(path, srv:address())
    assert.is_truthy(io.open(path, 'r') or os.execute('test -S ' .. path) == 0)
    local c = track(net.connect({ path = path }))
    local got = collect(c)
    c:write('over unix')
    waitFor(function()
      return got.text() == 'over unix'
    end, 2000, 'the echo over the path')
    c:finish()
    local closed = false
    srv:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000, 'the server to close')
    assert.are.equal(1, os.execute('test -e ' .. path) == 0 and 0 or 1)
    -- Connecting to a missing path is an error event.
    local c2 = track(net.connect(path))
    local err
    c2:on('error', function(e)
      err = e
    end)
    waitFor(function()
      return err ~= nil
    end, 2000, 'the error')
    assert.are.equal('ENOENT', err.code)
    lctest.rmrf(dir)
  end)

  it('setNoDelay and setKeepAlive apply to connected and connecting sockets', function()
    local _, port = echoServer()
    local c = track(net.connect(port, '127.0.0.1'))
    assert.are.equal(c, c:setNoDelay(true))
    assert.are.equal(c, c:setKeepAlive(true, 1000))
    waitFor(function()
      return not c.connecting
    end, 2000, 'connect')
    c:setNoDelay(false)
    c:setKeepAlive(false)
    local got = collect(c)
    c:write('ok')
    waitFor(function()
      return got.text() == 'ok'
    end, 2000, 'the echo')
  end)

  it('lets a cluster hook hand the server a listening handle or connections', function()
    -- Shared handle: the hook binds (as the master would) and passes the handle.
    local seen
    net._listenHook = function(_, opts, cb)
      seen = opts
      local h = assert(net._bindListen({ host = opts.host, port = opts.port, backlog = opts.backlog }))
      cb(nil, h)
    end
    local ok, srv = pcall(function()
      local s = track(net.createServer(function(sock)
        sock:finish('shared')
      end))
      s:listen({ port = 0, host = '127.0.0.1', balance = 'none' })
      return s
    end)
    net._listenHook = nil
    assert.is_true(ok, srv)
    waitFor(function()
      return srv.listening
    end, 2000, 'listening on the handle')
    assert.are.same({ host = '127.0.0.1', port = 0, family = 'IPv4', backlog = 511, exclusive = false,
      balance = 'none', ipv6Only = false }, seen)
    local c = track(net.connect(srv:address().port, '127.0.0.1'))
    local got = collect(c)
    waitFor(function()
      return got.closed
    end, 2000, 'the reply')
    assert.are.equal('shared', got.text())

    -- Round-robin: the worker has no handle; connections arrive through _addConnection.
    net._listenHook = function(_, _, cb)
      cb(nil, nil, { address = '127.0.0.1', family = 'IPv4', port = 4242 })
    end
    local rr = track(net.createServer(function(sock)
      sock:finish('rr')
    end))
    rr:listen(4242)
    net._listenHook = nil
    waitFor(function()
      return rr.listening
    end, 2000, 'rr listening')
    assert.are.same({ address = '127.0.0.1', family = 'IPv4', port = 4242 }, rr:address())
    -- A "master" accepts and passes the connected handle.
    local master
    master = core.tcp(function()
      rr:_addConnection(assert(master:accept()))
    end)
    assert(master:bind('127.0.0.1', 0))
    assert(master:listen(8))
    local c2 = track(net.connect(master:getsockname().port, '127.0.0.1'))
    local got2 = collect(c2)
    waitFor(function()
      return got2.closed
    end, 2000, 'the rr reply')
    assert.are.equal('rr', got2.text())
    local done = false
    master:close(function()
      done = true
    end)
    waitFor(function()
      return done
    end, 1000, 'the master handle to close')

    -- exclusive skips the hook.
    local called = false
    net._listenHook = function()
      called = true
    end
    local ex = track(net.createServer())
    ex:listen({ port = 0, host = '127.0.0.1', exclusive = true })
    net._listenHook = nil
    waitFor(function()
      return ex.listening
    end, 2000, 'exclusive listening')
    assert.is_false(called)
  end)

  it("balance = 'reuseport' lets two servers bind the same port", function()
    local a, port = listening(nil, nil)
    local err
    local plain = track(net.createServer())
    plain:on('error', function(e)
      err = e
    end)
    plain:listen({ port = port, host = '127.0.0.1', balance = 'reuseport' })
    waitFor(function()
      return err ~= nil
    end, 2000, 'EADDRINUSE against a socket without SO_REUSEPORT')
    assert.are.equal('EADDRINUSE', err.code)
    a:close()
    local n = 0
    local first = track(net.createServer())
    first:listen({ port = 0, host = '127.0.0.1', balance = 'reuseport' }, function()
      n = n + 1
      local second = track(net.createServer())
      second:listen({ port = first:address().port, host = '127.0.0.1', balance = 'reuseport' }, function()
        n = n + 1
      end)
    end)
    waitFor(function()
      return n == 2
    end, 2000, 'both reuseport servers to listen')
  end)

  it('wraps a connected descriptor as a socket (Socket._wrap)', function()
    local _, port = echoServer()
    local h
    local connected = false
    h = core.tcp(function(ev)
      if ev == 'connect' then
        connected = true
      end
    end)
    assert(h:connect('127.0.0.1', port))
    waitFor(function()
      return connected
    end, 2000, 'the raw connect')
    local s = track(net.Socket._wrap(h))
    local got = collect(s)
    s:write('wrapped')
    waitFor(function()
      return got.text() == 'wrapped'
    end, 2000, 'the echo')
  end)

  -- docs/architecture.md "What an idle keep-alive connection holds": no named key on an
  -- accepted socket, so its table has no hash part (a named key stored on every connection
  -- would bring back 2 nodes, +64 bytes each with the allocator's chunk).
  it("keeps an accepted socket's fields in its array part (no named key)", function()
    local accepted
    local _, port = listening(nil, function(s)
      accepted = s
    end)
    local c = track(net.connect(port, '127.0.0.1'))
    waitFor(function()
      return accepted ~= nil
    end, 2000, 'the connection')
    for k in pairs(accepted) do
      assert.are.equal('number', type(k), 'named key ' .. tostring(k))
    end
    -- What other modules read by name still answers (getters, the class's _events).
    assert.are.equal(accepted[net._SOCK_HANDLE], accepted._handle)
    assert.is_truthy(accepted._handle)
    assert.is_false(accepted._events)
    assert.is_false(accepted.destroyed)
    accepted:on('data', function() end) -- a listener: the socket's own _events from here
    assert.are.equal('table', type(rawget(accepted, '_events')))
    c:destroy()
  end)
end)

-- lualib/_gcramp.lua: a low GC pause while a process's connections reach new highs.
describe('GC pause while connections ramp up', function()
  local gcramp = require('_gcramp')

  local function pause()
    local p = collectgarbage('setpause', 200)
    collectgarbage('setpause', p)
    return p
  end

  local function stepmul()
    local m = collectgarbage('setstepmul', 400)
    collectgarbage('setstepmul', m)
    return m
  end

  -- Each case starts from no high (a ramp left by a spec before ends with the collects), so
  -- neither the connections earlier specs of this process opened nor the next case's
  -- synthetic highs decide what a case sees.
  before_each(function()
    collectgarbage()
    collectgarbage()
    collectgarbage()
    gcramp._reset()
  end)

  after_each(function()
    collectgarbage('restart')
    closeAll()
    collectgarbage()
    collectgarbage()
    collectgarbage()
    gcramp._reset()
  end)

  it('is started by connections that raise the most this process had open', function()
    assert.is_false(gcramp.ramping())
    collectgarbage('stop') -- no cycle may end (and restore the pause) before the check
    local n = 0
    local _, port = listening(nil, function()
      n = n + 1
    end)
    -- From no high: over a step (16) at once.
    for _ = 1, 64 do
      track(net.connect(port, '127.0.0.1'))
    end
    waitFor(function()
      return n == 64
    end, 5000, '64 connections')
    assert.is_true(gcramp.ramping())
    assert.are.equal(110, pause())
    assert.are.equal(1000, stepmul())
    collectgarbage('restart')
    collectgarbage() -- this cycle saw the high grow by a step or more: it keeps 110
    assert.is_true(gcramp.ramping())
    collectgarbage() -- this one saw none
    assert.is_false(gcramp.ramping())
    assert.are.equal(200, pause())
    assert.are.equal(400, stepmul())
  end)

  it('holds 110 and 1000 while each cycle sees the high grow by a step, then restores', function()
    local steady = collectgarbage('setpause', 150) -- a script's own pause is what comes back
    finally(function()
      collectgarbage('setpause', steady)
    end)
    assert.is_false(gcramp.ramping())
    local high = 100000
    gcramp.ramp(high)
    assert.is_true(gcramp.ramping())
    assert.are.equal(110, pause())
    assert.are.equal(1000, stepmul())
    high = high + 781 -- a step: 1/128 of the high
    gcramp.ramp(high)
    collectgarbage()
    assert.is_true(gcramp.ramping())
    high = high + 100 -- less than a step: the ramp ends with this cycle
    gcramp.ramp(high)
    collectgarbage()
    assert.is_false(gcramp.ramping())
    assert.are.equal(150, pause())
    assert.are.equal(400, stepmul())
    -- A count creeping up by less than a step does not start one.
    high = high + 100
    gcramp.ramp(high)
    assert.is_false(gcramp.ramping())
    -- A pause a script sets during a ramp stays.
    high = high + 1000
    gcramp.ramp(high)
    assert.is_true(gcramp.ramping())
    collectgarbage('setpause', 180)
    collectgarbage()
    assert.is_false(gcramp.ramping())
    assert.are.equal(180, pause())
  end)
end)
