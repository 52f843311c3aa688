-- http: the server and client over real sockets on 127.0.0.1, and the C parser glue fed
-- directly. Every wait has a deadline; every server, socket and process is closed after.
local core = require('_core')
local http = require('http')
local net = require('net')
local lctest = require('lctest')

local waitFor = lctest.waitFor

local servers, sockets = {}, {}

-- Starts an http server on a free port; returns server, port.
local function serve(handler, setup)
  local srv = http.createServer(handler)
  if setup then
    setup(srv)
  end
  local listening = false
  srv:listen(0, '127.0.0.1', function()
    listening = true
  end)
  waitFor(function()
    return listening
  end, 2000, 'server to listen')
  servers[#servers + 1] = srv
  return srv, srv:address().port
end

-- A raw TCP client: r.data accumulates everything received; r.closed once closed.
local function raw(port, data)
  local s = net.connect(port, '127.0.0.1')
  local r = { data = '', closed = false, socket = s }
  s:on('data', function(d)
    r.data = r.data .. d
  end)
  s:on('error', function(e)
    r.err = e
  end)
  s:on('end', function()
    r.ended = true
  end)
  s:on('close', function()
    r.closed = true
  end)
  if data then
    s:write(data)
  end
  sockets[#sockets + 1] = s
  return r
end

-- Splits raw response bytes into responses {status=, reason=, headers=, body=}; parses
-- Content-Length and chunked bodies, and bodies that end at the end of the data.
local function responses(data)
  local out = {}
  local pos = 1
  while pos <= #data do
    local headEnd = data:find('\r\n\r\n', pos, true)
    if not headEnd then
      break
    end
    local head = data:sub(pos, headEnd - 1)
    pos = headEnd + 4
    local status, reason = head:match('^HTTP/1%.%d (%d%d%d) ([^\r]*)')
    local r = { status = tonumber(status), reason = reason, headers = {}, raw = head }
    for name, value in head:gmatch('\r\n([^:\r]+): ([^\r]*)') do
      r.headers[name:lower()] = value
    end
    local body = ''
    if r.status == 100 or r.status == 304 or r.status == 204 or r.noBody then
      body = ''
    elseif r.headers['content-length'] then
      local n = tonumber(r.headers['content-length'])
      body = data:sub(pos, pos + n - 1)
      pos = pos + n
    elseif r.headers['transfer-encoding'] == 'chunked' then
      while true do
        local line, after = data:match('^(%x+)\r\n()', pos)
        if not line then
          break
        end
        local n = tonumber(line, 16)
        body = body .. data:sub(after, after + n - 1)
        pos = after + n + 2
        if n == 0 then
          break
        end
      end
    else
      body = data:sub(pos)
      pos = #data + 1
    end
    r.body = body
    out[#out + 1] = r
  end
  return out
end

local function waitResponses(r, n, what)
  return waitFor(function()
    local rs = responses(r.data)
    return #rs >= n and rs
  end, 3000, what or (n .. ' responses'))
end

local function waitClosed(r, what)
  waitFor(function()
    return r.closed
  end, 3000, what or 'the connection to close')
end

local function hello(_, res)
  res:finish('hello world\n')
end

after_each(function()
  for _, s in ipairs(sockets) do
    s:destroy()
  end
  sockets = {}
  for _, srv in ipairs(servers) do
    local closed = false
    srv:close(function()
      closed = true
    end)
    srv:closeAllConnections()
    waitFor(function()
      return closed
    end, 3000, 'server to close')
  end
  servers = {}
  lctest.cleanup()
end)

describe('http parser glue (in-process)', function()
  local function parse(text, step, opts)
    local evs = {}
    local p = core.http_parser('request', function(ev, ...)
      evs[#evs + 1] = { ev, ... }
    end, opts)
    step = step or #text
    for i = 1, #text, step do
      p:feed(text:sub(i, i + step - 1))
    end
    return evs
  end

  it('delivers one head per request with lower-case, joined headers, byte by byte', function()
    local req = 'GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: a\r\naccept: b\r\nSet-Cookie: 1\r\n'
      .. 'set-cookie: 2\r\nCookie: a=1\r\nCookie: b=2\r\nX-Empty:\r\nX-Pad:  v  \r\n\r\n'
    for _, step in ipairs({ 1, 3, #req }) do
      local evs = parse(req, step)
      assert.are.equal(1, #evs)
      local ev, method, url, version, h, keepAlive, upgrade, complete = unpack(evs[1])
      assert.are.same({ 'head', 'GET', '/a?b=1', '1.1' }, { ev, method, url, version })
      assert.are.same({ host = 'x', accept = 'a, b', ['set-cookie'] = { '1', '2' }, cookie = 'a=1; b=2',
        ['x-empty'] = '', ['x-pad'] = 'v' }, h)
      assert.is_true(keepAlive)
      assert.is_false(upgrade)
      assert.is_true(complete)
    end
  end)

  it('parses keep-alive messages fed in separate reads, interleaved with another parser', function()
    -- Between messages a parser gives its state (llhttp's and the message's) back to a pool
    -- and takes a fresh one with the next read: another connection's read in between must
    -- not see or disturb it, and a message cut by a read boundary keeps its state.
    local evsA, evsB = {}, {}
    local a = core.http_parser('request', function(ev, ...)
      evsA[#evsA + 1] = { ev, ... }
    end)
    local b = core.http_parser('request', function(ev, ...)
      evsB[#evsB + 1] = { ev, ... }
    end)
    a:feed('GET /a1 HTTP/1.1\r\nHost: a\r\n\r\n')
    b:feed('GET /b1 HTTP/1.1\r\nHo')
    a:feed('GET /a2 HTTP/1.1\r\nHost: a2\r\n\r\n')
    b:feed('st: b\r\nX-Y: 1\r\n\r\n')
    a:feed('\r\nGET /a3 HTTP/1.1\r\nHost: a3\r\n\r\n')
    assert.are.same({ '/a1', '/a2', '/a3' }, { evsA[1][3], evsA[2][3], evsA[3][3] })
    assert.are.same({ 'a', 'a2', 'a3' }, { evsA[1][5].host, evsA[2][5].host, evsA[3][5].host })
    assert.are.equal(1, #evsB)
    assert.are.same({ 'head', 'GET', '/b1' }, { evsB[1][1], evsB[1][2], evsB[1][3] })
    assert.are.same({ host = 'b', ['x-y'] = '1' }, evsB[1][5])
    -- After a closing message llhttp's state is kept: a request in the next read is an
    -- error, not a new message.
    a:feed('GET /a4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
    a:feed('GET /a5 HTTP/1.1\r\nHost: a\r\n\r\n')
    assert.are.equal(5, #evsA)
    assert.are.equal('/a4', evsA[4][3])
    assert.is_false(evsA[4][6]) -- keepAlive
    assert.are.same({ 'error', 400, 'HPE_CLOSED_CONNECTION' }, { evsA[5][1], evsA[5][2], evsA[5][3] })
  end)

  it('a parser attached to a stream that closes without a detach forgets the stream', function()
    local h = core.tcp()
    local p = core.http_attach(h, 'request', function() end)
    local closed = false
    h:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000, 'the close')
    collectgarbage()
    -- The stream's memory is gone: these must not touch it (ASan checks the build).
    assert.is_false((p:state()))
    p:detach()
    p:feed('GET / HTTP/1.1\r\nHost: h\r\n\r\n')
  end)

  it('streams chunked bodies and parses pipelined requests in order', function()
    local text = 'POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n'
      .. 'GET /2 HTTP/1.0\r\n\r\n'
    local evs = parse(text, 1)
    local body, seq = '', {}
    for _, e in ipairs(evs) do
      if e[1] == 'body' then
        body = body .. e[2]
      else
        seq[#seq + 1] = e[1] .. (e[1] == 'head' and e[3] or '')
      end
    end
    assert.are.equal('abcde', body)
    assert.are.same({ 'head/1', 'done', 'head/2' }, seq)
    assert.is_false(evs[#evs][6]) -- HTTP/1.0 without keep-alive
  end)

  it('reports 431, 413 and 400 and then parses nothing more', function()
    local big = 'GET / HTTP/1.1\r\nHost: h\r\nX: ' .. ('a'):rep(200) .. '\r\n\r\n'
    local evs = parse(big, 7, { maxHeaderSize = 100 })
    assert.are.same({ 'error', 431 }, { evs[1][1], evs[1][2] })
    evs = parse('POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world', nil, { maxBodySize = 10 })
    assert.are.same({ 'error', 413 }, { evs[1][1], evs[1][2] })
    evs = parse('POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n', 1,
      { maxBodySize = 5 })
    assert.are.equal('error', evs[#evs][1])
    assert.are.equal(413, evs[#evs][2])
    evs = parse('NOT HTTP\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n')
    assert.are.equal(1, #evs)
    assert.are.same({ 'error', 400 }, { evs[1][1], evs[1][2] })
  end)

  -- http.lua's server protocol (lazyHeaders): a Content-Length body's last span goes with
  -- the call that completes the message, so a small POST is one Lua call, as a GET is.
  it('lazy heads carry a whole Content-Length body; a split one ends with done(chunk)', function()
    local lazy = { lazyHeaders = true }
    local post = 'POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello'
    -- Head and body in one feed (twice, pipelined): one event per request.
    local evs = parse(post .. post:gsub('/p', '/q'), nil, lazy)
    assert.are.equal(2, #evs)
    for i, url in ipairs({ '/p', '/q' }) do
      assert.are.same({ 'head', 'POST', url }, { evs[i][1], evs[i][2], evs[i][3] })
      assert.is_true(evs[i][8]) -- complete
      assert.are.equal('hello', evs[i][10])
    end
    -- The body cut by feeds: the head (from the first body span), then body chunks; the
    -- last span comes with 'done'.
    local seq = {}
    for _, e in ipairs(parse(post, #post - 3, lazy)) do
      seq[#seq + 1] = e[1] .. ':' .. tostring(e[e[1] == 'head' and 10 or 2])
    end
    assert.are.same({ 'head:nil', 'body:he', 'done:llo' }, seq)
    seq = {}
    for _, e in ipairs(parse(post, #post - 5, lazy)) do
      seq[#seq + 1] = e[1] .. ':' .. tostring(e[e[1] == 'head' and 10 or 2])
    end
    assert.are.same({ 'head:nil', 'done:hello' }, seq)
    -- Chunked: chunks are 'body' events, 'done' has none; without lazyHeaders, as before.
    seq = {}
    local chunked = 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
    for _, e in ipairs(parse(chunked, nil, lazy)) do
      seq[#seq + 1] = e[1] .. ':' .. tostring(e[e[1] == 'head' and 10 or 2])
    end
    assert.are.same({ 'head:nil', 'body:abc', 'done:nil' }, seq)
    seq = {}
    for _, e in ipairs(parse(post)) do
      seq[#seq + 1] = e[1] .. ':' .. tostring(e[e[1] == 'head' and 10 or 2])
    end
    assert.are.same({ 'head:nil', 'body:hello', 'done:nil' }, seq)
  end)

  it('drops headers beyond maxHeadersCount', function()
    local evs = parse('GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n', 1, { maxHeadersCount = 3 })
    assert.are.same({ host = 'h', a = '1', b = '2' }, evs[1][5])
  end)
end)

describe('http server', function()
  it('answers a GET with Date, Connection, Content-Length and the request fields', function()
    local got
    local _, port = serve(function(req, res)
      got = { method = req.method, url = req.url, v = req.httpVersion, h = req.headers, sock = req.socket }
      res:setHeader('Content-Type', 'text/plain')
      res:setHeader('X-Multi', { 'a', 'b' })
      assert.are.equal('text/plain', res:getHeader('content-type'))
      res:setHeader('X-Gone', '1')
      res:removeHeader('x-gone')
      res:finish('hello world\n')
    end)
    local r = raw(port, 'GET /path?q=1 HTTP/1.1\r\nHost: h\r\nX-Custom: Yes\r\nset-cookie: a\r\n\r\n')
    local rs = waitResponses(r, 1)
    assert.are.same({ method = 'GET', url = '/path?q=1', v = '1.1' },
      { method = got.method, url = got.url, v = got.v })
    assert.are.same({ host = 'h', ['x-custom'] = 'Yes', ['set-cookie'] = { 'a' } }, got.h)
    assert.is_truthy(got.sock.remotePort)
    local res = rs[1]
    assert.are.equal(200, res.status)
    assert.are.equal('OK', res.reason)
    assert.are.equal('hello world\n', res.body)
    assert.are.equal('12', res.headers['content-length'])
    assert.are.equal('keep-alive', res.headers['connection'])
    assert.are.equal('text/plain', res.headers['content-type'])
    assert.is_nil(res.headers['x-gone'])
    assert.truthy(res.raw:find('X-Multi: a\r\nX-Multi: b', 1, true))
    assert.truthy(res.headers['date']:match('^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$'))
    assert.is_false(r.closed)
  end)

  it("a request's socket finds net.Socket's methods as they are now, replaced ones too", function()
    -- A server connection is its socket with the connection's methods in front: what a
    -- script puts on net.Socket, before or after the first connection, is what it calls.
    local got = {}
    local _, port = serve(function(req, res)
      got[#got + 1] = req.socket:setKeepAlive()
      res:finish('ok')
    end)
    local original = net.Socket.setKeepAlive
    local r1 = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
    waitResponses(r1, 1)
    net.Socket.setKeepAlive = function()
      return 'replaced'
    end
    local ok, err = pcall(function()
      local r2 = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
      waitResponses(r2, 1)
    end)
    net.Socket.setKeepAlive = original
    assert(ok, err)
    assert.are.equal('table', type(got[1]))
    assert.are.equal('replaced', got[2])
  end)

  it('writeHead sets status, reason and headers; bad header values raise', function()
    local errs = {}
    local _, port = serve(function(_, res)
      errs[1] = select(2, pcall(res.setHeader, res, 'X', 'a\r\nInjected: 1'))
      errs[2] = select(2, pcall(res.setHeader, res, 'Bad Name', 'v'))
      res:writeHead(201, 'Made It', { ['X-A'] = '1' })
      errs[3] = select(2, pcall(res.setHeader, res, 'Late', 'v'))
      res:finish()
    end)
    local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
    local rs = waitResponses(r, 1)
    assert.are.equal(201, rs[1].status)
    assert.are.equal('Made It', rs[1].reason)
    assert.are.equal('1', rs[1].headers['x-a'])
    assert.are.equal('0', rs[1].headers['content-length'])
    assert.matches('^ERR_INVALID_CHAR', errs[1])
    assert.matches('^ERR_INVALID_HTTP_TOKEN', errs[2])
    assert.matches('^ERR_HTTP_HEADERS_SENT', errs[3])
  end)


  -- writeHead's header table goes through _core.http_set_headers (one C call) and falls
  -- back to setHeader for anything unusual: both paths must store and raise alike.
  it('writeHead headers: wire case, numbers, lists, getHeader, and the same errors', function()
    local seen, errs = {}, {}
    local _, port = serve(function(req, res)
      if req.url == '/bad-name' then
        errs[1] = select(2, pcall(res.writeHead, res, 200, { ['Bad Name'] = 'v' }))
      elseif req.url == '/bad-value' then
        errs[2] = select(2, pcall(res.writeHead, res, 200, { ['X-Ok'] = 'a', ['X-Bad'] = 'a\r\nB: 1' }))
      end
      res:setHeader('X-Before', 'kept')
      -- The case last given goes on the wire, whichever path stored it.
      res:setHeader('content-type', 'old')
      res:setHeader('X-Case', 'old')
      -- Strings and numbers only: the C path. A list or a boolean value: the setHeader path.
      local h = { ['Content-Type'] = 'text/plain', ['X-Num'] = 42, ['x-lower'] = 'l', ['x-case'] = 'new',
        ETag = '"e"' }
      if req.url == '/slow' then
        h['X-List'] = { 'a', 'b' }
        h['X-Flag'] = true
      end
      res:writeHead(200, h)
      seen[req.url] = { res:getHeader('content-type'), res:getHeader('X-NUM'), res:getHeader('x-before'),
        res:hasHeader('X-Lower') }
      res:finish('ok')
    end)
    local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /slow HTTP/1.1\r\nHost: h\r\n\r\n'
      .. 'GET /bad-name HTTP/1.1\r\nHost: h\r\n\r\nGET /bad-value HTTP/1.1\r\nHost: h\r\n\r\n')
    local rs = waitResponses(r, 4)
    for i = 1, 4 do
      local head = rs[i].raw
      assert.truthy(head:find('\r\nContent-Type: text/plain\r\n', 1, true), head)
      assert.truthy(head:find('\r\nX-Num: 42\r\n', 1, true), head)
      assert.truthy(head:find('\r\nx-lower: l\r\n', 1, true), head)
      assert.truthy(head:find('\r\nX-Before: kept\r\n', 1, true), head)
      assert.truthy(head:find('\r\nx-case: new\r\n', 1, true), head)
      assert.truthy(head:find('\r\nETag: "e"\r\n', 1, true), head)
      assert.falsy(head:find('content-type', 1, true), head)
      assert.falsy(head:find('X-Case', 1, true), head)
      assert.are.equal('ok', rs[i].body)
    end
    assert.falsy(rs[1].raw:find('X-List', 1, true))
    assert.truthy(rs[2].raw:find('\r\nX-List: a\r\nX-List: b\r\n', 1, true), rs[2].raw)
    assert.truthy(rs[2].raw:find('\r\nX-Flag: true\r\n', 1, true), rs[2].raw)
    assert.falsy(rs[4].raw:find('X-Bad', 1, true))
    assert.are.same({ 'text/plain', '42', 'kept', true }, seen['/'])
    assert.are.same({ 'text/plain', '42', 'kept', true }, seen['/slow'])
    assert.matches('ERR_INVALID_HTTP_TOKEN', errs[1])
    assert.matches('ERR_INVALID_CHAR', errs[2])
  end)
  it('parses a request split byte by byte across reads', function()
    local got
    local _, port = serve(function(req, res)
      local body = {}
      req:on('data', function(c)
        body[#body + 1] = c
      end)
      req:on('end', function()
        got = { url = req.url, h = req.headers['x-long'], body = table.concat(body) }
        res:finish('ok')
      end)
    end)
    local r = raw(port)
    r.socket:setNoDelay(true)
    local text = 'POST /split HTTP/1.1\r\nHost: h\r\nX-Long: value\r\nContent-Length: 5\r\n\r\nabcde'
    for i = 1, #text do
      local sent = false
      r.socket:write(text:sub(i, i), function()
        sent = true
      end)
      waitFor(function()
        return sent
      end, 1000, 'byte ' .. i .. ' to be written')
    end
    local rs = waitResponses(r, 1)
    assert.are.same({ url = '/split', h = 'value', body = 'abcde' }, got)
    assert.are.equal('ok', rs[1].body)
  end)

  -- A server's req.headers is built from the head's raw block only when first read: the
  -- table must be the same read at once, after the body, after later pipelined requests
  -- were parsed on the same connection, or never.
  it('req.headers read late, after the body or never holds the head as parsed', function()
    local reqs, bodies = {}, {}
    local want = {
      host = 'h',
      ['x-dup'] = 'a, b',
      cookie = 'c=1; d=2',
      ['set-cookie'] = { 's1', 's2' },
      ['content-type'] = 'text/first',
      ['x-empty'] = '',
      ['x-trail'] = 'v',
    }
    local _, port = serve(function(req, res)
      reqs[#reqs + 1] = req
      if req.url == '/now' then
        bodies.now = req.headers
      end
      local body = ''
      req:on('data', function(d)
        body = body .. d
      end)
      req:on('end', function()
        if req.url == '/body' then
          bodies.body = req.headers
        end
        res:finish(body)
      end)
    end)
    local head = 'Host: h\r\nX-Dup: a\r\nCookie: c=1\r\nSet-Cookie: s1\r\nx-dup: b\r\n'
      .. 'Content-Type: text/first\r\ncookie: d=2\r\nset-cookie: s2\r\nContent-Type: text/second\r\n'
      .. 'X-Empty:\r\nX-Trail: v  \r\n'
    local r = raw(port, 'GET /now HTTP/1.1\r\n' .. head .. '\r\n'
      .. 'POST /body HTTP/1.1\r\n' .. head .. 'Content-Length: 3\r\n\r\nabc'
      .. 'GET /late HTTP/1.1\r\n' .. head .. '\r\n'
      .. 'GET /never HTTP/1.1\r\nHost: other\r\n\r\n')
    local rs = waitResponses(r, 4)
    assert.are.equal('abc', rs[2].body)
    assert.are.equal(4, #reqs)
    assert.are.same(want, bodies.now)
    local withLen = {}
    for k, v in pairs(want) do
      withLen[k] = v
    end
    withLen['content-length'] = '3'
    assert.are.same(withLen, bodies.body)
    -- Read only now, after every request on the connection was parsed and answered.
    assert.are.same(want, reqs[3].headers)
    assert.are.equal(reqs[3].headers, reqs[3].headers)
    assert.are.same({ host = 'other' }, reqs[4].headers)
    assert.are.equal('/never', reqs[4].url)
    assert.is_function(reqs[4].on)
  end)

  -- writeHead(status, tbl) with no header set before keeps the head's lines as one string;
  -- the header store is made from them when asked for, with the same names and values.
  it('writeHead lines: getHeader, getHeaders, special headers and writes after it', function()
    local seen = {}
    local _, port = serve(function(req, res)
      if req.url == '/get' then
        res:writeHead(200, { ['Content-Type'] = 'text/plain', ['x-lower'] = 'l', ['X-Num'] = 7 })
        seen.get = { res:getHeader('content-type'), res:getHeader('X-LOWER'), res:hasHeader('x-num'),
          res:getHeaders(), res:getHeaderNames() }
        res:finish('a')
      elseif req.url == '/len' then
        res:writeHead(200, { ['Content-Length'] = 2, ['X-A'] = '1' })
        res:finish('bb')
      elseif req.url == '/conn' then
        res:writeHead(200, { Connection = 'close', ['X-B'] = '2' })
        res:finish('c')
      elseif req.url == '/chunks' then
        res:writeHead(200, { ['X-C'] = '3' })
        res:write('d1')
        res:finish('d2')
      end
    end)
    local r = raw(port, 'GET /get HTTP/1.1\r\nHost: h\r\n\r\nGET /len HTTP/1.1\r\nHost: h\r\n\r\n'
      .. 'GET /chunks HTTP/1.1\r\nHost: h\r\n\r\n'
      .. 'GET /conn HTTP/1.1\r\nHost: h\r\n\r\n')
    local rs = waitResponses(r, 4)
    assert.are.same({ 'text/plain', 'l', true,
      { ['content-type'] = 'text/plain', ['x-lower'] = 'l', ['x-num'] = '7' },
      { 'content-type', 'x-lower', 'x-num' } }, seen.get)
    assert.truthy(rs[1].raw:find('\r\nContent-Type: text/plain\r\n', 1, true), rs[1].raw)
    assert.truthy(rs[1].raw:find('\r\nx-lower: l\r\n', 1, true), rs[1].raw)
    assert.truthy(rs[1].raw:find('\r\nX-Num: 7\r\n', 1, true), rs[1].raw)
    assert.are.equal('1', rs[1].headers['content-length'])
    assert.are.equal('keep-alive', rs[1].headers['connection'])
    assert.are.equal('bb', rs[2].body)
    assert.are.equal('2', rs[2].headers['content-length'])
    assert.falsy(rs[2].raw:find('Content-Length: 2\r\n.*Content-Length'), rs[2].raw)
    assert.are.equal('d1d2', rs[3].body)
    assert.are.equal('chunked', rs[3].headers['transfer-encoding'])
    assert.are.equal('3', rs[3].headers['x-c'])
    assert.are.equal('close', rs[4].headers['connection'])
    assert.falsy(rs[4].raw:find('keep-alive', 1, true), rs[4].raw)
    waitClosed(r)
  end)

  -- http_head_lines keeps the last 4 all-string header sets (and their answer, lines or
  -- "use the header store") by the strings' identity: repeats, more sets than entries,
  -- cached refusals (Content-Length, a bad name) must answer as the first time did.
  it('writeHead lines cache: repeated, rotating and refused header sets answer alike', function()
    local errs = {}
    local _, port = serve(function(req, res)
      local i = tonumber(req.url:match('%d+'))
      if req.url:find('^/bad') then
        errs[#errs + 1] = select(2, pcall(res.writeHead, res, 200, { ['Bad Name'] = 'v' }))
        res:finish('x')
      elseif req.url:find('^/len') then
        res:writeHead(200, { ['Content-Length'] = '2', ['X-L'] = 'l' })
        res:finish('bb')
      else
        -- Six sets (more than the cache holds), each from the same interned strings.
        local sets = { { A = 'a' }, { B = 'b' }, { ['X-Num'] = 'n' }, { C = 'c', D = 'd' },
          { E = 'e' }, { A = 'b' } }
        res:writeHead(200, sets[i % 6 + 1])
        res:finish(tostring(i))
      end
    end)
    local want = { { 'A', 'a' }, { 'B', 'b' }, { 'X-Num', 'n' }, { 'C', 'c' }, { 'E', 'e' }, { 'A', 'b' } }
    local req = {}
    for i = 0, 23 do
      req[#req + 1] = 'GET /' .. i .. ' HTTP/1.1\r\nHost: h\r\n\r\n'
      if i % 8 == 0 then
        req[#req + 1] = 'GET /len HTTP/1.1\r\nHost: h\r\n\r\nGET /bad HTTP/1.1\r\nHost: h\r\n\r\n'
      end
    end
    local r = raw(port, table.concat(req))
    local rs = waitResponses(r, 30)
    local k = 0
    for i = 0, 23 do
      k = k + 1
      local w = want[i % 6 + 1]
      assert.are.equal(tostring(i), rs[k].body)
      assert.truthy(rs[k].raw:find('\r\n' .. w[1] .. ': ' .. w[2] .. '\r\n', 1, true), rs[k].raw)
      if i % 6 == 3 then
        assert.truthy(rs[k].raw:find('\r\nD: d\r\n', 1, true), rs[k].raw)
      end
      if i % 8 == 0 then
        assert.are.equal('bb', rs[k + 1].body)
        assert.are.equal('l', rs[k + 1].headers['x-l'])
        assert.falsy(rs[k + 1].raw:find('Content-Length.*Content-Length'), rs[k + 1].raw)
        assert.are.equal('x', rs[k + 2].body)
        k = k + 2
      end
    end
    assert.are.equal(3, #errs)
    for _, e in ipairs(errs) do
      assert.matches('ERR_INVALID_HTTP_TOKEN', e)
    end
  end)

  -- writeHead checks the last all-string set of up to 4 pairs in Lua before http_head_lines:
  -- a set that only starts like it, extends it, differs in one value or in a value's type,
  -- or has more than 4 pairs must answer as a fresh set would.
  it('writeHead lines cache in Lua: prefixes, extensions, numbers and big sets', function()
    local sets = {
      { A = 'a', B = 'b' }, { A = 'a' }, { A = 'a', B = 'b' }, { A = 'a', B = 'b', C = 'c' },
      { A = 'a', B = 'b' }, { A = 'a', B = 'x' }, { A = 'a', B = 'b' }, { A = 'a', B = 2 },
      { A = 'a', B = 'b' }, { A = 'a', B = 'b', C = 'c', D = 'd', E = 'e' },
      { A = 'a', B = 'b', C = 'c', D = 'd', E = 'e' }, { A = 'a', B = 'b', C = 'c', D = 'd' },
      { A = 'a', B = 'b', C = 'c', D = 'd' }, { A = 'a', B = 'b', C = 'c' },
      { A = 'a', B = 'b', ['Content-Length'] = '1' }, { A = 'a', B = 'b', ['Content-Length'] = '1' },
    }
    local _, port = serve(function(req, res)
      local i = tonumber(req.url:match('%d+'))
      res:writeHead(200, sets[i])
      res:finish('z')
    end)
    local req = {}
    for i = 1, #sets do
      req[i] = 'GET /' .. i .. ' HTTP/1.1\r\nHost: h\r\n\r\n'
    end
    local r = raw(port, table.concat(req))
    local rs = waitResponses(r, #sets)
    for i, set in ipairs(sets) do
      local want = {}
      for k, v in pairs(set) do
        want[k:lower()] = tostring(v)
        assert.truthy(rs[i].raw:find('\r\n' .. k .. ': ' .. v .. '\r\n', 1, true), rs[i].raw)
      end
      local got, n = 0, 0
      for k in pairs(want) do
        n = n + 1
        if rs[i].headers[k] == want[k] then
          got = got + 1
        end
      end
      assert.are.equal(n, got, rs[i].raw)
      assert.are.equal('z', rs[i].body)
      assert.falsy(rs[i].raw:find('Content-Length.*Content-Length'), rs[i].raw)
      -- Exactly the set's lines, nothing left from the previous set.
      local _, lines = rs[i].raw:gsub('\r\n[A-E]: ', '')
      local letters = 0
      for k in pairs(set) do
        if #k == 1 then
          letters = letters + 1
        end
      end
      assert.are.equal(letters, lines, rs[i].raw)
    end
  end)

  -- writeHead(status, { ..., ['Content-Length'] = n }) keeps the head as lines (no header
  -- table; the JSON API path) and still frames the body by the user's length: one
  -- Content-Length as given, never chunked, also in pieces, lower case, a number or a string,
  -- repeated and changing values, and getHeader reads it back.
  it('writeHead with a Content-Length keeps lines and the user length frames the body', function()
    local kinds = {}
    local _, port = serve(function(req, res)
      local i = tonumber(req.url:match('%d+'))
      local body = string.rep('b', i)
      if req.url:find('^/lower') then
        res:writeHead(200, { ['content-length'] = i, ['X-K'] = 'k' })
      else
        local len = i % 2 == 0 and i or tostring(i)
        res:writeHead(200, { ['Content-Type'] = 'application/json', ['Content-Length'] = len })
      end
      kinds[#kinds + 1] = type(rawget(res, '_headers'))
      if req.url:find('^/pieces') then
        res:write(body:sub(1, 1))
        res:finish(body:sub(2))
      else
        assert(res:getHeader('content-length') == tostring(i) or res:getHeader('content-length') == i)
        res:finish(body)
      end
    end)
    local paths = { '/3', '/3', '/4', '/4', '/17', '/lower5', '/lower5', '/pieces6', '/0', '/3' }
    local req = {}
    for i, p in ipairs(paths) do
      req[i] = 'GET ' .. p .. ' HTTP/1.1\r\nHost: h\r\n\r\n'
    end
    local r = raw(port, table.concat(req))
    local rs = waitResponses(r, #paths)
    for i, p in ipairs(paths) do
      local n = tonumber(p:match('%d+'))
      assert.are.equal(string.rep('b', n), rs[i].body, rs[i].raw)
      assert.are.equal(tostring(n), rs[i].headers['content-length'], rs[i].raw)
      local _, count = rs[i].raw:lower():gsub('content%-length:', '')
      assert.are.equal(1, count, rs[i].raw)
      assert.falsy(rs[i].headers['transfer-encoding'], rs[i].raw)
      if p:find('lower') then
        assert.truthy(rs[i].raw:find('\r\ncontent-length: ' .. n .. '\r\n', 1, true), rs[i].raw)
      end
    end
    -- The store's path would have made a header table (the getHeader call above makes one from
    -- the lines, after the type was taken).
    for _, k in ipairs(kinds) do
      assert.are.equal('string', k)
    end
    -- HEAD: the user's length goes out, no body follows, the connection stays usable.
    local h = raw(port, 'HEAD /9 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n')
    waitFor(function()
      return h.data:find('\r\n\r\nbb$')
    end, 3000, 'the HEAD and the GET responses')
    local _, count = h.data:gsub('Content%-Length: ', '')
    assert.are.equal(2, count, h.data)
    assert.truthy(h.data:find('Content-Length: 9\r\n', 1, true), h.data)
  end)

  -- Request and response tables hold 8 fields; the rest are class defaults or __index
  -- answers, which must read and write as plain fields would.
  it('request and response fields: defaults, aliases, writes and lazy headers', function()
    local seen
    local _, port = serve(function(req, res)
      if req.method == 'HEAD' then
        res.statusCode = 404
        res:finish('gone')
        return
      end
      local h1 = req.headers
      seen = {
        sameSocket = req.socket == req.connection and res.socket == req.socket
          and res.connection == req.socket,
        sameHeaders = h1 == req.headers,
        -- Node's server sockets: half-open (the response goes out after the client's end).
        socketFields = { req.socket.allowHalfOpen, req.socket.pending, req.socket.destroyed },
        host = h1.host,
        defaults = { req.complete, req.aborted, res.statusCode, res.headersSent, res.finished,
          res.writableEnded, res.writableFinished, res.statusMessage },
      }
      req.headers = { replaced = true }
      seen.replaced = req.headers.replaced
      res.statusCode = 404
      res.custom = 'c'
      res:finish('gone')
      seen.after = { res.finished, res.writableEnded, res.writableFinished, res.headersSent,
        res.statusCode, res.custom }
    end)
    local r = raw(port, 'GET /x HTTP/1.1\r\nHost: h\r\n\r\nHEAD /y HTTP/1.1\r\nHost: h\r\n\r\n')
    local rs = waitResponses(r, 1)
    assert.are.equal(404, rs[1].status)
    assert.are.equal('gone', rs[1].body)
    assert.is_true(seen.sameSocket)
    assert.is_true(seen.sameHeaders)
    assert.are.same({ true, false, false }, seen.socketFields)
    assert.are.equal('h', seen.host)
    assert.are.same({ true, false, 200, false, false, false, false, false }, seen.defaults)
    assert.is_true(seen.replaced)
    assert.are.same({ true, true, true, true, 404, 'c' }, seen.after)
    -- The HEAD request after it: Content-Length of the body it would have had, no body.
    waitFor(function()
      return r.data:find('HTTP/1.1 404 Not Found.*HTTP/1.1 404 Not Found\r\n.*\r\n\r\n$')
    end, 3000, 'the HEAD response')
    assert.falsy(r.data:find('gone.*gone'), r.data)
    assert.truthy(r.data:find('HTTP/1.1 404 Not Found\r\n[^\n]*\n.*Content%-Length: 4\r\n.*\r\n\r\n$'), r.data)
  end)

  it('answers pipelined requests in order even when the first answers last', function()
    local _, port = serve(function(req, res)
      if req.url == '/slow' then
        setTimeout(function()
          res:finish('slow')
        end, 30)
      elseif req.url == '/chunks' then
        res:write('c1')
        res:finish('c2')
      else
        res:finish('fast' .. req.url)
      end
    end)
    local r = raw(port, 'GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /chunks HTTP/1.1\r\nHost: h\r\n\r\n'
      .. 'GET /3 HTTP/1.1\r\nHost: h\r\n\r\n')
    local rs = waitResponses(r, 3)
    assert.are.same({ 'slow', 'c1c2', 'fast/3' }, { rs[1].body, rs[2].body, rs[3].body })
    assert.are.equal('chunked', rs[2].headers['transfer-encoding'])
  end)

  it('streams chunked request bodies and large bodies in several data events', function()
    local got = {}
    local _, port = serve(function(req, res)
      local n, parts = 0, 0
      local sum = 0
      req:on('data', function(c)
        n = n + #c
        parts = parts + 1
        sum = sum + c:byte(1)
      end)
      req:on('end', function()
        got[req.url] = { n = n, parts = parts }
        res:finish(tostring(n))
      end)
    end)
    local r = raw(port, 'POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n'
      .. '5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n')
    waitResponses(r, 1)
    assert.are.equal(11, got['/chunked'].n)
    local size = 4 * 1024 * 1024
    local r2 = raw(port, 'POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: ' .. size .. '\r\n\r\n')
    r2.socket:write(('x'):rep(size))
    local rs = waitResponses(r2, 1, 'the big body to be counted')
    assert.are.equal(tostring(size), rs[1].body)
    assert.is_true(got['/big'].parts > 1)
  end)

  -- A small POST reaches Lua in one call with its whole body (http.c, Conn:_onHead): its
  -- 'data' and 'end' must still come after the handler returned, in order, however the
  -- body's bytes came (with the head, after it, in pieces).
  describe('request bodies', function()
    local log
    local function logger(tag)
      return function(req, res)
        local name = tag or req.url
        log[#log + 1] = name .. ' handler'
        req:on('data', function(c)
          log[#log + 1] = name .. ' data ' .. c
        end)
        req:on('end', function()
          log[#log + 1] = name .. ' end'
          res:finish(name)
        end)
        log[#log + 1] = name .. ' returns'
      end
    end
    local function post(url, body)
      return 'POST ' .. url .. ' HTTP/1.1\r\nHost: h\r\nContent-Length: ' .. #body .. '\r\n\r\n' .. body
    end
    before_each(function()
      log = {}
    end)

    it("flow after the handler returns: with the head, after it, and in pieces", function()
      local _, port = serve(logger())
      -- One write: the head and the whole body in one read.
      local r = raw(port, post('/one', 'abc'))
      waitResponses(r, 1)
      assert.are.same({ '/one handler', '/one returns', '/one data abc', '/one end' }, log)
      -- The head, then the body in a later read.
      log = {}
      local text = post('/two', 'defg')
      r.socket:write(text:sub(1, #text - 4))
      waitFor(function()
        return log[2] == '/two returns'
      end, 2000, 'the handler to run on the head')
      r.socket:write('defg')
      waitResponses(r, 2)
      assert.are.same({ '/two handler', '/two returns', '/two data defg', '/two end' }, log)
      -- The head with part of the body, the rest later.
      log = {}
      text = post('/three', 'hijkl')
      r.socket:write(text:sub(1, #text - 3))
      waitFor(function()
        return log[3] == '/three data hi'
      end, 2000, 'the first part of the body')
      r.socket:write('jkl')
      waitResponses(r, 3)
      assert.are.same({ '/three handler', '/three returns', '/three data hi', '/three data jkl', '/three end' },
        log)
      assert.is_false(r.closed)
    end)

    it('pipelined POSTs in one read: each handler gets its own body, in order', function()
      local _, port = serve(logger())
      local r = raw(port, post('/a', '1') .. post('/b', '22') .. 'GET /c HTTP/1.1\r\nHost: h\r\n\r\n'
        .. post('/d', '4444'))
      local rs = waitResponses(r, 4)
      assert.are.same({ '/a', '/b', '/c', '/d' }, { rs[1].body, rs[2].body, rs[3].body, rs[4].body })
      assert.are.same({
        '/a handler', '/a returns', '/a data 1', '/a end',
        '/b handler', '/b returns', '/b data 22', '/b end',
        '/c handler', '/c returns', '/c end',
        '/d handler', '/d returns', '/d data 4444', '/d end',
      }, log)
    end)

    it('a chunked body in one read flows after the handler too', function()
      local _, port = serve(logger('c'))
      local r = raw(port, 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n'
        .. '2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n')
      waitResponses(r, 1)
      assert.are.same({ 'c handler', 'c returns', 'c data ab', 'c data cde', 'c end' }, log)
    end)

    it("listeners attached later (setImmediate) still get 'data' and 'end'", function()
      local got = {}
      local _, port = serve(function(req, res)
        got.complete = req.complete
        setImmediate(function()
          local body = {}
          req:on('data', function(c)
            body[#body + 1] = c
          end)
          req:on('end', function()
            got.body = table.concat(body)
            res:finish('late')
          end)
        end)
      end)
      local r = raw(port, post('/late', 'xyz'))
      local rs = waitResponses(r, 1)
      assert.are.equal('late', rs[1].body)
      assert.are.same({ complete = false, body = 'xyz' }, got)
    end)

    it('a handler that never reads the body: the connection goes on', function()
      local n = 0
      local _, port = serve(function(req, res)
        n = n + 1
        res:finish('n' .. n .. req.url)
      end)
      local r = raw(port, post('/x', ('b'):rep(1000)) .. post('/y', 'q'))
      local rs = waitResponses(r, 2)
      assert.are.same({ 'n1/x', 'n2/y' }, { rs[1].body, rs[2].body })
      r.socket:write(post('/z', ('c'):rep(3000)))
      rs = waitResponses(r, 3)
      assert.are.equal('n3/z', rs[3].body)
      assert.is_false(r.closed)
    end)

    it("pause() in a 'data' listener holds 'end' until resume()", function()
      local _, port = serve(function(req, res)
        req:on('data', function(c)
          log[#log + 1] = 'data ' .. c
          req:pause()
          setImmediate(function()
            log[#log + 1] = 'resume'
            req:resume()
          end)
        end)
        req:on('end', function()
          log[#log + 1] = 'end'
          res:finish('ok')
        end)
      end)
      local r = raw(port, post('/p', 'body'))
      waitResponses(r, 1)
      assert.are.same({ 'data body', 'resume', 'end' }, log)
    end)

    it("a handler that destroys the socket: 'aborted' and 'close', no 'data'", function()
      local _, port = serve(function(req)
        req:on('data', function()
          log[#log + 1] = 'data'
        end)
        req:on('aborted', function()
          log[#log + 1] = 'aborted'
        end)
        req:on('close', function()
          log[#log + 1] = 'close'
        end)
        req.socket:destroy()
      end)
      local r = raw(port, post('/d', 'gone'))
      waitClosed(r)
      waitFor(function()
        return #log >= 2
      end, 2000, "'aborted' and 'close'")
      assert.are.same({ 'aborted', 'close' }, log)
    end)
  end)

  it('writes a large response with backpressure and drain', function()
    local drained, blocked = 0, false
    local _, port = serve(function(_, res)
      local chunk = ('y'):rep(64 * 1024)
      local left = 64
      local function pump()
        while left > 0 do
          left = left - 1
          if not res:write(chunk) then
            blocked = true
            res:once('drain', function()
              drained = drained + 1
              pump()
            end)
            return
          end
        end
        res:finish()
      end
      pump()
    end)
    local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
    -- The client reads nothing until a write has returned false (else a client that keeps
    -- up, on an idle machine, may never fill the socket and there is no backpressure).
    r.socket:pause()
    waitFor(function()
      return blocked
    end, 10000, 'a write to return false')
    r.socket:resume()
    -- Parsed once it has ended (the last chunk), not on every turn of the loop: parsing 4 MiB
    -- at each read took longer than the deadline on a loaded machine under ASan.
    waitFor(function()
      return r.data:sub(-5) == '0\r\n\r\n' or r.closed
    end, 60000, 'the whole 4 MiB response')
    local rs = responses(r.data)
    assert.are.equal(1, #rs)
    assert.are.equal(64 * 64 * 1024, #rs[1].body)
    assert.are.equal('chunked', rs[1].headers['transfer-encoding'])
    assert.is_true(drained > 0)
  end)

  it('answers Expect: 100-continue before the body arrives', function()
    local _, port = serve(function(req, res)
      local body = ''
      req:on('data', function(c)
        body = body .. c
      end)
      req:on('end', function()
        res:finish('got ' .. body)
      end)
    end)
    local r = raw(port, 'POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n')
    waitFor(function()
      return r.data:find('HTTP/1.1 100 Continue\r\n\r\n', 1, true)
    end, 2000, '100 Continue')
    r.socket:write('data')
    local rs = waitResponses(r, 2)
    assert.are.equal(100, rs[1].status)
    assert.are.equal('got data', rs[2].body)
  end)

  it('sends no body for HEAD, and honours HTTP/1.0 and Connection: close', function()
    local _, port = serve(hello)
    local r = raw(port, 'HEAD / HTTP/1.1\r\nHost: h\r\n\r\n')
    waitFor(function()
      return r.data:find('\r\n\r\n', 1, true)
    end, 2000, 'the HEAD response')
    local rs = responses(r.data:gsub('Content%-Length', 'X-Length'))
    assert.are.equal(200, rs[1].status)
    assert.are.equal('', rs[1].body)
    assert.is_false(r.closed)
    local r10 = raw(port, 'GET / HTTP/1.0\r\n\r\n')
    waitClosed(r10)
    rs = responses(r10.data)
    assert.are.equal('close', rs[1].headers.connection)
    assert.are.equal('hello world\n', rs[1].body)
    local rc = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n'
      .. 'GET /ignored HTTP/1.1\r\nHost: h\r\n\r\n')
    waitClosed(rc)
    rs = responses(rc.data)
    assert.are.equal(1, #rs)
    assert.are.equal('close', rs[1].headers.connection)
    local ka = raw(port, 'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
    rs = waitResponses(ka, 1)
    assert.are.equal('keep-alive', rs[1].headers.connection)
    assert.is_false(ka.closed)
  end)

  it('closes an HTTP/1.0 response without a length by closing the connection', function()
    local _, port = serve(function(_, res)
      res:write('part1 ')
      res:finish('part2')
    end)
    local r = raw(port, 'GET / HTTP/1.0\r\n\r\n')
    waitClosed(r)
    local rs = responses(r.data)
    assert.are.equal('part1 part2', rs[1].body)
    assert.is_nil(rs[1].headers['transfer-encoding'])
  end)

  describe('rejects bad requests with 4xx, closes, and keeps serving', function()
    local cases = {
      { 'garbage', 'HELLO THERE\r\n\r\n', 400 },
      { 'a bad Content-Length', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n', 400 },
      { 'two different Content-Lengths',
        'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400 },
      { 'Content-Length with Transfer-Encoding (smuggling)',
        'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
        .. 'GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n', 400 },
      { 'a bad chunk size', 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400 },
      { 'an oversized head', 'GET / HTTP/1.1\r\nHost: h\r\nX-Big: ' .. ('a'):rep(20000) .. '\r\n\r\n', 431 },
      { 'a body over maxBodySize', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n', 413 },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local urls = {}
        local _, port = serve(function(req, res)
          urls[#urls + 1] = req.url
          res:finish('fine')
        end, function(srv)
          srv.maxBodySize = 10
        end)
        local r = raw(port, case[2])
        waitClosed(r, 'the bad connection to close')
        local rs = responses(r.data)
        assert.are.equal(1, #rs)
        assert.are.equal(case[3], rs[1].status)
        assert.are.equal('close', rs[1].headers.connection)
        assert.are.same({}, urls)
        local ok = raw(port, 'GET /next HTTP/1.1\r\nHost: h\r\n\r\n')
        assert.are.equal('fine', waitResponses(ok, 1)[1].body)
      end)
    end
  end)

  it('answers the requests before a bad one, then the 400', function()
    local _, port = serve(hello)
    local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\nBAD\r\n\r\n')
    waitClosed(r)
    local rs = responses(r.data)
    assert.are.same({ 200, 400 }, { rs[1].status, rs[2].status })
  end)

  it('keeps at most maxHeadersCount headers', function()
    local got
    local _, port = serve(function(req, res)
      got = req.headers
      res:finish()
    end, function(srv)
      srv.maxHeadersCount = 3
    end)
    local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n')
    waitResponses(r, 1)
    assert.are.same({ host = 'h', a = '1', b = '2' }, got)
  end)

  describe('timeouts', function()
    it('headersTimeout: a slow head gets 408 and is closed', function()
      local _, port = serve(hello, function(srv)
        srv.headersTimeout = 100
      end)
      local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ')
      waitClosed(r)
      assert.are.equal(408, responses(r.data)[1].status)
    end)

    it('requestTimeout: a slow body gets 408 and is closed', function()
      local _, port = serve(function(req, res)
        req:on('end', function()
          res:finish('late')
        end)
      end, function(srv)
        srv.requestTimeout = 150
      end)
      local r = raw(port, 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc')
      waitClosed(r)
      assert.are.equal(408, responses(r.data)[1].status)
    end)

    it('keepAliveTimeout: an idle connection is closed after it, a busy one is not', function()
      local _, port = serve(function(req, res)
        if req.url == '/slow' then
          setTimeout(function()
            res:finish('slow')
          end, 250)
        else
          res:finish('x')
        end
      end, function(srv)
        srv.keepAliveTimeout = 100
      end)
      local idle = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
      local busy = raw(port, 'GET /slow HTTP/1.1\r\nHost: h\r\n\r\n')
      local t0 = core.now()
      waitResponses(idle, 1)
      waitClosed(idle, 'the idle connection to close')
      assert.is_true(core.now() - t0 >= 100)
      assert.is_false(busy.closed)
      assert.are.equal('slow', waitResponses(busy, 1)[1].body)
    end)

    -- The idle time counts from the end of the last response (the loop's clock, read
    -- through the FFI in Conn:_responseDone), not from the request or the last sweep.
    it('keepAliveTimeout counts from the end of the last response', function()
      local _, port = serve(function(_, res)
        setTimeout(function()
          res:finish('late')
        end, 150)
      end, function(srv)
        srv.keepAliveTimeout = 120
      end)
      local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
      waitResponses(r, 1)
      local answered = core.now()
      waitClosed(r, 'the idle connection to close')
      local idle = core.now() - answered
      assert.is_true(idle >= 110, 'closed ' .. idle .. ' ms after the response')
      assert.is_true(idle < 1000, 'closed ' .. idle .. ' ms after the response')
    end)

    -- A handler that answers a POST without waiting for its body: the connection is idle once
    -- the body has come (the response was done before), so it is timed out too; it was held
    -- open for good, whether the body came with the head or after it.
    it('keepAliveTimeout closes a connection whose POST was answered before its body ended', function()
      local _, port = serve(function(_, res)
        res:finish('early')
      end, function(srv)
        srv.keepAliveTimeout = 100
      end)
      local whole = raw(port, 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc')
      local split = raw(port, 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n')
      waitResponses(whole, 1)
      waitResponses(split, 1)
      split.socket:write('abc')
      waitClosed(whole, 'the connection whose body came with its head to close')
      waitClosed(split, 'the connection whose body came later to close')
      assert.are.equal('early', responses(whole.data)[1].body)
    end)
  end)

  it('close() closes idle keep-alive connections at once and finishes in-flight ones', function()
    local pending
    local srv, port = serve(function(req, res)
      if req.url == '/slow' then
        pending = res
      else
        res:finish('x')
      end
    end)
    local idle = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
    waitResponses(idle, 1)
    local busy = raw(port, 'GET /slow HTTP/1.1\r\nHost: h\r\n\r\n')
    waitFor(function()
      return pending
    end, 2000, 'the slow request')
    local closed = false
    srv:close(function()
      closed = true
    end)
    waitClosed(idle, 'the idle connection to close')
    assert.is_false(busy.closed)
    assert.is_false(closed)
    pending:finish('done')
    local rs = waitResponses(busy, 1)
    assert.are.equal('done', rs[1].body)
    assert.are.equal('close', rs[1].headers.connection)
    waitClosed(busy)
    waitFor(function()
      return closed
    end, 3000, "the server's close event")
    servers = {}
  end)

  it('emits clientError instead of answering when a listener is set', function()
    local seen
    local _, port = serve(hello, function(srv)
      srv:on('clientError', function(err, socket)
        seen = err
        socket:finish('HTTP/1.1 400 Custom\r\n\r\n')
      end)
    end)
    local r = raw(port, 'JUNK\r\n\r\n')
    waitClosed(r)
    assert.are.equal(400, seen.statusCode)
    assert.matches('^HPE_', seen.code)
    assert.are.equal('Custom', responses(r.data)[1].reason)
  end)

  it('a socket error reaches clientError, and without a listener is not uncaught', function()
    local seen, closed = {}, 0
    local withListener = true
    local _, port = serve(hello, function(srv)
      srv:on('connection', function(socket)
        socket:on('close', function(hadError)
          closed = closed + 1
          seen[#seen + 1] = hadError
        end)
        socket:destroy(require('events').makeError('EFAKE', 'fake'))
      end)
      srv:on('clientError', function(err)
        if withListener then
          seen[#seen + 1] = err.code
        end
      end)
    end)
    local r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
    waitClosed(r)
    waitFor(function()
      return closed == 1
    end, 2000, 'the server socket to close')
    assert.are.same({ 'EFAKE', true }, seen)
    withListener = false
    r = raw(port, 'GET / HTTP/1.1\r\nHost: h\r\n\r\n')
    waitClosed(r)
    waitFor(function()
      return closed == 2
    end, 2000, 'the second server socket to close')
  end)

  it('closes a connection whose client never closes its side after a closing response', function()
    local t0, closedAt
    local _, port = serve(hello, function(srv)
      srv:on('connection', function(socket)
        socket:on('close', function()
          closedAt = core.now()
        end)
      end)
    end)
    local s = net.connect({ port = port, host = '127.0.0.1', allowHalfOpen = true })
    sockets[#sockets + 1] = s
    local r = { data = '' }
    s:on('data', function(d)
      r.data = r.data .. d
    end)
    s:on('end', function()
      r.ended = true
      t0 = core.now()
    end)
    s:write('GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n')
    waitFor(function()
      return r.ended
    end, 2000, 'the response and the server half-close')
    assert.are.equal('hello world\n', responses(r.data)[1].body)
    assert.is_nil(closedAt)
    waitFor(function()
      return closedAt
    end, 4000, 'the server to close after its grace')
    assert.is_true(closedAt - t0 >= 1900, 'closed after ' .. (closedAt - t0) .. ' ms')
  end)
end)

describe('http client', function()
  local function collect(res)
    local out = { status = res.statusCode, headers = res.headers, body = '' }
    res:on('data', function(c)
      out.body = out.body .. c
    end)
    res:on('end', function()
      out.done = true
    end)
    return out
  end

  it('gets Content-Length and chunked responses from our server and posts a body', function()
    local _, port = serve(function(req, res)
      if req.url == '/chunked' then
        res:write('a')
        res:finish('b')
      elseif req.method == 'POST' then
        local b = ''
        req:on('data', function(c)
          b = b .. c
        end)
        req:on('end', function()
          res:writeHead(201, { ['X-Len'] = #b })
          res:finish('echo:' .. b)
        end)
      else
        res:finish('plain')
      end
    end)
    local results = {}
    http.get('http://127.0.0.1:' .. port .. '/', function(res)
      results.plain = collect(res)
    end)
    http.get({ host = '127.0.0.1', port = port, path = '/chunked' }, function(res)
      results.chunked = collect(res)
    end)
    local req = http.request({ host = '127.0.0.1', port = port, method = 'POST', path = '/p' }, function(res)
      results.post = collect(res)
    end)
    req:write('abc')
    req:finish('def')
    waitFor(function()
      return results.plain and results.plain.done and results.chunked and results.chunked.done
        and results.post and results.post.done
    end, 3000, 'three responses')
    assert.are.same({ 200, 'plain', '5' }, { results.plain.status, results.plain.body,
      results.plain.headers['content-length'] })
    assert.are.same({ 'ab', 'chunked' }, { results.chunked.body, results.chunked.headers['transfer-encoding'] })
    assert.are.same({ 201, 'echo:abcdef', '6' }, { results.post.status, results.post.body,
      results.post.headers['x-len'] })
  end)

  it('reports a refused connection as an error event', function()
    local port = lctest.freePort()
    local err
    local req = http.get({ host = '127.0.0.1', port = port }, function() end)
    req:on('error', function(e)
      err = e
    end)
    waitFor(function()
      return err
    end, 3000, 'the error')
    assert.are.equal('ECONNREFUSED', err.code)
  end)

  it('talks to a node http server (chunked, EOF-delimited and HEAD responses)', function()
    local dir = lctest.tmpdir()
    local script = lctest.writeFile(dir .. '/srv.js', [[
      const http = require('http');
      const s = http.createServer((req, res) => {
        if (req.url === '/eof') { res.shouldKeepAlive = false; res.useChunkedEncodingByDefault = false;
          res.writeHead(200, {'Connection': 'close'}); res.write('until '); res.end('eof'); return; }
        let b = ''; req.on('data', c => b += c);
        req.on('end', () => { res.setHeader('Set-Cookie', ['a=1', 'b=2']);
          res.write(req.method + ' ' + req.url + ' '); res.end(b); });
      });
      s.listen(0, '127.0.0.1', () => console.log('port ' + s.address().port));
    ]])
    local child = lctest.spawn(script, {}, { binary = 'node' })
    local port = tonumber(child:waitOutput('port (%d+)'))
    local results = {}
    local req = http.request({ host = '127.0.0.1', port = port, method = 'PUT', path = '/x' }, function(res)
      results.put = collect(res)
    end)
    req:finish('body!')
    http.get({ host = '127.0.0.1', port = port, path = '/eof' }, function(res)
      results.eof = collect(res)
    end)
    http.request({ host = '127.0.0.1', port = port, method = 'HEAD', path = '/h' }, function(res)
      results.head = collect(res)
    end):finish()
    waitFor(function()
      return results.put and results.put.done and results.eof and results.eof.done
        and results.head and results.head.done
    end, 5000, 'responses from node')
    assert.are.equal('PUT /x body!', results.put.body)
    assert.are.equal('chunked', results.put.headers['transfer-encoding'])
    assert.are.same({ 'a=1', 'b=2' }, results.put.headers['set-cookie'])
    assert.are.equal('until eof', results.eof.body)
    assert.are.equal(200, results.head.status)
    assert.are.equal('', results.head.body)
    child:stop()
    lctest.rmrf(dir)
  end)
end)

describe('http apps', function()
  local function fetch(port, method, path, body)
    local out = {}
    local req = http.request({ host = '127.0.0.1', port = port, method = method, path = path }, function(res)
      out.status = res.statusCode
      out.body = ''
      res:on('data', function(c)
        out.body = out.body .. c
      end)
      res:on('end', function()
        out.done = true
      end)
    end)
    req:on('error', function(e)
      out.err = e
    end)
    req:finish(body)
    waitFor(function()
      return out.done or out.err
    end, 5000, method .. ' ' .. path)
    assert.is_nil(out.err)
    return out
  end

  it('json_api.lua creates, lists, reads and deletes items', function()
    local port = lctest.freePort()
    local child = lctest.spawn('apps/json_api.lua', { port })
    child:waitOutput('json api on port')
    local created = fetch(port, 'POST', '/items', '{"name":"pen"}')
    assert.are.equal(201, created.status)
    assert.are.same({ id = 1, name = 'pen' }, require('cjson').decode(created.body))
    assert.are.same({ { id = 1, name = 'pen' } }, require('cjson').decode(fetch(port, 'GET', '/items').body))
    assert.are.equal(400, fetch(port, 'POST', '/items', 'not json').status)
    assert.are.equal(204, fetch(port, 'DELETE', '/items/1').status)
    assert.are.equal(404, fetch(port, 'GET', '/items/1').status)
    assert.are.equal('[]', fetch(port, 'GET', '/items').body)
    child:stop()
  end)

  it('long_computation.lua answers with the sum and its pid', function()
    local port = lctest.freePort()
    local child = lctest.spawn('apps/long_computation.lua', { port, 1000 })
    child:waitOutput('started process')
    local r = fetch(port, 'GET', '/')
    assert.matches('^Sum is 499500%-%-time%-%d+%-%-pid = ' .. child.pid .. '$', r.body)
    child:stop()
  end)

  it('http_cluster.lua serves hello world from its workers on one port', function()
    local port = lctest.freePort()
    local child = lctest.spawn('apps/http_cluster.lua', { port, 2 })
    waitFor(function()
      local _, n = child.stdout:gsub('is running on port', '')
      return n == 2
    end, 5000, 'two workers listening')
    assert.are.equal('hello world\n', fetch(port, 'GET', '/').body)
    child:stop()
  end)
end)
