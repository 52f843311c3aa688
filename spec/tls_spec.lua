-- tls and https: real TLS over 127.0.0.1 with certificates made here by the `openssl`
-- command (a CA; a server certificate for localhost and 127.0.0.1; an expired one; one for
-- another name; a client certificate), against `openssl s_server`, `openssl s_client` and
-- `curl`, and lcluster on both ends. Every wait has a deadline; everything is closed after.
local http = require('http')
local https = require('https')
local net = require('net')
local tls = require('tls')
local lctest = require('lctest')

local waitFor = lctest.waitFor
local FIX = 'spec/fixtures/'

local dir
local pem = {}

local function sh(cmd)
  local ok = os.execute(cmd .. ' >/dev/null 2>&1')
  assert(ok == 0 or ok == true, 'failed: ' .. cmd)
end

local function readFile(p)
  local f = assert(io.open(p))
  local s = f:read('*a')
  f:close()
  return s
end

-- The certificates: ca.pem signs server (localhost, 127.0.0.1), expired (same names, not
-- valid since yesterday), other (other.example) and client.
local function makeCerts()
  dir = lctest.tmpdir()
  local o = 'cd ' .. dir .. ' && openssl '
  local ec = ' -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes '
  sh(o .. 'req -x509 -new' .. ec .. '-keyout ca.key -out ca.pem -days 30 -subj /CN=lcluster-test-ca')
  lctest.writeFile(dir .. '/local.ext', 'subjectAltName=DNS:localhost,IP:127.0.0.1\n')
  lctest.writeFile(dir .. '/other.ext', 'subjectAltName=DNS:other.example\n')
  lctest.writeFile(dir .. '/client.ext', 'extendedKeyUsage=clientAuth\n')
  for _, c in ipairs({ { 'server', 'local', 30 }, { 'expired', 'local', -1 }, { 'other', 'other', 30 },
    { 'client', 'client', 30 } }) do
    local n, ext, days = c[1], c[2], c[3]
    sh(o .. 'req -new' .. ec .. '-keyout ' .. n .. '.key -out ' .. n .. '.csr -subj /CN=' .. n)
    sh(o .. 'x509 -req -in ' .. n .. '.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out ' .. n
      .. '.pem -days ' .. days .. ' -extfile ' .. ext .. '.ext')
  end
  for _, n in ipairs({ 'ca', 'server', 'expired', 'other', 'client' }) do
    pem[n] = readFile(dir .. '/' .. n .. '.pem')
    if n ~= 'ca' then
      pem[n .. 'Key'] = readFile(dir .. '/' .. n .. '.key')
    end
  end
end

-- A TLS server in this process on a free port: returns server, port.
local function tlsServe(opts, fn)
  local srv = lctest.track(tls.createServer(opts, fn))
  local up = false
  srv:listen(0, '127.0.0.1', function()
    up = true
  end)
  waitFor(function()
    return up
  end, 2000, 'TLS server to listen')
  return srv, srv:address().port
end

-- Connects and records what happens: r.secure, r.data, r.err, r.closed.
local function tlsClient(opts)
  local r = { data = '', secure = false, closed = false }
  local s
  s = lctest.track(tls.connect(opts, function()
    r.secure = true
    r.cert = s:getPeerCertificate()
  end))
  r.socket = s
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
  return r
end

local function closed(r, what, ms)
  waitFor(function()
    return r.closed
  end, ms or 5000, what or 'the socket to close')
end

