-- HTTP hardening: strict parsing (no request smuggled behind an ambiguous framing), EOF in
-- the middle of a request, backpressure on unread bodies and pipeline floods, 500 on an
-- uncaught error in a handler. Real processes (lcluster -w N on spec/fixtures/http_hard.lua)
-- and raw sockets over 127.0.0.1; memory and fds read from /proc.
local http = require('http')
local net = require('net')
local lctest = require('lctest')

local waitFor = lctest.waitFor
local FIX = 'spec/fixtures/'

local sockets, servers, intervals = {}, {}, {}

-- A raw connection: r.data (all bytes read), r.ended, r.closed.
local function raw(port, data)
  local s = net.connect(port, '127.0.0.1')
  local r = lctest.capture(s)
  if data then
    s:write(data)
  end
  sockets[#sockets + 1] = s
  return r
end

-- One request on its own connection (Connection: close); returns status, body, head.
local function fetch(port, path, ms)
  local r = raw(port, 'GET ' .. path .. ' HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n')
  waitFor(function()
    return r.closed
  end, ms or 5000, 'GET ' .. path)
  local head, body = r.data:match('^(.-\r\n)\r\n(.*)$')
  return tonumber(r.data:match('^HTTP/1%.1 (%d+)')), body, head
end

local function vmRSS(pid)
  local f = io.open('/proc/' .. pid .. '/status')
  if not f then
    return 0
  end
  local kb = f:read('*a'):match('VmRSS:%s*(%d+)')
  f:close()
  return (tonumber(kb) or 0) * 1024
end

local function fdCount(pid)
  local p = io.popen('ls /proc/' .. pid .. '/fd 2>/dev/null')
  local n = 0
  for _ in p:lines() do
    n = n + 1
  end
  p:close()
  return n
end

-- Starts the fixture under the built-in master; returns child, port, the workers' pids.
local function cluster(workers, fdLimit)
  local port = lctest.freePort()
  local app
  if fdLimit then
    app = lctest.spawn('-c', { ('ulimit -n %d && exec "$0" -w %d %shttp_hard.lua %d'):format(
      fdLimit, workers, FIX, port), lctest.binary }, { binary = '/bin/sh' })
  else
    app = lctest.spawn(FIX .. 'http_hard.lua', { port }, { flags = { '-w', tostring(workers) } })
  end
  local pids = {}
  waitFor(function()
    local n = 0
    for pid in app.stdout:gmatch('worker ready pid (%d+)') do
      pids[pid] = true
      n = n + 1
    end
    return n >= workers
  end, 5000, workers .. ' workers ready')
  return app, port, pids
end

-- Samples a process's RSS every 20 ms until stop(); .max is the largest seen.
local function rssSampler(pid)
  local s = { max = 0 }
  local t
  t = setInterval(function()
    local v = vmRSS(pid)
    if v == 0 then
      clearInterval(t) -- the process is gone
    end
    if v > s.max then
      s.max = v
    end
  end, 20)
  intervals[#intervals + 1] = t
  function s.stop()
    clearInterval(t)
  end
  return s
end

-- Writes `total` bytes made of `piece` repeated on a raw connection, as fast as the peer
-- takes them (the socket's own backpressure: write() false, then 'drain'). st.sent counts
-- what was handed to the socket; st.stalled is true once nothing was taken for 10 samples of
-- 20 ms while bytes remain (the peer stopped reading), st.done once everything is written.
local function pump(r, piece, total)
  local st = { sent = 0, done = false, stalled = false }
  local s = r.socket
  local function more()
    while st.sent < total do
      local chunk = piece
      if st.sent + #chunk > total then
        chunk = chunk:sub(1, total - st.sent)
      end
      st.sent = st.sent + #chunk
      if not s:write(chunk) then
        return
      end
    end
    st.done = true
  end
  s:on('drain', more)
  more()
  local last, still = -1, 0
  local t = setInterval(function()
    if st.sent == last and not st.done then
      still = still + 1
      st.stalled = still >= 10
    else
      last, still = st.sent, 0
    end
  end, 20)
  intervals[#intervals + 1] = t
  function st.stop()
    clearInterval(t)
  end
  return st
end

local MB = 1024 * 1024

describe('http hardening', function()
  after_each(function()
    for _, t in ipairs(intervals) do
      clearInterval(t)
    end
    intervals = {}
    for _, s in ipairs(sockets) do
      s:destroy()
    end
    sockets = {}
    for _, srv in ipairs(servers) do
      srv:close()
    end
    servers = {}
    lctest.cleanup()
  end)

  describe('strict parsing', function()
    local smuggled
    local function serve()
      smuggled = 0
      local srv = http.createServer(function(req, res)
        if req.url == '/smuggled' then
          smuggled = smuggled + 1
        end
        -- Answered once the body is whole, so a body that fails to parse gets only the 400.
        req:on('end', function()
          res:finish('ok')
        end)
      end)
      local listening = false
      srv:listen(0, '127.0.0.1', function()
        listening = true
      end)
      waitFor(function()
        return listening
      end, 2000, 'server to listen')
      servers[#servers + 1] = srv
      return srv:address().port
    end

    local SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n'
    local cases = {
      { 'whitespace before the colon of Transfer-Encoding',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n' .. SMUGGLED },
      { 'whitespace before the colon of Content-Length',
        'POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 0\r\n\r\n' .. SMUGGLED },
      { 'chunk data not followed by CRLF',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n' .. SMUGGLED },
      { 'Transfer-Encoding folded onto a second line',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n' .. SMUGGLED },
      { 'Transfer-Encoding folded after a first value',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n' .. SMUGGLED },
      { 'Content-Length folded onto a second line',
        'POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 0\r\n\r\n' .. SMUGGLED },
      { 'Content-Length with Transfer-Encoding',
        'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
          .. SMUGGLED },
      { 'Transfer-Encoding whose last coding is not chunked',
        'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n' .. SMUGGLED },
      { 'an HTTP/1.1 request without Host', 'GET / HTTP/1.1\r\nX-A: b\r\n\r\n' .. SMUGGLED },
      { 'two Host headers', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' .. SMUGGLED },
    }
    for _, c in ipairs(cases) do
      for _, step in ipairs({ 0, 1 }) do
        it(('answers 400 to %s and serves nothing after it (%s)'):format(c[1],
          step == 0 and 'one write' or 'byte by byte'), function()
          local port = serve()
          local r = raw(port)
          if step == 0 then
            r.socket:write(c[2])
          else
            for i = 1, #c[2] do
              r.socket:write(c[2]:sub(i, i))
            end
          end
          waitFor(function()
            return r.closed
          end, 3000, 'the connection to close')
          assert.are.equal('400', r.data:match('^HTTP/1%.1 (%d+)'))
          assert.is_nil(r.data:find('HTTP/1%.1 200'))
          assert.are.equal(0, smuggled)
        end)
      end
    end

    it('still serves a folded ordinary header, HTTP/1.0 without Host, and chunk extensions', function()
      local port = serve()
      local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\nGET / HTTP/1.0\r\n\r\n')
      waitFor(function()
        return r.closed
      end, 3000, 'two responses')
      local _, n = r.data:gsub('HTTP/1%.1 200', '')
      assert.are.equal(2, n)
      local c = raw(port, 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'
        .. '3;ext=1\r\nabc\r\n0\r\n\r\n')
      waitFor(function()
        return c.closed
      end, 3000, 'the chunked response')
      assert.are.equal('200', c.data:match('^HTTP/1%.1 (%d+)'))
    end)
  end)

  describe('EOF in the middle of a request', function()
    it("aborts it at once: 'aborted' then 'close', the socket closes and the fd is freed", function()
      local _, port = cluster(1)
      local _, pid = fetch(port, '/pid')
      local base = fdCount(pid)
      local r = raw(port, 'POST /abort HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc')
      waitFor(function()
        local _, ev = fetch(port, '/events')
        return ev == 'request'
      end, 3000, 'the handler to get the request')
      assert.is_true(fdCount(pid) > base)
      r.socket:finish()
      waitFor(function()
        return r.closed
      end, 3000, 'the worker to close the connection')
      local _, ev = fetch(port, '/events')
      assert.are.equal('request\naborted\nclose', ev)
      waitFor(function()
        return fdCount(pid) <= base
      end, 3000, 'the fd to be freed')
    end)

    it('closes a connection whose head was cut by EOF', function()
      local _, port = cluster(1)
      local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\nX-Cut: ')
      r.socket:finish()
      waitFor(function()
        return r.closed
      end, 3000, 'the worker to close the connection')
      assert.are.equal('', r.data)
    end)

    it('700 abandoned POSTs under ulimit -n 256 leave the workers serving', function()
      local app, port, pids = cluster(2, 256)
      local total, started, closed, live = 700, 0, 0, 0
      local function one()
        started = started + 1
        live = live + 1
        local s = net.connect(port, '127.0.0.1')
        s:on('error', function() end)
        s:on('data', function() end)
        s:on('close', function()
          closed = closed + 1
          live = live - 1
        end)
        s:finish('POST /slowpost HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc')
        sockets[#sockets + 1] = s
      end
      waitFor(function()
        while live < 40 and started < total do
          one()
        end
        return closed == total
      end, 15000, 'every abandoned POST to be closed by the server')
      for pid in pairs(pids) do
        assert.is_true(lctest.isAlive(tonumber(pid)), 'worker ' .. pid .. ' died')
      end
      local status, body = fetch(port, '/')
      assert.are.equal(200, status)
      assert.are.equal('ok', body)
      local n = 0
      for _ in app.stdout:gmatch('worker ready pid') do
        n = n + 1
      end
      assert.are.equal(2, n) -- no worker was replaced
    end)
  end)

  describe('backpressure', function()
    it('stops parsing pipelined requests while 32 responses wait, and answers them all in order', function()
      local outstanding, maxOut, seen = 0, 0, 0
      local srv = http.createServer(function(req, res)
        seen = seen + 1
        outstanding = outstanding + 1
        if outstanding > maxOut then
          maxOut = outstanding
        end
        setTimeout(function()
          outstanding = outstanding - 1
          res:finish(req.url)
        end, 1)
      end)
      local listening = false
      srv:listen(0, '127.0.0.1', function()
        listening = true
      end)
      waitFor(function()
        return listening
      end, 2000, 'server to listen')
      servers[#servers + 1] = srv
      local n, parts = 300, {}
      for i = 1, n do
        parts[i] = 'GET /' .. i .. ' HTTP/1.1\r\nHost: h\r\n\r\n'
      end
      local r = raw(srv:address().port, table.concat(parts)) -- one write: ~10 KB, one read
      waitFor(function()
        local _, k = r.data:gsub('HTTP/1%.1 200', '')
        return k == n
      end, 10000, n .. ' responses')
      assert.are.equal(n, seen)
      assert.is_true(maxOut <= 33, 'requests parsed ahead of their answers: ' .. maxOut)
      local order = {}
      for url in r.data:gmatch('\r\n\r\n/(%d+)') do
        order[#order + 1] = tonumber(url)
      end
      for i = 1, n do
        assert.are.equal(i, order[i])
      end
    end)

    it('an unread 200 MB upload keeps the worker under 64 MB, then streams through', function()
      local _, port = cluster(1)
      local _, pid = fetch(port, '/pid')
      local rss = rssSampler(pid)
      local total = 200 * MB
      local r = raw(port, ('POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n'):format(total))
      local st = pump(r, ('x'):rep(MB), total)
      waitFor(function()
        return st.stalled or st.done
      end, 20000, 'the upload to stall (or end)')
      assert.is_true(st.sent < 32 * MB, 'the worker took ' .. st.sent .. ' bytes it did not read')
      local before = rss.max
      assert.are.equal(200, (fetch(port, '/go')))
      waitFor(function()
        return r.data:find('\r\n\r\n%d+$')
      end, 60000, 'the upload to be counted')
      st.stop()
      rss.stop()
      assert.are.equal(tostring(total), r.data:match('\r\n\r\n(%d+)$'))
      assert.is_true(before < 64 * MB, 'RSS while unread ' .. before)
      assert.is_true(rss.max < 64 * MB, 'RSS ' .. rss.max)
    end)

    it('a client that pipelines 300,000 requests without reading keeps the worker under 64 MB', function()
      local _, port = cluster(1)
      local _, pid = fetch(port, '/pid')
      local rss = rssSampler(pid)
      local REQ = 'GET / HTTP/1.1\r\nHost: h\r\n\r\n'
      local n = 300000
      local r = raw(port)
      r.socket:pause()
      local st = pump(r, REQ:rep(1000), #REQ * n)
      waitFor(function()
        return st.stalled or st.done
      end, 20000, 'the flood to stall (or end)')
      local before = rss.max
      -- Now read: every request is answered, in order.
      local got, respLen = 0, nil
      r.socket:removeAllListeners('data')
      r.socket:on('data', function(d)
        got = got + #d
        r.head = r.head or d:sub(1, 400)
      end)
      r.socket:resume()
      waitFor(function()
        if not respLen and r.head and r.head:find('\r\n\r\nok') then
          respLen = r.head:find('\r\n\r\nok') + 5
        end
        return st.done and respLen and got >= respLen * n
      end, 60000, 'every response')
      st.stop()
      rss.stop()
      assert.are.equal(respLen * n, got)
      assert.is_true(before < 64 * MB, 'RSS during the flood ' .. before)
      assert.is_true(rss.max < 64 * MB, 'RSS ' .. rss.max)
    end)
  end)

  describe('an uncaught error in a handler', function()
    it('answers 500 with Connection: close at once; the other in-flight request finishes', function()
      local app, port = cluster(1)
      local _, pid = fetch(port, '/pid')
      local slow = raw(port, 'POST /slowpost HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\na')
      local r = raw(port, 'GET /throw HTTP/1.1\r\nHost: h\r\n\r\n')
      waitFor(function()
        return r.data:find('\r\n\r\n')
      end, 4000, 'the 500')
      -- The worker is still alive (draining the slow request): the answer did not wait for it
      -- to exit or be killed.
      assert.is_true(lctest.isAlive(tonumber(pid)))
      assert.are.equal('500', r.data:match('^HTTP/1%.1 (%d+)'))
      assert.is_truthy(r.data:lower():find('\r\nconnection: close\r\n', 1, true))
      waitFor(function()
        return r.closed
      end, 3000, 'the 500 connection to close')
      slow.socket:write('b')
      waitFor(function()
        return slow.data:find('\r\n\r\n2$')
      end, 3000, 'the in-flight request to finish')
      assert.are.equal('200', slow.data:match('^HTTP/1%.1 (%d+)'))
      app:waitOutput('handler threw on purpose', 3000, 'stderr')
      waitFor(function()
        return not lctest.isAlive(tonumber(pid))
      end, 5000, 'the worker to exit')
    end)

    it("answers 500 when a request's 'data' listener throws", function()
      local app, port = cluster(1)
      local _, pid = fetch(port, '/pid')
      local slow = raw(port, 'POST /slowpost HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\na')
      local r = raw(port, 'POST /throwdata HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc')
      waitFor(function()
        return r.data:find('\r\n\r\n')
      end, 4000, 'the 500')
      assert.is_true(lctest.isAlive(tonumber(pid)))
      assert.are.equal('500', r.data:match('^HTTP/1%.1 (%d+)'))
      assert.is_truthy(r.data:lower():find('\r\nconnection: close\r\n', 1, true))
      slow.socket:write('b')
      waitFor(function()
        return slow.data:find('\r\n\r\n2$')
      end, 3000, 'the in-flight request to finish')
      app:waitOutput('data listener threw on purpose', 3000, 'stderr')
    end)

    -- A POST whose whole body came with its head is one call from C (the handler is called
    -- through _core.http_call, the body flows after it returns): errors thrown by the
    -- handler or its 'data' listener are still answered 500.
    for _, case in ipairs({ { '/throw', 'handler threw on purpose' },
      { '/throwdata', 'data listener threw on purpose' } }) do
      it('answers 500 when a POST ' .. case[1] .. ' throws with its whole body in one read', function()
        local app, port = cluster(1)
        local r = raw(port, 'POST ' .. case[1] .. ' HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc')
        waitFor(function()
          return r.data:find('\r\n\r\n')
        end, 4000, 'the 500')
        assert.are.equal('500', r.data:match('^HTTP/1%.1 (%d+)'))
        assert.is_truthy(r.data:lower():find('\r\nconnection: close\r\n', 1, true))
        app:waitOutput(case[2], 3000, 'stderr')
      end)
    end
  end)

  it('a parser attached again during its own feed does not go over the running one', function()
    local c = lctest.spawn(FIX .. 'http_reattach.lua')
    local code, signal = c:waitExit(10000)
    assert.are.equal(0, code, ('exited %s %s\n%s'):format(tostring(code), tostring(signal), c.stderr))
    assert.are.equal('reattached embedded=false\ndone\n', c.stdout)
  end)
end)
