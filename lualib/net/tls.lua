-- tls.lua: TLS clients and servers (Node's `tls` in Lua's idiom) on OpenSSL memory BIOs
-- (runtime/tlsmod/tls.c) over the runtime's own TCP streams.
--
-- A TLS socket is a net.Socket whose handle (`_handle`) is a Handle (below) instead of a C stream.
-- The Handle owns the TCP stream and the TLS connection: ciphertext the stream reads is fed
-- to OpenSSL, records OpenSSL produces are written to the stream, and the plaintext goes to
-- the socket through the same methods net's C streams call (`_onData`, `_onEnd`,
-- `_onDrain`, `_onShutdown`, `_onConnect`), so events, backpressure (write returns false
-- over the stream's high-water mark, then 'drain'), half-close and timeouts are net's own.
-- http.lua serves and calls over a TLS socket unchanged: Handle:http_attach feeds the
-- plaintext to a C parser, and _core.http_send writes through Handle:write.
-- Size: just over 800 lines: the Handle, the client and the server share the context cache
-- and the certificate helpers as locals.
--
-- Nothing blocks: the handshake advances in the stream's read callbacks; a handshake that
-- stalls ends after handshakeTimeout (120 s by default, as Node).
local core = require('_core')
-- The TLS bindings (runtime/tlsmod/tls.c), loaded on first require (runtime/tls_load.c).
local tc = assert(core.tls_load())
local events = require('events')
local net = require('net')
local timer = require('timer')
local bit = require('bit')

local band = bit.band
local makeError = events.makeError
local setImmediate = timer.setImmediate
local Socket = net.Socket
local HANDLE = net._SOCK_HANDLE -- a socket's handle (`socket._handle`)
local type, pairs, tostring = type, pairs, tostring

local tls = {}

local F_HANDSHAKE, F_CLOSED, F_ERROR, F_SNI = 1, 2, 4, 8
local HANDSHAKE_TIMEOUT = 120000

tls.DEFAULT_MIN_VERSION = 'TLSv1.2'
tls.DEFAULT_MAX_VERSION = 'TLSv1.3'

---------------------------------------------------------------------------------------------
-- Handle: what net.Socket sees in place of a C stream.

local Handle = {}
Handle.__index = Handle

local onTcp -- the TCP stream's callback, defined below

local function newHandle(tcp, conn, sock, server, timeoutMs)
  local self = setmetatable({
    tcp = false,
    conn = false,
    sock = false,
    server = false, -- the tls/https server of an accepted connection
    done = false, -- handshake completed
    failed = false,
    closed = false,
    ended = false, -- EOF or close_notify delivered
    reading = false, -- the socket wants reads (read_start); the handshake reads regardless
    parser = false, -- an http parser fed with the plaintext (http_attach)
    queue = false, -- writes made before the handshake completed (server side)
    timer = false,
  }, Handle)
  self.tcp, self.conn, self.sock, self.server = tcp, conn, sock, server or false
  tcp:set_callback(onTcp, self)
  if timeoutMs and timeoutMs > 0 then
    local t = core.timer(function()
      self:_fail('ERR_TLS_HANDSHAKE_TIMEOUT', 'TLS handshake timeout')
    end)
    t:unref()
    t:start(timeoutMs, 0)
    self.timer = t
  end
  return self
end

-- The peer's address for error messages, read before the stream closes.
function Handle:_peer()
  local p = self.tcp and not self.tcp:is_closing() and self.tcp:getpeername()
  if p then
    return p.address, p.port
  end
end

function Handle:_stopTimer()
  local t = self.timer
  if t then
    self.timer = false
    t:close()
  end
end

-- Writes the records OpenSSL produced (handshake messages, alerts, data).
function Handle:_send(out, fn)
  if out == nil then
    if fn then
      setImmediate(fn)
    end
    return true
  end
  if self.tcp:is_closing() then
    return nil
  end
  return self.tcp:write(out, fn)
end

-- Starts a client's handshake (its ClientHello).
function Handle:_start()
  self.tcp:read_start()
  self:_feed('')
end

function Handle:_feed(cipher)
  if self.closed or self.failed then
    return
  end
  local out, plain, flags, code, msg = self.conn:feed(cipher)
  if out ~= nil then
    self:_send(out)
  end
  if flags ~= 0 then
    if band(flags, F_ERROR) ~= 0 then
      return self:_fail(code, msg)
    end
    if band(flags, F_SNI) ~= 0 then
      return self:_sni()
    end
    if band(flags, F_HANDSHAKE) ~= 0 then
      self:_onHandshake()
      if self.closed or self.sock.destroyed then
        return
      end
    end
  end
  if plain ~= nil then
    local p = self.parser
    if p then
      p._c:feed(plain)
    else
      self.sock:_onData(plain)
    end
  end
  -- A listener may have destroyed the socket while it read the plaintext.
  if flags ~= 0 and band(flags, F_CLOSED) ~= 0 and not self.closed then
    self:_eof()
  end
end

-- The server's SNICallback(servername, cb(err, ctx)) chooses the context (certificate);
-- the handshake waits for cb, which may come later.
function Handle:_sni()
  local server = self.server
  local name = self.conn:servername()
  server._sniCallback(name, function(err, ctx)
    if self.closed or self.failed then
      return
    end
    if err ~= nil then
      return self:_fail(type(err) == 'table' and err.code or 'ERR_TLS_SNI_CALLBACK',
        type(err) == 'table' and err.message or tostring(err))
    end
    if ctx ~= nil and type(ctx) == 'table' then
      ctx = ctx.context
    end
    self.conn:sni_done(ctx)
    self:_feed('')
  end)
end

function Handle:_onHandshake()
  self.done = true
  self:_stopTimer()
  local sock = self.sock
  local info = self.conn:info()
  sock._tlsInfo = info
  sock.authorized = info.verifyError == nil
  sock.authorizationError = info.verifyError or false
  sock.alpnProtocol = info.alpn or false
  sock.servername = info.servername or false
  local server = self.server
  if server then
    if server.requestCert and server.rejectUnauthorized and not sock.authorized then
      self.done = false -- still a failed handshake: reported as 'tlsClientError'
      return self:_fail(info.verifyError, info.verifyMessage or 'client certificate rejected')
    end
    if not self.reading then
      self.tcp:read_stop()
    end
    local q = self.queue
    if q then
      self.queue = false
      for i = 1, #q, 2 do
        self:write(q[i], q[i + 1] or nil)
      end
    end
    server:emit('secureConnection', sock)
    return
  end
  local o = sock._tlsOpts
  if o.rejectUnauthorized and not sock.authorized then
    return self:_fail(info.verifyError, info.verifyMessage)
  end
  sock:_onConnect()
end

-- A fatal TLS failure: the alert (already written) goes out, then the socket closes with an
-- 'error' (a client, or a server's established connection) or, for a server's handshake,
-- the server's 'tlsClientError'(err, socket).
function Handle:_fail(code, message)
  if self.failed or self.closed then
    return
  end
  self.failed = true
  self:_stopTimer()
  local address, port = self:_peer()
  local sock = self.sock
  if address == nil and sock._tlsOpts then
    address, port = sock._tlsOpts.host, sock._connectPort
  end
  if address ~= nil then
    message = ('%s (peer %s:%s)'):format(message or code, address, tostring(port))
  end
  local err = makeError(code, message, { address = address, port = port })
  local server = self.server
  if server and not self.done then
    if code == 'ERR_SSL_HTTP_REQUEST' and server._plainHttp400 then
      -- Plain HTTP on an HTTPS port: say so in plain HTTP, as nginx does.
      self.tcp:write('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 47\r\n\r\n'
        .. 'The plain HTTP request was sent to HTTPS port\r\n\r\n')
    end
    local evs = server._events
    if evs and evs.tlsClientError then
      server:emit('tlsClientError', err, sock)
    end
    sock:destroy()
    return
  end
  sock:destroy(err)
end

function Handle:_eof()
  if self.ended then
    return
  end
  self.ended = true
  if not self.tcp:is_closing() then
    self.tcp:read_stop()
  end
  local p = self.parser
  if p and p.mode == 'response' then
    p._c:feed('') -- a response delimited by the end of the connection completes here
    if self.closed then
      return
    end
  end
  self.sock:_onEnd()
end

onTcp = function(self, ev, a, b)
  if ev == 'data' then
    return self:_feed(a)
  elseif ev == 'end' then
    if not self.done then
      return self:_fail('ECONNRESET', 'the peer closed the connection before the TLS handshake completed')
    end
    return self:_eof()
  elseif ev == 'drain' then
    if self.done then
      return self.sock:_onDrain()
    end
  elseif ev == 'shutdown' then
    return self.sock:_onShutdown(a)
  elseif ev == 'error' then
    if not self.done and not self.failed then
      return self:_fail(b or 'ECONNRESET', a)
    end
    return self.sock:_onError(a, b)
  elseif ev == 'connect' then
    return self.sock:_onConnect(a, b)
  end
end

-- The stream interface net.Socket (and http.lua) use.

function Handle:write(data, fn)
  if self.closed then
    return nil -- closing: nothing is written and there is nothing to report
  end
  if not self.done then
    local q = self.queue
    if not q then
      q = {}
      self.queue = q
    end
    q[#q + 1] = data
    q[#q + 1] = fn or false
    return true
  end
  if data == '' then
    return self:_send(nil, fn)
  end
  local out, err, code = self.conn:write(data)
  if out == nil then
    return nil, err, code
  end
  return self:_send(out, fn)
end

function Handle:shutdown(emit)
  if self.done and not self.failed and not self.closed then
    local out = self.conn:shutdown()
    if out ~= nil then
      self:_send(out)
    end
  end
  return self.tcp:shutdown(emit)
end

-- Client sessions kept for resumption by key (https: host, port and name), at most 100, as
-- Node's https agent keeps them.
local sessions, sessionCount = {}, 0

local function keepSession(key, sess)
  if sessions[key] == nil then
    if sessionCount >= 100 then
      sessions, sessionCount = {}, 0
    end
    sessionCount = sessionCount + 1
  end
  sessions[key] = sess
end

function Handle:close(fn)
  if self.closed then
    return
  end
  self.closed = true
  self:_stopTimer()
  local o = self.sock._tlsOpts
  if o and o.sessionKey and self.done and not self.failed then
    local sess = self.conn:session()
    if sess then
      keepSession(o.sessionKey, sess)
    end
  end
  local p = self.parser
  if p then
    p:detach()
  end
  self.conn:free()
  return self.tcp:close(fn)
end

function Handle:read_start()
  self.reading = true
  if self.done and not self.ended and not self.closed then
    return self.tcp:read_start()
  end
  return true
end

function Handle:read_stop()
  self.reading = false
  if self.done and not self.closed then
    return self.tcp:read_stop()
  end
  return true
end

function Handle:is_closing()
  return self.closed or self.tcp:is_closing()
end

function Handle:write_queue_size()
  return self.tcp:write_queue_size()
end

function Handle:bytes()
  return self.tcp:bytes()
end

function Handle:getpeername()
  return self.tcp:getpeername()
end

function Handle:getsockname()
  return self.tcp:getsockname()
end

function Handle:nodelay(on)
  return self.tcp:nodelay(on)
end

function Handle:keepalive(on, secs)
  return self.tcp:keepalive(on, secs)
end

function Handle:ref()
  return self.tcp:ref()
end

function Handle:unref()
  return self.tcp:unref()
end

function Handle:has_ref()
  return self.tcp:has_ref()
end

function Handle:fileno()
  return self.tcp:fileno()
end

-- An http parser fed with this connection's plaintext (http.lua's http_attach for TLS):
-- parser events go to cb(ctx, ...) as _core.http_attach's do.
local Parser = {}
Parser.__index = Parser

function Parser:detach()
  local h = self.h
  if h.parser == self then
    h.parser = false
  end
  self._c:detach()
end

function Parser:state()
  return self._c:state()
end

function Parser:expect_head(b)
  return self._c:expect_head(b)
end

function Parser:limits(o)
  return self._c:limits(o)
end

function Parser:feed(data)
  return self._c:feed(data)
end

-- Pipelining backpressure (http.lua's stopPipe): the plaintext after the paused message waits
-- in the C parser until resume.
function Parser:pause()
  return self._c:pause()
end

function Parser:resume()
  return self._c:resume()
end

-- The names http.lua's server calls on a connection's parser (a plain TCP connection's is
-- its stream's handle: runtime/http.c's http_methods).
Parser.http_detach, Parser.http_state = Parser.detach, Parser.state
Parser.http_pause, Parser.http_resume = Parser.pause, Parser.resume

function Handle:http_attach(mode, cb, limits, ctx)
  local fn = cb
  if ctx ~= nil then
    fn = function(...)
      return cb(ctx, ...)
    end
  end
  local p = setmetatable({ h = self, mode = mode, _c = core.http_parser(mode, fn, limits) }, Parser)
  self.parser = p
  return p
end

---------------------------------------------------------------------------------------------
-- TLSSocket: a net.Socket with TLS's accessors.

local TLSSocket = setmetatable({}, { __index = Socket })
local socketIndex = Socket.__index
TLSSocket.__index = function(self, k)
  local v = TLSSocket[k]
  if v ~= nil then
    return v
  end
  return socketIndex(self, k)
end

local function initTLSFields(sock)
  setmetatable(sock, TLSSocket)
  sock.encrypted = true
  sock.authorized = false
  sock.authorizationError = false
  sock.alpnProtocol = false
  sock.servername = false
  sock._tlsInfo = false
  sock._tlsOpts = false
  sock._wrapped = false
  return sock
end

-- The TCP connection is up (net calls this with msg == nil) or failed (msg); once wrapped,
-- the handshake completed: net's connect path runs (queued writes flushed, 'connect'),
-- then 'secureConnect'.
function TLSSocket:_onConnect(msg, code)
  if not self._wrapped then
    if msg ~= nil or self.destroyed then
      return Socket._onConnect(self, msg, code)
    end
    local o = self._tlsOpts
    local conn, err, ecode = tc.tls_new(o.ctx, false, o.checkName)
    if conn == nil then
      return self:destroy(makeError(ecode, err))
    end
    if o.session then
      conn:set_session(o.session)
    end
    self._wrapped = true
    local h = newHandle(self[HANDLE], conn, self, nil, o.handshakeTimeout)
    self[HANDLE] = h
    h:_start()
    return
  end
  Socket._onConnect(self)
  if not self.destroyed then
    self:emit('secureConnect')
  end
end

function TLSSocket:getPeerCertificate()
  local h = self[HANDLE]
  if not h or h.closed or not h.done then
    return nil
  end
  return h.conn:peer_certificate()
end

-- 'TLSv1.3', 'TLSv1.2', ... or nil before the handshake.
function TLSSocket:getProtocol()
  local i = self._tlsInfo
  return i and i.protocol or nil
end

function TLSSocket:getCipher()
  local i = self._tlsInfo
  return i and { name = i.cipher, version = i.protocol } or nil
end

function TLSSocket:isSessionReused()
  local i = self._tlsInfo
  return i and i.reused or false
end

-- The session (a string) to pass as `session` to a later tls.connect to resume it. With
-- TLS 1.3 the server sends it after the handshake: ask once data has arrived.
function TLSSocket:getSession()
  local h = self[HANDLE]
  if not h or h.closed or not h.done then
    return nil
  end
  return h.conn:session()
end

tls.TLSSocket = TLSSocket

---------------------------------------------------------------------------------------------
-- Contexts

local function pem(v, name)
  if v == nil then
    return nil
  end
  if type(v) == 'table' then
    for i = 1, #v do
      if type(v[i]) ~= 'string' then
        error(('ERR_INVALID_ARG_TYPE: %s[%d] must be a PEM string'):format(name, i), 4)
      end
    end
    return v
  end
  if type(v) ~= 'string' then
    error(('ERR_INVALID_ARG_TYPE: %s must be a PEM string, got %s'):format(name, type(v)), 4)
  end
  return v
end

local function joinPem(v)
  if type(v) == 'table' then
    return table.concat(v, '\n')
  end
  return v
end

local function makeContext(o, server, extra)
  local spec = {
    server = server,
    key = joinPem(pem(o.key, 'key')),
    cert = joinPem(pem(o.cert, 'cert')),
    ca = pem(o.ca, 'ca'),
    alpn = o.ALPNProtocols or o.alpn,
    ciphers = o.ciphers,
    minVersion = o.minVersion,
    maxVersion = o.maxVersion,
  }
  for k, v in pairs(extra or {}) do
    spec[k] = v
  end
  if spec.alpn ~= nil and type(spec.alpn) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: ALPNProtocols must be a list of strings', 4)
  end
  local ctx, err = tc.tls_context(spec)
  if ctx == nil then
    error(err, 4)
  end
  return ctx
end

-- tls.createSecureContext({key=, cert=, ca=, ...}) -> context, what an SNICallback answers.
function tls.createSecureContext(options)
  if type(options) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: options must be a table', 2)
  end
  return { context = makeContext(options, true) }
end

-- Client contexts are cached by their options: loading the system's CA store costs
-- milliseconds, a connection should not pay it.
local clientContexts, clientContextCount = {}, 0

local function clientContext(o)
  local ca = o.ca
  if type(ca) == 'table' then
    ca = table.concat(ca, '\0')
  end
  local alpn = o.ALPNProtocols or o.alpn
  local key = table.concat({ tostring(ca or ''), tostring(o.cert or ''), tostring(o.key or ''),
    type(alpn) == 'table' and table.concat(alpn, ',') or tostring(alpn or ''), tostring(o.ciphers or ''),
    tostring(o.minVersion or ''), tostring(o.maxVersion or '') }, '\1')
  local ctx = clientContexts[key]
  if ctx == nil then
    ctx = makeContext(o, false)
    if clientContextCount >= 32 then
      clientContexts, clientContextCount = {}, 0
    end
    clientContexts[key] = ctx
    clientContextCount = clientContextCount + 1
  end
  return ctx
end

-- The session-ticket key of this cluster: the master puts one in every worker's
-- environment (LCLUSTER_TLS_TICKET_KEY, hex; _cluster_worker.lua takes it out at boot, so
-- programs the worker starts never see it), so a ticket one worker issued resumes on any
-- other; a process outside a cluster makes its own.
local ticketKey
function tls._ticketKey()
  if ticketKey == nil then
    local cluster = package.loaded.cluster
    local hex = cluster and cluster._tlsTicketKey
    if hex and #hex == 160 and hex:match('^%x+$') then
      ticketKey = hex:gsub('%x%x', function(x)
        return string.char(tonumber(x, 16))
      end)
    else
      ticketKey = tc.tls_random(80)
    end
  end
  return ticketKey
end

-- The hex form the master passes to its workers.
function tls._ticketKeyHex()
  return (tls._ticketKey():gsub('.', function(c)
    return ('%02x'):format(c:byte())
  end))
end

---------------------------------------------------------------------------------------------
-- Client

local connectOptions = { host = true, port = true, servername = true, ca = true, cert = true, key = true,
  rejectUnauthorized = true, alpn = true, ALPNProtocols = true, session = true, minVersion = true,
  maxVersion = true, ciphers = true, timeout = true, handshakeTimeout = true, allowHalfOpen = true,
  family = true, noDelay = true, keepAlive = true, keepAliveInitialDelay = true, checkHost = true,
  _sessionKey = true }

-- tls.connect(options [, fn]) / tls.connect(port [, host] [, options] [, fn]) -> socket.
-- fn listens to 'secureConnect'.
function tls.connect(a1, a2, a3, a4)
  local options, fn
  if type(a1) == 'table' then
    options, fn = a1, a2
  else
    local host, o
    if type(a2) == 'string' then
      host, o, fn = a2, a3, a4
    else
      o, fn = a2, a3
    end
    if type(o) == 'function' then
      o, fn = nil, o
    end
    options = {}
    for k, v in pairs(o or {}) do
      options[k] = v
    end
    options.port, options.host = a1, host or options.host
  end
  for k in pairs(options) do
    if not connectOptions[k] then
      error(("ERR_INVALID_ARG_VALUE: unknown tls.connect option '%s'"):format(tostring(k)), 2)
    end
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  local ctx = clientContext(options)
  local host = options.host or 'localhost'
  -- The name the certificate must carry: servername when given (Node's rule), else host.
  local checkName = options.checkHost or options.servername or host
  local sock = initTLSFields(Socket._new(nil, options.allowHalfOpen == true, false))
  sock._tlsOpts = {
    ctx = ctx,
    host = host,
    checkName = checkName,
    rejectUnauthorized = options.rejectUnauthorized ~= false,
    session = options.session or (options._sessionKey and sessions[options._sessionKey]),
    sessionKey = options._sessionKey,
    handshakeTimeout = options.handshakeTimeout or HANDSHAKE_TIMEOUT,
  }
  if fn then
    sock:once('secureConnect', fn)
  end
  sock:_connect({ host = host, port = options.port, family = options.family, timeout = options.timeout,
    noDelay = options.noDelay, keepAlive = options.keepAlive,
    keepAliveInitialDelay = options.keepAliveInitialDelay })
  return sock
end

---------------------------------------------------------------------------------------------
-- Server

local serverTLSOptions = { key = true, cert = true, ca = true, requestCert = true, rejectUnauthorized = true,
  SNICallback = true, ALPNProtocols = true, alpn = true, ticketKeys = true, sessionTimeout = true,
  handshakeTimeout = true, ciphers = true, minVersion = true, maxVersion = true }

-- Sets a server's TLS state from its options (shared by tls.Server and https.Server).
function tls._initServer(server, options)
  if type(options) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: options must be a table with key and cert', 3)
  end
  if options.SNICallback ~= nil and type(options.SNICallback) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: SNICallback must be a function', 3)
  end
  if options.key == nil and options.SNICallback == nil then
    error('ERR_TLS_MISSING_KEY: a TLS server needs key and cert (or an SNICallback)', 3)
  end
  local tk = options.ticketKeys
  if tk ~= nil and (type(tk) ~= 'string' or #tk ~= 80) then
    error('ERR_INVALID_ARG_VALUE: ticketKeys must be a string of 80 bytes', 3)
  end
  server._tlsCtx = makeContext(options, true, {
    requestCert = options.requestCert == true,
    ticketKeys = tk or tls._ticketKey(),
    sessionTimeout = options.sessionTimeout,
    sni = options.SNICallback ~= nil,
  })
  server.requestCert = options.requestCert == true
  server.rejectUnauthorized = options.rejectUnauthorized ~= false
  server._sniCallback = options.SNICallback or false
  server._handshakeTimeout = options.handshakeTimeout or HANDSHAKE_TIMEOUT
end

-- Turns an accepted connection (net's socket and its C stream) into a TLS socket before
-- net reports it: the handshake starts at once, whatever the socket's pause state.
function tls._wrapAccepted(server, sock, tcp)
  initTLSFields(sock)
  local conn, err, code = tc.tls_new(server._tlsCtx, true)
  if conn == nil then
    tcp:close()
    return nil, err, code
  end
  sock._wrapped = true
  local h = newHandle(tcp, conn, sock, server, server._handshakeTimeout)
  sock[HANDLE] = h
  tcp:read_start()
  return h
end

local Server = setmetatable({}, { __index = net.Server })
Server.__index = Server
Server.super = net.Server

function Server.new(options, fn)
  local self = setmetatable({}, Server)
  self:_init(options, fn)
  return self
end

function Server:_init(options, fn)
  if type(options) == 'function' then
    options, fn = nil, options
  end
  tls._initServer(self, options)
  local netOpts = {}
  for k, v in pairs(options) do
    if not serverTLSOptions[k] then
      netOpts[k] = v
    end
  end
  net.Server._init(self, netOpts)
  if fn ~= nil then
    if type(fn) ~= 'function' then
      error('ERR_INVALID_ARG_TYPE: secureConnection listener must be a function', 3)
    end
    self:on('secureConnection', fn)
  end
end

function Server:_newConnection(sock, tcp)
  local h = tls._wrapAccepted(self, sock, tcp)
  if h == nil then
    return
  end
  return net.Server._newConnection(self, sock, h)
end

tls.Server = Server

-- tls.createServer(options [, fn(socket)]) -> server; fn listens to 'secureConnection'.
-- Events: 'secureConnection'(socket) after each handshake, 'tlsClientError'(err, socket) for
-- a failed one, and net.Server's.
function tls.createServer(options, fn)
  return Server.new(options, fn)
end

return tls
