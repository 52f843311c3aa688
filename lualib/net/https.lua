-- https.lua: HTTP over TLS (Node's `https`): http's server and client with a TLS socket
-- where http uses a net socket. In a cluster the master hands the TCP connection to a
-- worker as for any server; the worker runs the handshake (tls.lua).
local http = require('http')
local net = require('net')
local tls = require('tls')

local https = {}

local tlsServerOptions = { key = true, cert = true, ca = true, requestCert = true, rejectUnauthorized = true,
  SNICallback = true, ALPNProtocols = true, alpn = true, ticketKeys = true, sessionTimeout = true,
  handshakeTimeout = true, ciphers = true, minVersion = true, maxVersion = true }

local Server = setmetatable({}, { __index = http.Server })
Server.__index = Server
Server.super = http.Server

function Server.new(options, fn)
  local self = setmetatable({}, Server)
  self:_init(options, fn)
  return self
end

function Server:_init(options, fn)
  if type(options) == 'function' or options == nil then
    error('ERR_TLS_MISSING_KEY: https.createServer needs options with key and cert', 3)
  end
  if options.ALPNProtocols == nil and options.alpn == nil then
    -- As Node's https server: say 'http/1.1' to clients that ask (curl offers h2 first).
    local o = {}
    for k, v in pairs(options) do
      o[k] = v
    end
    o.ALPNProtocols = { 'http/1.1' }
    options = o
  end
  tls._initServer(self, options)
  local httpOpts = {}
  for k, v in pairs(options) do
    if not tlsServerOptions[k] then
      httpOpts[k] = v
    end
  end
  http.Server._init(self, httpOpts, fn)
  self._plainHttp400 = true -- a plain HTTP request gets a plain 400 (tls.lua)
end

-- Accepted (or handed over) TCP connections become TLS sockets before http sees them, as
-- in a tls server.
Server._newConnection = tls.Server._newConnection

https.Server = Server

-- https.createServer(options, fn(req, res)) -> server: http's server (same events, listen,
-- close, timeouts) with tls.createServer's options (key, cert, ca, requestCert, ...).
function https.createServer(options, fn)
  return Server.new(options, fn)
end

local tlsClientOptions = { servername = true, ca = true, cert = true, key = true, rejectUnauthorized = true,
  alpn = true, ALPNProtocols = true, session = true, minVersion = true, maxVersion = true, ciphers = true,
  handshakeTimeout = true }

-- https.request(url | options [, fn(res)]) -> ClientRequest: http.request's options plus
-- tls.connect's (ca, cert, key, servername, rejectUnauthorized, alpn, ...). The server's
-- certificate must name the host (or servername). Called by https.request and https.get
-- (never as a tail call), so level 4 in parseUrl and 3 here are their caller's line.
local function request(options, fn)
  if type(options) == 'string' then
    options = http._parseUrl(options, 4, 'https', 443)
  elseif type(options) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: options must be a URL or a table', 3)
  end
  local o, t = {}, {}
  for k, v in pairs(options) do
    if tlsClientOptions[k] then
      t[k] = v
    else
      o[k] = v
    end
  end
  o.port = o.port or 443
  local name = options.hostname or options.host or 'localhost'
  local hasHost = false
  for k in pairs(o.headers or {}) do
    if type(k) == 'string' and k:lower() == 'host' then
      hasHost = true
    end
  end
  if not hasHost then
    -- The name the client asked for (http would write the address it connects to), and no
    -- port when it is https's own.
    local headers = {}
    for k, v in pairs(o.headers or {}) do
      headers[k] = v
    end
    local h = name:find(':', 1, true) and ('[' .. name .. ']') or name
    headers.Host = tonumber(o.port) == 443 and h or (h .. ':' .. o.port)
    o.headers = headers
  end
  if t.servername == nil and net.isIP(name) == 0 then
    t.servername = name
  end
  t.checkHost = t.servername or name
  o.createConnection = function(c)
    t.host, t.port = c.host, c.port
    -- Resume the last session with this server (tls.lua keeps one per key), as Node's
    -- agent does; an explicit session or other trust settings get their own.
    if t.session == nil then
      local ca = type(t.ca) == 'table' and table.concat(t.ca, '\0') or t.ca
      t._sessionKey = table.concat({ c.host, c.port, t.checkHost, tostring(t.rejectUnauthorized ~= false),
        ca or '', t.cert or '', t.key or '' }, '\1')
    end
    return tls.connect(t)
  end
  return http.request(o, fn)
end

function https.request(options, fn)
  local req = request(options, fn)
  return req
end

function https.get(options, fn)
  local req = request(options, fn)
  req:finish()
  return req
end

return https
