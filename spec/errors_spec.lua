-- Error messages that name the user's mistake (issue 11): every public method of every public
-- object called with a dot instead of a colon raises ERR_INVALID_THIS naming the method and
-- pointing at the caller's line (this file, not lualib); wrong argument types name the
-- argument; network errors name the address.
local lctest = require('lctest')
local net = require('net')
local http = require('http')
local dgram = require('dgram')
local events = require('events')
local timer = require('timer')

local waitFor = lctest.waitFor
local THIS_FILE = 'spec/errors_spec.lua'

-- Every public method an instance sees, sorted (cls: the class, when the instance's
-- metatable is not it).
local publicMethods = require('spec.fixtures.public_methods')

-- Calls fn (no tail call, so the error's position is this file) and returns its error.
local function errorOf(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, 'no error raised')
  return tostring(err)
end

-- The message of a dot call obj.name(badSelf): ERR_INVALID_THIS, the method as label:name,
-- and this file as the place.
local function assertDotCall(label, obj, name, badSelf)
  local err = errorOf(function()
    local r = obj[name](badSelf)
    return r
  end)
  local what = ('%s.%s(%s)'):format(label, name, tostring(badSelf))
  assert.truthy(err:find('ERR_INVALID_THIS', 1, true), what .. ': ' .. err)
  assert.truthy(err:find(':' .. name .. ': use a colon call', 1, true), what .. ': ' .. err)
  assert.are.equal(THIS_FILE, err:match('^([^:]+):%d+:'), what .. ' points elsewhere: ' .. err)
end

-- Walks every public method of obj with a number, a string, nil and a plain table as self.
-- emit is checked with a string self only (the shape of a real mistake, obj.emit('ev')): it
-- is not wrapped, to keep the emit lualib does on every event free.
local function walk(label, obj, cls)
  local list = publicMethods(obj, cls)
  assert.truthy(#list > 3, label .. ' has public methods')
  for _, name in ipairs(list) do
    if name == 'emit' then
      assertDotCall(label, obj, name, 'connection')
    else
      for _, bad in ipairs({ 8000, 'x', nil, { port = 1 } }) do
        assertDotCall(label, obj, name, bad)
      end
    end
  end
  return list
end

-- Asserts fn raises an error starting (after the position) with `code` and containing every
-- string in `needles`, reported at this file.
local function assertRaises(code, needles, fn)
  local err = errorOf(function()
    local r = fn()
    return r
  end)
  assert.are.equal(THIS_FILE, err:match('^([^:]+):%d+:'), 'points elsewhere: ' .. err)
  assert.truthy(err:find(': ' .. code, 1, true), ('want %s: %s'):format(code, err))
  for _, s in ipairs(needles or {}) do
    assert.truthy(err:find(s, 1, true), ('want %q in: %s'):format(s, err))
  end
end

describe('error messages that name the mistake', function()
  after_each(function()
    lctest.closeTracked()
    lctest.cleanup()
  end)

  it('a dot call on every method of net, dgram, events and timer objects raises ERR_INVALID_THIS here', function()
    walk('server', lctest.track(net.createServer()))
    local sock = net.Socket.new()
    walk('socket', sock)
    local u = lctest.track(dgram.createSocket('udp4'))
    walk('socket', u)
    walk('emitter', events.Emitter.new())
    local t = timer.setTimeout(function() end, 100000)
    walk('timer', t)
    t:close()
    walk('child', lctest.spawn(nil, {}, { flags = { '--version' } }))
  end)

  it('a dot call on every method of fs and child_process objects raises ERR_INVALID_THIS here', function()
    local fs = require('fs')
    local cp = require('child_process')
    local dir = lctest.tmpdir()
    local ok, err = pcall(function()
      local path = lctest.writeFile(dir .. '/f.txt', 'hello')
      local rs = fs.createReadStream(path)
      walk('stream', rs)
      local ws = fs.createWriteStream(dir .. '/out.txt')
      walk('stream', ws)
      local w = fs.watch(dir, function() end)
      walk('watcher', w)
      w:close()
      local child = cp.spawn('true', {})
      walk('child', child)
      walk('stream', child.stdout)
      walk('stream', child.stdin)
      local closed = { rs = false, ws = false, child = false }
      rs:on('close', function()
        closed.rs = true
      end)
      ws:on('close', function()
        closed.ws = true
      end)
      child:on('close', function()
        closed.child = true
      end)
      rs:destroy()
      ws:destroy()
      child.stdout:resume()
      waitFor(function()
        return closed.rs and closed.ws and closed.child
      end, 5000, 'the streams and the child to close')
    end)
    lctest.rmrf(dir)
    assert(ok, err)
  end)

  it('a dot call on every method of http objects raises ERR_INVALID_THIS here; bad arguments name the value',
    function()
      local checked = {}
      local srv = lctest.track(http.createServer(function(req, res)
        walk('req', req, http.IncomingMessage)
        walk('res', res, http.ServerResponse)
        -- The mistakes of the issue: a table body, a status that is not a number.
        assertRaises('ERR_INVALID_ARG_TYPE', { 'listener for "data"' }, function()
          return req:on('data', 5)
        end)
        assertRaises('ERR_INVALID_ARG_TYPE', { 'res:write', 'got table' }, function()
          return res:write({ a = 1 })
        end)
        assertRaises('ERR_INVALID_ARG_TYPE', { 'res:write', 'callback' }, function()
          return res:write('x', 5)
        end)
        assertRaises('ERR_INVALID_ARG_TYPE', { 'getHeader', 'got table' }, function()
          return res:getHeader({})
        end)
        assertRaises('ERR_OUT_OF_RANGE', { 'res:setTimeout' }, function()
          return res:setTimeout('x')
        end)
        assertRaises('ERR_OUT_OF_RANGE', { 'req:setTimeout' }, function()
          return req:setTimeout(-1)
        end)
        assertRaises('ERR_INVALID_ARG_TYPE', { 'res:finish', 'got table' }, function()
          return res:finish({ a = 1 })
        end)
        assertRaises('ERR_HTTP_INVALID_STATUS_CODE', { '"abc"' }, function()
          return res:writeHead('abc')
        end)
        assertRaises('ERR_INVALID_THIS', { 'res:writeHead: use a colon call' }, function()
          return res.writeHead(200, { ['Content-Type'] = 'text/plain' })
        end)
        assertRaises('ERR_INVALID_THIS', { 'res:finish: use a colon call' }, function()
          return res.finish('hello')
        end)
        res:finish('ok')
        checked.server = true
      end))
      walk('server', srv)
      srv:listen(0, '127.0.0.1')
      waitFor(function()
        return srv.listening
      end, 2000, 'the server to listen')
      local got
      local req = http.get({ host = '127.0.0.1', port = srv:address().port, path = '/' }, function(res)
        res:on('data', function() end)
        res:on('end', function()
          got = res.statusCode
        end)
      end)
      walk('req', req)
      waitFor(function()
        return got ~= nil
      end, 5000, 'the response')
      assert.are.equal(200, got)
      assert.is_true(checked.server)
    end)

  it('wrong argument types raise at the caller with the argument named', function()
    local srv = lctest.track(net.createServer())
    assertRaises('ERR_SOCKET_BAD_PORT', nil, function()
      return srv:listen(70000)
    end)
    assertRaises('ERR_INVALID_THIS', { 'server:listen: use a colon call', 'the number 8000' }, function()
      return srv.listen(8000)
    end)
    local sock = net.Socket.new()
    assertRaises('ERR_INVALID_ARG_TYPE', { 'data must be a string' }, function()
      return sock:write({})
    end)
    assertRaises('ERR_INVALID_ARG_TYPE', { 'socket:finish', 'data must be a string' }, function()
      return sock:finish({})
    end)
    assertRaises('ERR_INVALID_ARG_TYPE', { 'socket:finish', 'callback' }, function()
      return sock:finish('x', 5)
    end)
    local hs = lctest.track(http.createServer())
    assertRaises('ERR_INVALID_ARG_TYPE', { 'server:close' }, function()
      return hs:close(5)
    end)
    assertRaises('ERR_OUT_OF_RANGE', { 'server:setTimeout' }, function()
      return hs:setTimeout('x')
    end)
    local ds = lctest.track(dgram.createSocket('udp4'))
    assertRaises('ERR_SOCKET_DGRAM_NOT_RUNNING', nil, function()
      return ds:setBroadcast(true)
    end)
    local e = events.Emitter.new()
    assertRaises('ERR_INVALID_ARG_TYPE', { 'listener for "x" must be a function' }, function()
      return e:on('x', 5)
    end)
    local u = lctest.track(dgram.createSocket('udp4'))
    assertRaises('ERR_SOCKET_BAD_PORT', nil, function()
      return u:send('x', -1, '127.0.0.1')
    end)
    u:close()
    -- Module functions: wrong types, and a colon where a dot belongs.
    local cluster = require('cluster')
    local cases = {
      { 'ERR_INVALID_ARG_TYPE', 'options must be a table', net.createServer, 5 },
      { 'ERR_INVALID_THIS', 'net.createServer', function()
        return net:createServer()
      end },
      { 'ERR_INVALID_THIS', 'net.connect', function()
        return net:connect(80)
      end },
      { 'ERR_SOCKET_BAD_PORT', 'got nil', net.connect },
      { 'ERR_INVALID_ARG_TYPE', 'http.createServer', http.createServer, 5 },
      { 'ERR_INVALID_ARG_TYPE', 'http.request', http.request, 5 },
      { 'ERR_INVALID_ARG_TYPE', 'http.request / http.get', http.get },
      { 'ERR_INVALID_URL', 'notaurl', http.request, 'notaurl' },
      { 'ERR_INVALID_ARG_TYPE', 'createSocket', dgram.createSocket },
      { 'ERR_INVALID_THIS', 'dgram.createSocket', function()
        return dgram:createSocket('udp4')
      end },
      { 'ERR_INVALID_ARG_TYPE', 'env must be a table', cluster.fork, 5 },
      { 'ERR_INVALID_ARG_TYPE', 'msg is a function', cluster.broadcast, print },
      { 'ERR_INVALID_ARG_TYPE', 'callback must be a function', cluster.disconnect, 5 },
      { 'ERR_INVALID_ARG_TYPE', 'setTimeout expects a function', setTimeout, 5 },
      { 'ERR_INVALID_ARG_TYPE', 'pid must be an integer', process.kill },
      { 'ERR_INVALID_ARG_TYPE', 'process.chdir', process.chdir, 5 },
      { 'ERR_INVALID_THIS', 'process.stdout:write', process.stdout.write, 'x' },
      { 'ERR_INVALID_ARG_TYPE', 'got table', function()
        return process.stdout:write({})
      end },
    }
    for _, case in ipairs(cases) do
      local code, needle, fn, arg = case[1], case[2], case[3], case[4]
      assertRaises(code, { needle }, function()
        local r = fn(arg)
        return r
      end)
    end
  end)

  it('EADDRINUSE and ECONNREFUSED name the address and port', function()
    local a = lctest.track(net.createServer())
    a:listen(0, '127.0.0.1')
    waitFor(function()
      return a.listening
    end, 2000, 'the first server')
    local port = a:address().port
    local b = lctest.track(net.createServer())
    local listenErr
    b:on('error', function(err)
      listenErr = err
    end)
    b:listen(port, '127.0.0.1')
    waitFor(function()
      return listenErr
    end, 2000, 'EADDRINUSE')
    assert.are.equal('EADDRINUSE', listenErr.code)
    assert.truthy(listenErr.message:find('127.0.0.1:' .. port, 1, true), listenErr.message)
    local closed = false
    a:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000, 'the first server to close')
    local c = lctest.track(net.connect(port, '127.0.0.1'))
    local connErr
    c:on('error', function(err)
      connErr = err
    end)
    waitFor(function()
      return connErr
    end, 2000, 'ECONNREFUSED')
    assert.are.equal('ECONNREFUSED', connErr.code)
    assert.truthy(connErr.message:find('127.0.0.1:' .. port, 1, true), connErr.message)
  end)

  it('in a worker, EADDRINUSE from the master names the address and port too', function()
    local a = lctest.track(net.createServer())
    a:listen(0, '127.0.0.1')
    waitFor(function()
      return a.listening
    end, 2000, 'the server holding the port')
    local port = a:address().port
    local c = lctest.spawn('spec/fixtures/errors_eaddrinuse.lua', { port })
    local msg = c:waitOutput('W\tEADDRINUSE\t([^\n]*)\n', 10000)
    assert.truthy(msg:find('127.0.0.1:' .. port, 1, true), msg)
    assert.are.equal(0, (c:waitExit(10000)))
  end)

  it("cluster: a dot call on the master's worker and on cluster.worker names the colon mistake", function()
    local c = lctest.spawn('spec/fixtures/errors_cluster.lua')
    local code = c:waitExit(10000)
    assert.are.equal(0, code, c.stdout .. c.stderr)
    local lines = {}
    for side, name, place, msg in c.stdout:gmatch('(%u) (%S+) (%S+) ([^\n]*)\n') do
      lines[#lines + 1] = { side, name, place, msg }
    end
    local seen = { M = 0, W = 0 }
    for _, l in ipairs(lines) do
      local side, name, place, msg = l[1], l[2], l[3], l[4]
      seen[side] = seen[side] + 1
      assert.truthy(place:find('spec/fixtures/errors_cluster.lua', 1, true), table.concat(l, ' '))
      assert.truthy(msg:find('ERR_INVALID_THIS', 1, true), table.concat(l, ' '))
      assert.truthy(msg:find(':' .. name .. ': use a ', 1, true), table.concat(l, ' '))
    end
    assert.truthy(seen.M > 10, c.stdout)
    assert.truthy(seen.W > 10, c.stdout)
    assert.truthy(c.stdout:find('M send ', 1, true), c.stdout)
    assert.truthy(c.stdout:find('W send ', 1, true), c.stdout)
    assert.truthy(c.stdout:find('M kill spec', 1, true), c.stdout)
  end)
end)