describe('tls', function()
  setup(makeCerts)
  teardown(function()
    lctest.rmrf(dir)
  end)
  after_each(function()
    lctest.closeTracked()
    lctest.cleanup()
  end)

  it('connects to openssl s_server, verifies it with ca and reads the peer certificate', function()
    local port = lctest.freePort()
    local srv = lctest.spawn(nil, { 's_server', '-accept', '127.0.0.1:' .. port, '-cert', dir .. '/server.pem',
      '-key', dir .. '/server.key', '-www', '-alpn', 'http/1.1' }, { binary = '/usr/bin/openssl' })
    srv:waitOutput('ACCEPT')
    local r = tlsClient({ host = 'localhost', port = port, ca = pem.ca, ALPNProtocols = { 'h2', 'http/1.1' } })
    waitFor(function()
      return r.secure or r.closed
    end, 5000, 'secureConnect')
    assert.is_nil(r.err)
    local s = r.socket
    assert.is_true(s.authorized)
    assert.is_false(s.authorizationError)
    assert.are.equal('http/1.1', s.alpnProtocol)
    assert.matches('^TLSv1%.[23]$', s:getProtocol())
    local cert = s:getPeerCertificate()
    assert.are.equal('server', cert.subject.CN)
    assert.are.equal('lcluster-test-ca', cert.issuer.CN)
    assert.matches('GMT$', cert.valid_to)
    assert.matches('DNS:localhost', cert.subjectaltname)
    assert.matches('^%x%x:', cert.fingerprint256)
    s:write('GET / HTTP/1.0\r\n\r\n')
    closed(r, 's_server to answer and close')
    assert.is_true(r.ended)
    assert.matches('HTTP/1.0 200 ok', r.data)
    srv:stop()
  end)

  it('verifies against the system store by default, and checks names (IP addresses too)', function()
    local _, port = tlsServe({ key = pem.serverKey, cert = pem.server })
    local cases = {
      { { host = '127.0.0.1', port = port }, 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY' },
      { { host = '127.0.0.1', port = port, ca = pem.ca, servername = 'other.example' },
        'ERR_TLS_CERT_ALTNAME_INVALID' },
    }
    local _, otherPort = tlsServe({ key = pem.otherKey, cert = pem.other })
    cases[#cases + 1] = { { host = '127.0.0.1', port = otherPort, ca = pem.ca }, 'ERR_TLS_CERT_ALTNAME_INVALID' }
    cases[#cases + 1] = { { host = 'localhost', port = otherPort, ca = { pem.ca } }, 'ERR_TLS_CERT_ALTNAME_INVALID' }
    local _, expiredPort = tlsServe({ key = pem.expiredKey, cert = pem.expired })
    cases[#cases + 1] = { { host = 'localhost', port = expiredPort, ca = pem.ca }, 'CERT_HAS_EXPIRED' }
    for _, c in ipairs(cases) do
      local r = tlsClient(c[1])
      closed(r, c[2])
      assert.is_false(r.secure)
      assert.are.equal(c[2], r.err and r.err.code)
      assert.matches('peer 127%.0%.0%.1:' .. c[1].port, r.err.message)
    end
    -- rejectUnauthorized = false: connected, not authorized, and told why.
    local r = tlsClient({ host = 'localhost', port = expiredPort, ca = pem.ca, rejectUnauthorized = false })
    waitFor(function()
      return r.secure or r.closed
    end, 5000, 'secureConnect')
    assert.is_false(r.socket.authorized)
    assert.are.equal('CERT_HAS_EXPIRED', r.socket.authorizationError)
  end)

  it('behaves as a net socket: events, half-close, backpressure, timeouts', function()
    local got = {}
    local srv, port = tlsServe({ key = pem.serverKey, cert = pem.server, allowHalfOpen = true }, function(s)
      got.server = s
      -- s2 below goes away without a word: answering it may meet EPIPE.
      s:on('error', function() end)
      local n = 0
      s:on('data', function(d)
        n = n + #d
      end)
      s:on('end', function()
        -- The client half-closed: answer, then close our side.
        s:finish('got ' .. n)
      end)
    end)
    local connected = false
    local s = lctest.track(tls.connect({ host = 'localhost', port = port, ca = pem.ca }))
    s:on('connect', function()
      connected = true
    end)
    local data, ended, isClosed = '', false, false
    s:on('data', function(d)
      data = data .. d
    end)
    s:on('end', function()
      ended = true
    end)
    s:on('close', function()
      isClosed = true
    end)
    -- Written while connecting: queued in order, write returns false past the mark.
    local big = string.rep('y', 64 * 1024)
    assert.is_false(s:write(big))
    local drained = false
    s:on('drain', function()
      drained = true
    end)
    s:on('secureConnect', function()
      assert.is_true(connected) -- 'connect' comes first, as for a net socket
    end)
    waitFor(function()
      return drained
    end, 5000, "'drain' after the queued write")
    s:finish()
    waitFor(function()
      return isClosed
    end, 5000, 'the exchange to end')
    assert.is_true(ended)
    assert.are.equal('got 65536', data)
    assert.is_true(got.server.encrypted)
    -- setTimeout: 'timeout' after idleness, the socket stays open.
    local s2 = lctest.track(tls.connect({ host = 'localhost', port = port, ca = pem.ca }))
    local timedOut = false
    s2:setTimeout(50, function()
      timedOut = true
    end)
    waitFor(function()
      return timedOut
    end, 5000, "'timeout'")
    assert.is_false(s2.destroyed)
    s2:destroy()
    srv:close()
  end)

  it('asks for client certificates and negotiates ALPN', function()
    local seen = {}
    local _, port = tlsServe({ key = pem.serverKey, cert = pem.server, ca = pem.ca, requestCert = true,
      ALPNProtocols = { 'http/1.1' } }, function(s)
      seen[#seen + 1] = { authorized = s.authorized, cn = s:getPeerCertificate().subject.CN, alpn = s.alpnProtocol }
      s:finish()
    end)
    local errs = {}
    local srv2, port2 = tlsServe({ key = pem.serverKey, cert = pem.server, ca = pem.ca, requestCert = true })
    srv2:on('tlsClientError', function(err)
      errs[#errs + 1] = err.code
    end)
    local r = tlsClient({ host = 'localhost', port = port, ca = pem.ca, cert = pem.client, key = pem.clientKey,
      alpn = { 'h2', 'http/1.1' } })
    closed(r)
    assert.are.same({ { authorized = true, cn = 'client', alpn = 'http/1.1' } }, seen)
    assert.are.equal('http/1.1', r.socket.alpnProtocol)
    -- No certificate: the server refuses, says why in 'tlsClientError', and stays up.
    local r2 = tlsClient({ host = 'localhost', port = port2, ca = pem.ca })
    closed(r2)
    waitFor(function()
      return #errs == 1
    end, 2000, 'tlsClientError')
    assert.are.equal('ERR_TLS_NO_PEER_CERTIFICATE', errs[1])
  end)

  it('chooses the certificate by SNI with SNICallback', function()
    local names = {}
    local _, port = tlsServe({ key = pem.serverKey, cert = pem.server,
      SNICallback = function(name, cb)
        names[#names + 1] = name
        -- Answered on a later turn: the handshake waits.
        setTimeout(function()
          cb(nil, name == 'other.example' and tls.createSecureContext({ key = pem.otherKey, cert = pem.other }) or nil)
        end, 1)
      end }, function(s)
      s:finish('hi')
    end)
    local r = tlsClient({ host = '127.0.0.1', port = port, ca = pem.ca, servername = 'other.example' })
    local r2 = tlsClient({ host = 'localhost', port = port, ca = pem.ca })
    closed(r)
    closed(r2)
    assert.is_nil(r.err)
    assert.is_nil(r2.err)
    assert.are.equal('hi', r.data)
    assert.are.equal('hi', r2.data)
    assert.are.equal('other', r.cert.subject.CN)
    assert.are.equal('server', r2.cert.subject.CN)
    table.sort(names)
    assert.are.same({ 'localhost', 'other.example' }, names)
  end)

  it('reports plaintext sent to a TLS port and a TLS hello sent to a plaintext port', function()
    local errs = {}
    local srv, port = tlsServe({ key = pem.serverKey, cert = pem.server })
    srv:on('tlsClientError', function(err, sock)
      errs[#errs + 1] = err
      assert.is_truthy(sock)
    end)
    local raw = lctest.track(net.connect(port, '127.0.0.1'))
    local rawClosed = false
    raw:on('close', function()
      rawClosed = true
    end)
    raw:on('error', function() end)
    raw:write('hello, this is not TLS at all\r\n\r\n')
    waitFor(function()
      return rawClosed and #errs == 1
    end, 5000, 'the server to refuse plaintext')
    assert.matches('^ERR_SSL_', errs[1].code)
    assert.matches('peer 127%.0%.0%.1:%d+', errs[1].message)

    -- A plain HTTP server gets a TLS hello: the client's error names OpenSSL's reason.
    local hsrv = lctest.track(http.createServer(function(_, res)
      res:finish('plain')
    end))
    local up = false
    hsrv:listen(0, '127.0.0.1', function()
      up = true
    end)
    waitFor(function()
      return up
    end, 2000, 'http server')
    local r = tlsClient({ host = '127.0.0.1', port = hsrv:address().port, ca = pem.ca })
    closed(r, 'the TLS client to fail')
    assert.matches('^ERR_SSL_', r.err.code)
    assert.matches('peer 127%.0%.0%.1:' .. hsrv:address().port, r.err.message)
    -- A plaintext server that hangs up without a word: ECONNRESET, as Node says.
    local nsrv = lctest.track(net.createServer(function(c)
      c:destroy()
    end))
    up = false
    nsrv:listen(0, '127.0.0.1', function()
      up = true
    end)
    waitFor(function()
      return up
    end, 2000, 'net server')
    local r2 = tlsClient({ host = '127.0.0.1', port = nsrv:address().port })
    closed(r2)
    assert.are.equal('ECONNRESET', r2.err.code)
  end)

  it('times out a stalled handshake on both ends', function()
    local errs = {}
    local srv, port = tlsServe({ key = pem.serverKey, cert = pem.server, handshakeTimeout = 100 })
    srv:on('tlsClientError', function(err)
      errs[#errs + 1] = err.code
    end)
    local raw = lctest.track(net.connect(port, '127.0.0.1'))
    local rawClosed = false
    raw:on('close', function()
      rawClosed = true
    end)
    waitFor(function()
      return rawClosed
    end, 5000, 'the server to drop a silent client')
    assert.are.same({ 'ERR_TLS_HANDSHAKE_TIMEOUT' }, errs)
    -- A server that accepts and never answers.
    local silent = lctest.track(net.createServer(function() end))
    local up = false
    silent:listen(0, '127.0.0.1', function()
      up = true
    end)
    waitFor(function()
      return up
    end, 2000, 'silent server')
    local r = tlsClient({ host = '127.0.0.1', port = silent:address().port, handshakeTimeout = 100 })
    closed(r)
    assert.are.equal('ERR_TLS_HANDSHAKE_TIMEOUT', r.err.code)
  end)

  it('moves 200 MB through a TLS socket with bounded memory (pauses honoured)', function()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'tls_bulk.lua', { dir, port, 200 })
    app:waitOutput('ready rss')
    local got, paused = 0, 0
    local r = tlsClient({ host = 'localhost', port = port, ca = pem.ca })
    local s = r.socket
    s:on('data', function(d)
      got = got + #d
      r.data = '' -- keep nothing
      -- Pause now and then: the server's writes must wait, not pile up.
      if got % (16 * 1024 * 1024) < #d then
        paused = paused + 1
        s:pause()
        setTimeout(function()
          s:resume()
        end, 20)
      end
    end)
    closed(r, '200 MB to arrive', 60000) -- ~2 s here; a sanitizer build on a busy machine is slower
    assert.is_nil(r.err)
    assert.are.equal(200 * 1024 * 1024, got)
    assert.is_true(paused >= 10)
    local sent, peak = app:waitOutput('sent (%d+) peak rss (%d+)')
    assert.are.equal(200 * 1024 * 1024, tonumber(sent))
    local base = tonumber(app.stdout:match('ready rss (%d+)'))
    -- The sender held a bounded window, nowhere near the 200 MB it sent.
    assert.is_true(tonumber(peak) - base < 48 * 1024 * 1024, 'peak rss grew by ' .. (tonumber(peak) - base))
    app:waitExit()
    collectgarbage() -- 200 MB of chunks were strings here: leave a clean heap to later specs
  end)
end)

describe('the TLS module', function()
  after_each(lctest.cleanup)

  it('is loaded only by a process that requires tls (OpenSSL costs the others nothing)', function()
    local c = lctest.spawn(FIX .. 'tls_lazy.lua')
    assert.equal(0, (c:waitExit(10000)))
    assert.equal('before false\nafter true\n', c.stdout)
    -- A master that forks, and its worker, never map it either.
    local m = lctest.spawn(FIX .. 'tls_lazy.lua', { 'cluster' })
    assert.equal(0, (m:waitExit(10000)))
    assert.matches('worker false\n', m.stdout, 1, true)
    assert.matches('master false\n', m.stdout, 1, true)
  end)
end)

describe('https URLs', function()
  it('reports a bad URL or scheme at the caller of https.get and https.request', function()
    for _, call in ipairs({ https.get, https.request }) do
      for _, case in ipairs({
        { 'http://x/', 'ERR_INVALID_PROTOCOL: protocol "http:" not supported, expected "https:"' },
        { 'nope', 'ERR_INVALID_URL: invalid URL: nope' },
        { 5, 'ERR_INVALID_ARG_TYPE' },
      }) do
        local ok, err = pcall(function()
          call(case[1])
        end)
        assert.is_false(ok)
        assert.matches('^spec/tls_spec%.lua:%d+: ', err)
        assert.matches(case[2], err, 1, true)
      end
    end
  end)
end)

describe('https', function()
  setup(makeCerts)
  teardown(function()
    lctest.rmrf(dir)
  end)
  after_each(function()
    lctest.closeTracked()
    lctest.cleanup()
  end)

  local function startApp()
    local port = lctest.freePort()
    local app = lctest.spawn(FIX .. 'tls_app.lua', { dir, port }, { flags = { '-w', '2' } })
    app:waitOutput('worker ready pid %d+.-worker ready pid %d+')
    return app, port
  end

  local function curl(args)
    local argv = { '-sS', '--max-time', '10', '--cacert', dir .. '/ca.pem' }
    for _, a in ipairs(args) do
      argv[#argv + 1] = a
    end
    local c = lctest.spawn(nil, argv, { binary = '/usr/bin/curl' })
    local code = c:waitExit(15000)
    return code, c.stdout, c.stderr
  end

  it('serves curl --cacert from both workers of -w 2, and refuses plain HTTP with a 400', function()
    local app, port = startApp()
    local pids = {}
    for _ = 1, 4 do
      local code, out, err = curl({ 'https://localhost:' .. port .. '/' })
      assert.are.equal(0, code, err)
      pids[out:match('^pid (%d+)')] = true
      assert.matches('alpn http/1.1$', out) -- curl offers h2 and http/1.1; https says http/1.1
    end
    local n = 0
    for _ in pairs(pids) do
      n = n + 1
    end
    assert.are.equal(2, n)
    local code, out = curl({ '-o', '/dev/null', '-w', '%{size_download}', 'https://127.0.0.1:' .. port .. '/big' })
    assert.are.equal(0, code)
    assert.are.equal('4194304', out)
    -- curl refuses our certificate without the CA, and the worker survives the failure.
    local c = lctest.spawn(nil, { '-sS', '--max-time', '10', 'https://localhost:' .. port .. '/' },
      { binary = '/usr/bin/curl' })
    assert.are_not.equal(0, c:waitExit(15000))
    code, out = curl({ 'http://127.0.0.1:' .. port .. '/' })
    assert.are.equal(0, code)
    assert.matches('plain HTTP request was sent to HTTPS port', out)
    app:waitOutput('tls client error ERR_SSL_HTTP_REQUEST')
    assert.are.equal(0, curl({ 'https://localhost:' .. port .. '/' }))
    app:stop()
  end)

  it('resumes sessions across workers (tickets keyed per cluster)', function()
    local app, port = startApp()
    -- openssl s_client -reconnect (TLS 1.2): the 5 reconnections alternate between workers.
    local c = lctest.spawn(nil, { 's_client', '-connect', '127.0.0.1:' .. port, '-CAfile', dir .. '/ca.pem',
      '-tls1_2', '-reconnect' }, { binary = '/usr/bin/openssl' })
    c:waitExit(15000)
    local reused = select(2, c.stdout:gsub('\nReused, ', ''))
    assert.are.equal(5, reused, c.stdout)
    -- TLS 1.3: our own client takes the session from one connection and resumes it on fresh
    -- ones, which land on both workers.
    local function get(session)
      local r = tlsClient({ host = 'localhost', port = port, ca = pem.ca, session = session })
      r.socket:write('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
      local sess
      r.socket:on('data', function()
        sess = sess or r.socket:getSession()
      end)
      closed(r)
      assert.is_nil(r.err)
      local pid, reusedFlag, proto = r.data:match('pid (%d+) reused (%a+) proto (%S+)')
      return pid, reusedFlag, proto, sess, r.socket:isSessionReused()
    end
    local pid, wasReused, proto, session = get(nil)
    assert.are.equal('false', wasReused)
    assert.are.equal('TLSv1.3', proto)
    assert.is_truthy(session)
    local pids = { [pid] = true }
    for _ = 1, 4 do
      local p, reusedFlag, _, _, clientSaw = get(session)
      assert.are.equal('true', reusedFlag)
      assert.is_true(clientSaw)
      pids[p] = true
    end
    local n = 0
    for _ in pairs(pids) do
      n = n + 1
    end
    assert.are.equal(2, n)
    app:stop()
  end)

  -- The plaintext of a TLS connection goes to the same parser (tls.lua's Handle:http_attach):
  -- a small body comes with its head in one call, a large one in chunks.
  it('an https server reads POST bodies, small and large', function()
    local srv = lctest.track(https.createServer({ key = pem.serverKey, cert = pem.server }, function(req, res)
      local n, parts = 0, {}
      req:on('data', function(d)
        n = n + 1
        parts[n] = d
      end)
      req:on('end', function()
        local body = table.concat(parts)
        res:finish(#body .. ' ' .. body:sub(1, 5) .. ' ' .. tostring(n > 0))
      end)
    end))
    local up = false
    srv:listen(0, '127.0.0.1', function()
      up = true
    end)
    waitFor(function()
      return up
    end, 2000, 'https server')
    local port = srv:address().port
    for _, body in ipairs({ 'hello', ('x'):rep(300 * 1024) }) do
      local got
      local req = https.request({ hostname = 'localhost', port = port, path = '/p', method = 'POST', ca = pem.ca,
        headers = { ['Content-Length'] = #body } }, function(res)
        local parts = {}
        res:on('data', function(d)
          parts[#parts + 1] = d
        end)
        res:on('end', function()
          got = table.concat(parts)
        end)
      end)
      req:finish(body)
      waitFor(function()
        return got
      end, 5000, 'the https response')
      assert.are.equal(#body .. ' ' .. body:sub(1, 5) .. ' true', got)
    end
  end)

  it('https.get calls an https server with http client interface and TLS options', function()
    local srv = lctest.track(https.createServer({ key = pem.serverKey, cert = pem.server }, function(req, res)
      if req.url == '/file' then
        -- sendfile(2) cannot encrypt: the file is streamed through TLS.
        return res:sendFile(dir .. '/ca.pem')
      end
      res:setHeader('Content-Type', 'text/plain')
      res:finish('hello ' .. req.url .. ' ' .. tostring(req.socket.encrypted) .. ' '
        .. tostring(req.socket:isSessionReused()) .. ' ' .. req.headers.host .. ' '
        .. tostring(req.socket.alpnProtocol))
    end))
    local up = false
    srv:listen(0, '127.0.0.1', function()
      up = true
    end)
    waitFor(function()
      return up
    end, 2000, 'https server')
    local port = srv:address().port
    local function get(path)
      local body, status
      https.get({ hostname = 'localhost', port = port, path = path or '/x', ca = pem.ca }, function(res)
        status = res.statusCode
        local parts = {}
        res:on('data', function(d)
          parts[#parts + 1] = d
        end)
        res:on('end', function()
          body = table.concat(parts)
        end)
      end)
      waitFor(function()
        return body
      end, 5000, 'the https response')
      return status, body
    end
    local status, body = get()
    assert.are.equal(200, status)
    assert.are.equal('hello /x true false localhost:' .. port .. ' false', body)
    -- The next request to the same server resumes the session (kept as Node's agent does).
    waitFor(function()
      return srv._connections == 0
    end, 2000, 'the first connection to close')
    status, body = get()
    assert.are.equal(200, status)
    assert.are.equal('hello /x true true localhost:' .. port .. ' false', body)
    status, body = get('/file')
    assert.are.equal(200, status)
    assert.are.equal(pem.ca, body)
    local err
    -- The same call without the CA fails with the verification code, as an 'error'.
    local req = https.get('https://localhost:' .. port .. '/')
    req:on('error', function(e)
      err = e
    end)
    waitFor(function()
      return err
    end, 5000, 'the https error')
    assert.are.equal('UNABLE_TO_GET_ISSUER_CERT_LOCALLY', err.code)
    srv:close()
  end)
end)
