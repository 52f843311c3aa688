-- http.lua: HTTP/1.1 server and client (Node's http in Lua's idiom). Parsing happens in C
-- (runtime/http.c, on llhttp) straight from the socket's read callback; a request
-- reaches Lua as one call with its head, then body chunks (a small POST whose body came
-- with its head: one call with both, Conn:_onHead). Responses are formatted in C too
-- (_core.http_send). An http.Server is a net.Server: same listen/close/events, so it shares
-- ports in a cluster like any net server.
-- Size: one file over 800 lines on purpose. The message classes, the server and the client
-- share local helpers (the class tables, header formatting, the parser glue) that are
-- upvalues here, which the JIT compiles to constants on the request path; the client can
-- move to its own file once it grows an agent and stops sharing them.
local core = require('_core')
local class = require('_class')
local events = require('events')
local net = require('net')
local timer = require('timer')

local F = core.http_flags
local http_send = core.http_send
local http_set_headers = core.http_set_headers
local http_head_lines = core.http_head_lines
local http_headers = core.http_headers
local http_attach = core.http_attach
local http_call = core.http_call
local tnew = require('table.new')
local ffi = require('ffi')
local Emitter = events.Emitter
local lower, type, tostring, tonumber, next = string.lower, type, tostring, tonumber, next
local setImmediate, setInterval, setTimeout = timer.setImmediate, timer.setInterval, timer.setTimeout

-- The loop's time in ms, as core.now() gives it, read from the loop itself through the FFI:
-- a compiled trace loads it, where the C call would end the trace (a stitch) on the
-- request path (Conn:_responseDone).
local loopTime = ffi.cast('const uint64_t *', core.loop_time)
local function now()
  return tonumber(loopTime[0])
end

local M = {}

-- A server connection is its socket (Conn, below): its fields are indices into the socket's
-- array part, after net's own (net._SOCK_FIELDS of them), and its methods are Conn's.
local S_FIELDS = net._SOCK_FIELDS
local SERVER, PARSER = S_FIELDS + 1, S_FIELDS + 2
local ACTIVE = S_FIELDS + 3 -- the response being written; the ones after it wait in conn[RARE].queue
local REQ = S_FIELDS + 4 -- the request whose body is arriving
local IDLE_SINCE = S_FIELDS + 5 -- loop time (ms) the connection went idle, false while busy
local SLOT = S_FIELDS + 6 -- index in server._conns, 0 once removed
local RARE = S_FIELDS + 7 -- false, or the table Conn:_rare() makes
assert(net._SOCK_ROOM >= 7, 'net allocates room for 7 connection fields')
-- Three of a socket's internal fields (net.lua's newSocket): its owner, "its read side ended"
-- and its handle (`socket._handle`, without the getter's call).
local S_OWNER, S_READ_ENDED, S_HANDLE = net._SOCK_OWNER, net._SOCK_READ_ENDED, net._SOCK_HANDLE
local S_DESTROYED = net._SOCK_DESTROYED
local Conn = {} -- the connection's methods (below)

-- Backpressure (memory stays bounded whatever the peer does). A server connection stops
-- reading its socket while the request's body that the handler has not taken yet is over
-- BODY_HWM, while more than PIPELINE_MAX responses wait behind the active one, or while the
-- socket's write queue is over its high-water mark (a peer that sends and never reads);
-- it reads again once the handler takes the body, the responses go out, the queue drains.
-- Past PIPELINE_MAX the parser pauses too, so requests already read wait unparsed.
local BODY_HWM = 64 * 1024
local PIPELINE_MAX = 32

-- The response whose handler runs now (the 'request' listeners, or its body's 'data' and
-- 'end' listeners called from the parser), false between handlers. An uncaught error leaves
-- it set, since the emit never returned: answerUncaught, which runs before the process's
-- uncaught-error sequence, answers that request 500 at once.
local current = false

M.STATUS_CODES = {
  [100] = 'Continue', [101] = 'Switching Protocols', [200] = 'OK', [201] = 'Created',
  [202] = 'Accepted', [204] = 'No Content', [206] = 'Partial Content',
  [301] = 'Moved Permanently', [302] = 'Found', [303] = 'See Other', [304] = 'Not Modified',
  [307] = 'Temporary Redirect', [308] = 'Permanent Redirect', [400] = 'Bad Request',
  [401] = 'Unauthorized', [403] = 'Forbidden', [404] = 'Not Found',
  [405] = 'Method Not Allowed', [408] = 'Request Timeout', [409] = 'Conflict',
  [411] = 'Length Required', [413] = 'Payload Too Large', [414] = 'URI Too Long',
  [415] = 'Unsupported Media Type', [417] = 'Expectation Failed',
  [422] = 'Unprocessable Entity', [426] = 'Upgrade Required', [429] = 'Too Many Requests',
  [431] = 'Request Header Fields Too Large', [500] = 'Internal Server Error',
  [501] = 'Not Implemented', [502] = 'Bad Gateway', [503] = 'Service Unavailable',
  [504] = 'Gateway Timeout', [505] = 'HTTP Version Not Supported',
}

local function headersSentError()
  return 'ERR_HTTP_HEADERS_SENT: cannot set headers after they are sent to the client'
end

-- The header store shared by ServerResponse and ClientRequest: _headers, lower-case name ->
-- value, and _names, lower-case name -> name as last given (the case written on the wire).
-- A response's _names is false until needed: a name without an entry goes out in canonical
-- case (Content-Type), and writeHead's C path records only names that differ from it.
-- A response's _headers is false until a header is set, or, after writeHead(status, tbl)
-- with no header set before, the head's lines as one string (http_head_lines): the table is
-- made from them only if asked for (_hdrs), so the common response allocates no store.
local Headers = class(Emitter)

-- The header table, made (from writeHead's lines, if any) when the store is not one yet.
function Headers:_hdrs()
  local h = self._headers
  if type(h) == 'table' then
    return h
  end
  local t = tnew(0, 4)
  self._headers = t
  if h then
    local names = self._names
    if not names then
      names = tnew(0, 4)
      self._names = names
    end
    for name, value in h:gmatch('([^:\r\n]+): ([^\r\n]*)\r\n') do
      local l = lower(name)
      t[l] = value
      names[l] = name
    end
  end
  return t
end

-- Header names already checked (a server sets the same few names over and over); bounded,
-- since a proxy may copy names from requests.
local validNames, nValid = {}, 0
local find = string.find

function Headers:setHeader(name, value)
  if self.headersSent or self._headWritten then
    error(headersSentError(), 2)
  end
  if not validNames[name] then
    if type(name) ~= 'string' or name == '' or find(name, '[^%w!#$%%&\'*+%-.^_`|~]') then
      error('ERR_INVALID_HTTP_TOKEN: header name must be a valid HTTP token ["' .. tostring(name) .. '"]', 2)
    end
    if nValid >= 512 then
      validNames, nValid = {}, 0
    end
    validNames[name] = true
    nValid = nValid + 1
  end
  if value == nil then
    error('ERR_HTTP_INVALID_HEADER_VALUE: invalid value "nil" for header "' .. name .. '"', 2)
  end
  if type(value) ~= 'table' then
    value = tostring(value)
    if find(value, '\r', 1, true) or find(value, '\n', 1, true) or find(value, '\0', 1, true) then
      error('ERR_INVALID_CHAR: invalid character in header content ["' .. name .. '"]', 2)
    end
  end
  local l = lower(name)
  self:_hdrs()[l] = value
  local names = self._names
  if not names then
    names = tnew(0, 4)
    self._names = names
  end
  names[l] = name
  return self
end

local function checkName(name, method)
  if type(name) ~= 'string' then
    error(('ERR_INVALID_ARG_TYPE: %s: the header name must be a string, got %s'):format(method, type(name)), 3)
  end
end

function Headers:getHeader(name)
  checkName(name, 'getHeader')
  return self:_hdrs()[lower(name)]
end

function Headers:hasHeader(name)
  checkName(name, 'hasHeader')
  return self:_hdrs()[lower(name)] ~= nil
end

function Headers:removeHeader(name)
  checkName(name, 'removeHeader')
  if self.headersSent or self._headWritten then
    error(headersSentError(), 2)
  end
  local l = lower(name)
  self:_hdrs()[l] = nil
  if self._names then
    self._names[l] = nil
  end
end

function Headers:getHeaders()
  local out = {}
  for k, v in pairs(self:_hdrs()) do
    out[k] = v
  end
  return out
end

function Headers:getHeaderNames()
  local out = {}
  for k in pairs(self:_hdrs()) do
    out[#out + 1] = k
  end
  table.sort(out)
  return out
end

---------------------------------------------------------------------------------------------
-- IncomingMessage: a request (server side) or a response (client side). Body chunks are
-- held until the message flows: a 'data' or 'end' listener, or resume(). Flowing starts
-- after the 'request'/'response' handler returns, so listeners set in it see everything.

local IncomingMessage = class(Emitter)

-- The queue of a message that arrived complete with no body: just 'end'. Shared (and never
-- appended to: _push/_end copy it first), so a GET allocates no queue.
local END_ONLY = { false }

-- Built in one table constructor (every field present, false rather than nil) so a request
-- costs one allocation and no rehash: this runs once per request. Every value in the
-- constructor is a constant and the variable ones are stored after: the embedded bytecode
-- (string.dump) keeps only a template's constant-valued keys, so `{ k = variable }` would
-- add k as a new key (growing, even rehashing, the table) instead of filling a slot.
function IncomingMessage.new(socket, method, url, version, headers)
  local self = {
    socket = false,
    connection = false,
    method = false,
    url = false,
    httpVersion = false,
    headers = false,
    complete = false,
    aborted = false,
    _events = false,
    _queue = false, -- chunks (and a final false for 'end') waiting to flow
    _flowing = false,
    _held = true, -- true while the handler that received the message runs
    _paused = false,
    _dump = false,
    _flushScheduled = false,
  }
  self.socket, self.connection, self.method, self.url = socket, socket, method, url
  self.httpVersion, self.headers = version, headers
  return setmetatable(self, IncomingMessage)
end

-- Defaults of the fields a server's request rarely changes (_newRequest leaves them out).
IncomingMessage.complete = false
IncomingMessage.aborted = false
IncomingMessage._events = false
IncomingMessage._queue = false
IncomingMessage._flowing = false
IncomingMessage._held = false
IncomingMessage._paused = false
IncomingMessage._dump = false
IncomingMessage._flushScheduled = false
IncomingMessage._qbytes = 0 -- bytes of body chunks in _queue
IncomingMessage._conn = false -- a server request with a body: its connection (backpressure)
IncomingMessage._res = false -- a server request with a body: its response (uncaught errors)

-- A server's request: req.headers is made from the head's raw block (http.c's lazy heads)
-- when first read, and kept in _hraw's place, so a handler that never reads it costs no
-- headers table and one that does adds no key. The metatable's __index answers 'headers'
-- and 'connection' (the socket) and otherwise looks in the class, as IncomingMessage's would.
local RequestMT = {}
RequestMT.__index = function(self, k)
  if k == 'headers' then
    local h = rawget(self, '_hraw')
    if type(h) == 'string' then
      h = http_headers(h)
      self._hraw = h
    end
    return h or nil
  elseif k == 'connection' then
    return rawget(self, 'socket')
  end
  return IncomingMessage[k]
end

-- As IncomingMessage.new, with the raw header block instead of the table, and only the 8
-- fields every request writes (an 8-slot hash: half the copy of a 16-field constructor);
-- the others come from IncomingMessage's defaults until written.
function IncomingMessage._newRequest(socket, method, url, version, raw)
  local self = {
    socket = false,
    method = false,
    url = false,
    httpVersion = false,
    _hraw = false, -- the raw header block, then the headers table once read
    complete = false,
    _queue = false,
    _held = true,
  }
  self.socket, self.method, self.url = socket, method, url
  self.httpVersion, self._hraw = version, raw
  return setmetatable(self, RequestMT)
end

-- As _newRequest, for a request with a body: its table also has the 8 fields a body's
-- delivery writes or reads (listeners, flowing, the connection and response, the queue's
-- bytes), so attaching 'data' and 'end' listeners neither rehashes it (9 keys would
-- double an 8-slot hash) nor looks a missing field up through RequestMT's __index.
function IncomingMessage._newBodyRequest(socket, method, url, version, raw, conn)
  local self = {
    socket = false,
    method = false,
    url = false,
    httpVersion = false,
    _hraw = false,
    complete = false,
    _queue = false,
    _held = true,
    _events = false,
    _flowing = false,
    _paused = false,
    _dump = false,
    _flushScheduled = false,
    _qbytes = 0,
    _conn = false,
    _res = false,
  }
  self.socket, self.method, self.url = socket, method, url
  self.httpVersion, self._hraw = version, raw
  self._conn = conn
  return setmetatable(self, RequestMT)
end

-- Emitter's own methods, past their dot-call guards (self is checked by ours).
local emitterOn, emitterOnce = class.raw(Emitter.on), class.raw(Emitter.once)

local function checkListener(ev, fn)
  if type(fn) ~= 'function' then
    error(('ERR_INVALID_ARG_TYPE: listener for "%s" must be a function'):format(tostring(ev)), 3)
  end
end

function IncomingMessage:on(ev, fn)
  checkListener(ev, fn)
  if not self._events then
    -- Room for 'data', 'end' and two more: the table would grow at each.
    self._events = tnew(0, 4)
  end
  emitterOn(self, ev, fn)
  if (ev == 'data' or ev == 'end') and not self._flowing then
    self:resume()
  end
  return self
end
IncomingMessage.addListener = IncomingMessage.on

function IncomingMessage:once(ev, fn)
  checkListener(ev, fn)
  emitterOnce(self, ev, fn)
  if (ev == 'data' or ev == 'end') and not self._flowing then
    self:resume()
  end
  return self
end

function IncomingMessage:_flush()
  local q = self._queue
  if not q then
    return
  end
  self._queue = false
  if self._qbytes > 0 then
    self._qbytes = 0
    local conn = self._conn
    if conn and conn:_stopped('stopBody') then
      conn:_setStop('stopBody', false)
    end
  end
  for i = 1, #q do
    local c = q[i]
    if c == false then
      self:emit('end')
    else
      self:emit('data', c)
    end
  end
end

-- Queues a body chunk (or false: the end) behind what the handler has not taken yet.
local function enqueue(self, item)
  local q = self._queue
  if not q then
    q = {}
    self._queue = q
  elseif q == END_ONLY then
    q = { false }
    self._queue = q
  end
  q[#q + 1] = item
end

function IncomingMessage:_push(chunk)
  if self._dump then
    return
  end
  if self._flowing and not self._held and not self._queue then
    self:emit('data', chunk)
    return
  end
  enqueue(self, chunk)
  local n = self._qbytes + #chunk
  self._qbytes = n
  local conn = self._conn
  if n > BODY_HWM and conn and not conn:_stopped('stopBody') then
    conn:_setStop('stopBody', true)
  end
end

function IncomingMessage:_end()
  self.complete = true
  if self._flowing and not self._held and not self._queue then
    self:emit('end')
    return
  end
  enqueue(self, false)
end

-- Called when the handler that received the message returned.
function IncomingMessage:_release()
  self._held = false
  if self._flowing then
    self:_flush()
  end
end

-- resume()'s deferred flush. Not a closure made in resume: a function that makes one
-- (FNEW, and UCLO at its block's end) is not compiled, and neither would be the
-- req:on('data'/'end') calls of every handler that reads a body.
local function flushQueued(self)
  self._flushScheduled = false
  if self._flowing then
    current = self._res -- a server request's body listeners run here too
    self:_flush()
    current = false
  end
end

function IncomingMessage:resume()
  self._flowing = true
  if self._paused then
    self._paused = false
    if self._conn then
      self._conn:_setStop('stopUser', false)
    elseif self._onResume then
      self._onResume()
    end
  end
  if not self._held and self._queue and not self._flushScheduled then
    self._flushScheduled = true
    setImmediate(flushQueued, self)
  end
  return self
end

function IncomingMessage:pause()
  self._flowing = false
  self._paused = true
  if self._conn then
    -- Only while its body is arriving: the connection's next request is not this one's.
    if self._conn[REQ] == self then
      self._conn:_setStop('stopUser', true)
    end
  elseif self._onPause then
    self._onPause()
  end
  return self
end

function IncomingMessage:setEncoding()
  return self
end

-- req:setTimeout / res:setTimeout pass on to the socket: their arguments are checked here,
-- so an error names the caller's line.
local function checkTimeout(ms, fn, method)
  if type(ms) ~= 'number' or ms < 0 or ms ~= ms then
    error(('ERR_OUT_OF_RANGE: %s: ms must be a number >= 0, got %s'):format(method, tostring(ms)), 3)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error(('ERR_INVALID_ARG_TYPE: %s: the callback must be a function, got %s'):format(method, type(fn)), 3)
  end
end

function IncomingMessage:setTimeout(ms, fn)
  checkTimeout(ms, fn, 'req:setTimeout')
  self.socket:setTimeout(ms, fn)
  return self
end

function IncomingMessage:destroy(err)
  self.socket:destroy(err)
end

---------------------------------------------------------------------------------------------
-- ServerResponse. Responses of one connection are answered in order: only the first one in
-- the connection's queue writes; the ones after it keep their output until it finishes.

local ServerResponse = class(Headers)

-- Defaults of fields a response rarely changes live in the class, so a response's own table
-- holds the 8 fields every response writes (an 8-slot hash; one more field would double
-- it): this runs per request. statusCode is written only when it is not 200, _head for
-- HEAD, _chunked for chunked responses.
ServerResponse.statusCode = 200
ServerResponse._events = false
ServerResponse._names = false
ServerResponse._head = false
ServerResponse._chunked = false
ServerResponse.statusMessage = false
ServerResponse.sendDate = true
ServerResponse._needDrain = false
ServerResponse._pending = false -- http_send argument lists held while an earlier response is active

-- res.socket and res.connection are the connection's socket, res.writableEnded is
-- res.finished (Node's two names for it): answered by __index, not stored per response.
local ResponseMT = {}
ResponseMT.__index = function(self, k)
  if k == 'socket' or k == 'connection' then
    return rawget(self, '_conn')
  elseif k == 'writableEnded' then
    return rawget(self, 'finished')
  end
  return ServerResponse[k]
end

-- Constant values only in the constructor, variable ones stored after (IncomingMessage.new).
function ServerResponse.new(conn, req, keepAlive)
  local self = {
    _conn = false,
    req = false,
    headersSent = false,
    finished = false,
    writableFinished = false,
    _headers = false, -- false, writeHead's lines (a string) or the table (Headers:_hdrs)
    _keepAlive = false,
    _headWritten = false,
  }
  self._conn, self.req, self._keepAlive = conn, req, keepAlive
  if req.method == 'HEAD' then
    self._head = true
  end
  return setmetatable(self, ResponseMT)
end

-- Sends (or, when not this connection's turn, keeps) one http_send call.
function ServerResponse:_send(status, reason, headers, names, flags, len, body)
  local conn = self._conn
  if conn[ACTIVE] ~= self then
    local p = self._pending
    if not p then
      p = {}
      self._pending = p
    end
    p[#p + 1] = { status, reason, headers, names, flags, len, body }
    self._needDrain = true
    return false
  end
  local h, rare = conn[S_HANDLE], conn[RARE]
  if not h or (rare and rare.closing) then
    return false
  end
  -- nil without an error: the handle is closing (http_send checks, one C call less).
  local ok, err = http_send(h, status, reason, headers, names, flags, len, body)
  if ok == nil then
    if err then
      Conn._destroy(conn, events.fromUv(err))
    end
    return false
  end
  if not ok then
    self._needDrain = true
    if not Conn._stopped(conn, 'stopWrite') then
      Conn._setStop(conn, 'stopWrite', true)
    end
  end
  return ok
end

-- Whether this response is its connection's turn to write (_sendfile.lua).
function ServerResponse:_isActive()
  return self._conn[ACTIVE] == self
end

-- Becomes the active response: writes what it kept.
function ServerResponse:_activate()
  local p = self._pending
  if p then
    self._pending = false
    local h = self._conn[S_HANDLE]
    for i = 1, #p do
      local a = p[i]
      if h and not h:is_closing() then
        http_send(h, a[1], a[2], a[3], a[4], a[5], a[6], a[7])
      end
    end
  end
  if self.finished then
    self:_done()
  elseif self._needDrain then
    Conn._checkDrain(self._conn)
  end
end

-- http_head_lines' answer for the last all-string header set of up to 4 pairs it was asked
-- about, checked in Lua first: a handler usually writes the same pairs (from the same
-- constant strings) on every request, and a few compiled next() calls comparing them cost
-- less than the C call (and the trace stitch around it). Strings are interned, so == compares
-- them as http.c's cache does (by identity). hlPairs = { k1, v1, k2, v2, ... } in next()
-- order; hlAnswer is what http_head_lines gave for them (the lines, or false: the header
-- store's path) and hlLength whether the lines hold a Content-Length. The answer depends on
-- nothing but the strings, so a repeat gets the same one. No loop: an inner loop would split
-- the handler's trace. A number value other than 0 (whose -0 prints differently and compares
-- equal) is cached too: `['Content-Length'] = #body` repeats when the body's size does.
local hlPairs, hlAnswer, hlLength = {}, false, false

local function headLines(headers)
  if type(headers) ~= 'table' then
    return http_head_lines(headers) -- its argument error
  end
  local c, i = hlPairs, 1
  local k, v = next(headers)
  if k ~= nil and k == c[1] and v == c[2] then
    k, v = next(headers, k)
    i = 3
    if k ~= nil and k == c[3] and v == c[4] then
      k, v = next(headers, k)
      i = 5
      if k ~= nil and k == c[5] and v == c[6] then
        k, v = next(headers, k)
        i = 7
        if k ~= nil and k == c[7] and v == c[8] then
          k = next(headers, k)
          i = 9
        end
      end
    end
  end
  if k == nil and i > 1 and c[i] == nil then
    return hlAnswer, hlLength
  end
  local answer, hasLength = http_head_lines(headers)
  local p, n = {}, 0
  for name, value in next, headers do
    if n == 8 or type(name) ~= 'string' or (type(value) ~= 'string' and (type(value) ~= 'number' or value == 0)) then
      return answer, hasLength
    end
    p[n + 1], p[n + 2] = name, value
    n = n + 2
  end
  if n > 0 then
    hlPairs, hlAnswer, hlLength = p, answer, hasLength
  end
  return answer, hasLength
end

-- _headWritten's value after writeHead stored lines holding a Content-Length (true
-- otherwise): _sendHead must not add a length or chunked framing of its own. Kept in that
-- field rather than a new one, so a response's table keeps its 8 keys.
local LINES_WITH_LENGTH = 'length'

function ServerResponse:writeHead(status, reason, headers)
  local code = tonumber(status)
  if not code or code < 100 or code > 999 or code % 1 ~= 0 then
    -- A dot call (`res.writeHead(200)`) lands here too: its status is the next argument.
    if type(self) ~= 'table' then
      class.invalidThis('res', 'writeHead', self, 2)
    end
    error(('ERR_HTTP_INVALID_STATUS_CODE: invalid status code: %s (a number from 100 to 999 is needed)')
      :format(type(status) == 'string' and ('%q'):format(status) or tostring(status)), 2)
  end
  status = code
  if self.headersSent or self._headWritten then
    error(headersSentError(), 2)
  end
  if type(reason) == 'table' then
    reason, headers = nil, reason
  end
  if status ~= self.statusCode then
    self.statusCode = status
  end
  if reason ~= nil then
    reason = tostring(reason)
    if reason:find('[\r\n]') then
      error('ERR_INVALID_CHAR: invalid character in statusMessage', 2)
    end
    self.statusMessage = reason
  end
  if headers then
    if headers[1] ~= nil then
      -- A flat list: { name1, value1, name2, value2, ... } as Node accepts.
      for i = 1, #headers, 2 do
        self:setHeader(headers[i], headers[i + 1])
      end
    else
      local lines, hasLength
      if not self._headers then
        lines, hasLength = headLines(headers)
      end
      if lines then
        self._headers = lines
        if hasLength then
          self._headWritten = LINES_WITH_LENGTH
          return self
        end
      else
        local ok, names = http_set_headers(self:_hdrs(), self._names, headers)
        if names then
          self._names = names
        end
        if not ok then
          for k, v in pairs(headers) do
            self:setHeader(k, v)
          end
        end
      end
    end
  end
  self._headWritten = true
  return self
end

-- Computes the framing and flags, then sends the head with `body` (nil for none).
function ServerResponse:_sendHead(body, last)
  local h, conn, req = self._headers, self._conn, self.req
  local status = self.statusCode
  local flags = 0
  -- Lines (or no header at all) hold none of the four headers looked at here but
  -- Content-Length, which writeHead noted in _headWritten.
  local date, te, userLen, connHeader
  if type(h) == 'table' then
    date, te, userLen, connHeader = h.date, h['transfer-encoding'], h['content-length'], h.connection
  elseif self._headWritten == LINES_WITH_LENGTH then
    userLen = true
  end
  if self.sendDate and date == nil then
    flags = F.DATE
  end
  local len
  local noBody = self._head or status == 204 or status == 304 or (status >= 100 and status < 200)
  if noBody then
    if last and body and not userLen and not te and self._head then
      len = #body
    end
    body = nil
  elseif userLen == nil and te == nil then
    if last then
      len = body and #body or 0
    elseif req.httpVersion == '1.1' then
      self._chunked = true
      flags = flags + F.CHUNKED
      if last then
        flags = flags + F.LAST
      end
    else
      -- HTTP/1.0 without a length: the body ends when the connection closes.
      self._keepAlive = false
    end
  elseif te ~= nil and tostring(te):lower():find('chunked') then
    self._chunked = true
    -- The user named the encoding, so only the framing is ours.
    if body ~= nil and body ~= '' then
      body = ('%x\r\n'):format(#body) .. body .. '\r\n'
    end
    if last then
      body = (body or '') .. '0\r\n\r\n'
    end
  end
  if connHeader ~= nil then
    if tostring(connHeader):lower():find('close') then
      self._keepAlive = false
    end
  else
    if conn[SERVER]._closing or conn[S_READ_ENDED] then
      self._keepAlive = false
    end
    flags = flags + (self._keepAlive and F.KEEPALIVE or F.CLOSE)
  end
  self.headersSent = true
  self._headWritten = true
  return self:_send(status, self.statusMessage, h, self._names, flags, len, body)
end

-- The Transfer-Encoding the user set (writeHead's lines never hold one).
local function userTE(self)
  local h = self._headers
  if type(h) == 'table' then
    return h['transfer-encoding']
  end
  return nil
end

function ServerResponse:writeContinue()
  if self._conn[ACTIVE] == self then
    self:_send(nil, nil, nil, nil, F.CONTINUE, nil, nil)
  end
end

function ServerResponse:write(chunk, fn)
  if self.finished then
    local err = events.makeError('ERR_STREAM_WRITE_AFTER_END', 'write after end')
    if fn then
      fn(err)
    end
    self:emit('error', err)
    return false
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: res:write: the callback must be a function, got ' .. type(fn), 2)
  end
  if chunk == nil or chunk == '' then
    if fn then
      setImmediate(fn)
    end
    return true
  end
  if type(chunk) ~= 'string' then
    if type(chunk) ~= 'number' then
      -- A dot call (`res.write('x')`) lands here too, with the chunk as self.
      if type(self) ~= 'table' then
        class.invalidThis('res', 'write', self, 2)
      end
      error('ERR_INVALID_ARG_TYPE: res:write: data must be a string (or a number), got ' .. type(chunk), 2)
    end
    chunk = tostring(chunk)
  end
  local ok
  if not self.headersSent then
    ok = self:_sendHead(chunk, false)
  elseif self._head or self.statusCode == 204 or self.statusCode == 304 then
    ok = true
  elseif self._chunked and userTE(self) == nil then
    ok = self:_send(nil, nil, nil, nil, F.CHUNKED, nil, chunk)
  elseif self._chunked then
    ok = self:_send(nil, nil, nil, nil, 0, nil, ('%x\r\n'):format(#chunk) .. chunk .. '\r\n')
  else
    ok = self:_send(nil, nil, nil, nil, 0, nil, chunk)
  end
  if fn then
    setImmediate(fn)
  end
  return ok
end

-- res:finish([data] [, fn]): Node's res.end.
function ServerResponse:finish(data, fn)
  if type(self) ~= 'table' then
    class.invalidThis('res', 'finish', self, 2)
  end
  if type(data) == 'function' then
    data, fn = nil, data
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: res:finish: the callback must be a function, got ' .. type(fn), 2)
  end
  if self.finished then
    if fn then
      setImmediate(fn)
    end
    return self
  end
  if data ~= nil and type(data) ~= 'string' then
    if type(data) ~= 'number' then
      error('ERR_INVALID_ARG_TYPE: res:finish: data must be a string (or a number), got ' .. type(data), 2)
    end
    data = tostring(data)
  end
  if not self.headersSent then
    self:_sendHead(data, true)
  else
    local noBody = self._head or self.statusCode == 204 or self.statusCode == 304
    if self._chunked and userTE(self) == nil then
      self:_send(nil, nil, nil, nil, F.CHUNKED + F.LAST, nil, (not noBody) and data or nil)
    elseif self._chunked then
      local b = ''
      if data and data ~= '' and not noBody then
        b = ('%x\r\n'):format(#data) .. data .. '\r\n'
      end
      self:_send(nil, nil, nil, nil, 0, nil, b .. '0\r\n\r\n')
    elseif data and data ~= '' and not noBody then
      self:_send(nil, nil, nil, nil, 0, nil, data)
    end
  end
  self.finished = true -- and res.writableEnded (ResponseMT)
  if fn then
    self:once('finish', fn)
  end
  if self._conn[ACTIVE] == self then
    self:_done()
  end
  return self
end
ServerResponse['end'] = ServerResponse.finish

-- The response is written (or queued on the socket): the connection moves on.
function ServerResponse:_done()
  self.writableFinished = true
  local req = self.req
  if not req.complete then
    req._dump = true -- the rest of an unread body is discarded
    req._queue = nil
    req._qbytes = 0
    local conn = self._conn
    if conn[RARE] then
      Conn._setStop(conn, 'stopBody', false)
      Conn._setStop(conn, 'stopUser', false)
    end
  end
  Conn._responseDone(self._conn, self)
  self:emit('finish')
end

-- res:sendFile(path [, fn(err)]): the file as the whole body, with sendfile(2) when nothing
-- transforms it (lualib/io/_sendfile.lua).
function ServerResponse:sendFile(path, fn)
  return require('_sendfile')(self, path, fn)
end

function ServerResponse:setTimeout(ms, fn)
  checkTimeout(ms, fn, 'res:setTimeout')
  self.socket:setTimeout(ms, fn)
  return self
end

function ServerResponse:destroy(err)
  Conn._destroy(self._conn, err)
end

---------------------------------------------------------------------------------------------
-- Conn: one server connection: its parser, the queue of responses, the timeouts' state.


-- The parser's events of every connection, called with the connection (http_attach's ctx).
local function onParserEvent(self, ev, a, b, c, d, e, f, g, h, i)
  if ev == 'head' then
    Conn._onHead(self, a, b, c, d, e, f, g, h, i)
  elseif ev == 'body' then
    local req = self[REQ]
    current = req._res
    req:_push(a)
    current = false
  elseif ev == 'done' then
    -- a: the body's last chunk, when it came in this read (a Content-Length body).
    local req = self[REQ]
    current = req._res
    if a then
      req:_push(a)
    end
    Conn._bodyDone(self, req)
    current = false
  elseif ev == 'error' then
    Conn._onParseError(self, a, b, c)
  elseif ev == 'upgrade' then
    Conn._onUpgrade(self, a)
  end
end

-- A TLS socket's handle is a Lua table (tls.lua) that feeds its plaintext to a parser itself.
local function attach(handle, mode, cb, limits, ctx)
  if type(handle) == 'table' then
    return handle:http_attach(mode, cb, limits, ctx)
  end
  return http_attach(handle, mode, cb, limits, ctx)
end

-- The parser limits of a server's connections: one table, rebuilt when a limit changed.
local function parserLimits(server)
  local o = server._limits
  if not o or o.maxHeaderSize ~= server.maxHeaderSize or o.maxHeadersCount ~= server.maxHeadersCount
    or o.maxBodySize ~= server.maxBodySize then
    o = {
      maxHeaderSize = server.maxHeaderSize,
      maxHeadersCount = server.maxHeadersCount,
      maxBodySize = server.maxBodySize,
      lazyHeaders = true, -- "head" gets the raw header block (IncomingMessage._newRequest)
    }
    server._limits = o
  end
  return o
end

-- A server connection is its socket: the connection's fields are the socket's array part,
-- after net's own, by index (conn[ACTIVE]), and Conn's methods are found through the
-- socket's metatable (connMeta). Every idle keep-alive connection holds this, so it costs
-- no table of its own: 7 array slots (8 bytes each; net allocates them with the socket, see
-- Server:_init's _connRoom) instead of a second table (136 bytes and an allocation);
-- docs/architecture.md, "What an idle keep-alive connection holds". Every field is set
-- (false rather than nil), so a read never reaches __index. Conn's methods are called as
-- functions (Conn._onHead(conn, ...)) on the request path, where a method lookup would go
-- through the socket's __index function; net's owner hooks (the socket is its own owner)
-- and the body code's conn:_setStop() look them up. Conn names no method of the socket's
-- class (not destroy: Conn._destroy; not _onClose: Conn._connClose), since it is looked up
-- first. What a keep-alive request does not touch is elsewhere: the state of rare paths
-- (closing, pipelined responses, the reasons reading stopped, a pending error, an upgrade)
-- in conn[RARE], one read per response while it is false; the handle is socket[S_HANDLE],
-- and "served a request" is the parser's (parser:state()). The indices are at the top of
-- the file (SERVER ... RARE): the message classes read a connection's fields too.
local connMetas = {} -- a socket class's metatable -> the same with Conn's methods first

-- The metatable of a connection's socket: its class's metamethods, and an __index that
-- finds Conn's methods, then asks the class's own __index (its methods, looked up live, so a
-- method a script replaces on net.Socket later is the one found, as on any other socket).
-- Out of connMeta, which runs per connection: a function making closures ends with UCLO,
-- which the JIT does not compile.
local function buildConnMeta(mt)
  local d = {}
  for k, v in pairs(mt) do
    if type(k) == 'string' and k:sub(1, 2) == '__' then
      d[k] = v -- metamethods
    end
  end
  d.super = mt -- still an instance of its class (_cluster_handles' isA walks super)
  local index = mt.__index
  d.__index = function(self, k)
    local v = Conn[k]
    if v ~= nil then
      return v
    end
    if type(index) == 'function' then
      return index(self, k)
    end
    return index[k]
  end
  connMetas[mt] = d
  return d
end

local function connMeta(mt)
  return connMetas[mt] or buildConnMeta(mt)
end

local function newConn(server, socket)
  setmetatable(socket, connMeta(getmetatable(socket)))
  socket[SERVER] = server
  socket[PARSER] = false
  socket[ACTIVE] = false
  socket[REQ] = false
  socket[IDLE_SINCE] = now()
  socket[SLOT] = 0
  socket[RARE] = false
  socket[PARSER] = attach(socket[S_HANDLE], 'request', onParserEvent, parserLimits(server), socket)
  return socket
end

-- The socket's allowHalfOpen (net reads its owner's): the response goes out after the
-- client's end.
Conn.allowHalfOpen = true

-- The connection's rarer state, made on first use and kept for the connection's life:
-- closing; queue, the responses waiting behind the active one (pipelining); why the socket
-- is not read now (see BODY_HWM): stopBody (the body's unread bytes), stopPipe (responses
-- queued), stopWrite (the write queue), stopUser (req:pause()); pendingError, a parse
-- error's status to answer once the active response is done; upgradeReq.
function Conn:_rare()
  local rare = self[RARE]
  if not rare then
    rare = {
      closing = false,
      queue = false,
      stopBody = false,
      stopPipe = false,
      stopWrite = false,
      stopUser = false,
      pendingError = false,
      upgradeReq = false,
    }
    self[RARE] = rare
  end
  return rare
end

function Conn:_isClosing()
  local rare = self[RARE]
  return rare and rare.closing or false
end

-- Whether reading is stopped for `field`, one of the stop* reasons.
function Conn:_stopped(field)
  local rare = self[RARE]
  return rare and rare[field] or false
end

-- The request's body is whole (its last chunk pushed): nothing more to hold back for it.
function Conn:_bodyDone(req)
  self[REQ] = false
  if self[RARE] then
    Conn._setStop(self, 'stopBody', false)
    Conn._setStop(self, 'stopUser', false)
  end
  if not self[ACTIVE] and not Conn._isClosing(self) then
    -- Answered before its body ended: idle from now (_responseDone could not tell), so
    -- keepAliveTimeout applies to it.
    self[IDLE_SINCE] = now()
  end
  req:_end()
end

-- body: the whole body, when it came in the read that brought the head (http.c delivers
-- a small POST in this one call): it flows after the handler returns, as the 'body' and
-- 'done' events would have made it.
function Conn:_onHead(method, url, version, raw, keepAlive, upgrade, complete, hasExpect, body)
  local server = self[SERVER]
  local req
  if upgrade then
    Conn._rare(self).upgradeReq = IncomingMessage._newRequest(self, method, url, version, raw)
    return
  elseif complete and not body then
    req = IncomingMessage._newRequest(self, method, url, version, raw)
  else
    req = IncomingMessage._newBodyRequest(self, method, url, version, raw, self)
  end
  local res = ServerResponse.new(self, req, keepAlive)
  if not self[ACTIVE] then
    self[ACTIVE] = res
  else
    local rare = Conn._rare(self)
    local q = rare.queue
    if not q then
      q = {}
      rare.queue = q
    end
    q[#q + 1] = res
    if #q >= PIPELINE_MAX then
      Conn._setStop(self, 'stopPipe', true)
    end
  end
  self[IDLE_SINCE] = false
  if complete and not body then
    req.complete = true
    req._queue = END_ONLY
  else
    self[REQ] = req
    req._res = res
  end
  current = res
  local expect = hasExpect and req.headers.expect
  if expect then
    if lower(expect) == '100-continue' then
      if server:listenerCount('checkContinue') > 0 then
        server:emit('checkContinue', req, res)
      else
        res:writeContinue()
        server:emit('request', req, res)
      end
    elseif server:listenerCount('checkExpectation') > 0 then
      server:emit('checkExpectation', req, res)
    else
      res:writeHead(417)
      res:finish()
    end
  elseif complete and not body then
    server:emit('request', req, res)
  else
    -- A handler that reads a body makes closures (its 'data' and 'end' listeners), which
    -- the JIT does not compile: called from C, it ends this trace instead of aborting it,
    -- so the request's objects and the body's delivery run compiled (http.c: http_call).
    -- A GET's handler is called inline: a handler without closures compiles into the trace.
    http_call(server.emit, server, 'request', req, res)
  end
  -- Not req:_release(): the lookup would go through RequestMT's __index function.
  IncomingMessage._release(req)
  -- Unless the handler closed the connection (the parser stops then: no more events).
  if body and self[REQ] == req and not Conn._isClosing(self) and not self[S_DESTROYED] then
    IncomingMessage._push(req, body)
    Conn._bodyDone(self, req)
  end
  current = false
end

-- Starts or stops reading the socket: `field` (one of the stop* reasons) is set to `on`;
-- reading goes on only when no reason holds.
function Conn:_setStop(field, on)
  local rare = self[RARE]
  if (rare and rare[field] or false) == on then
    return
  end
  rare = rare or Conn._rare(self)
  rare[field] = on
  if field == 'stopPipe' then
    -- Too many responses queued: the parser stops after the current request too, so the
    -- rest of a read full of pipelined requests waits unparsed. Resuming parses what waited
    -- (its handlers may stop it again: hence the flags are read again below).
    if on then
      self[PARSER]:http_pause()
    else
      self[PARSER]:http_resume()
    end
  end
  local h = self[S_HANDLE]
  if not h or rare.closing or h:is_closing() then
    return
  end
  if on then
    h:read_stop()
  elseif not (rare.stopBody or rare.stopPipe or rare.stopWrite or rare.stopUser) and not self[S_READ_ENDED] then
    h:read_start()
  end
end

function Conn:_responseDone(res)
  local rare = self[RARE]
  local nextRes = false
  if rare then
    local q = rare.queue
    if q and #q > 0 then
      nextRes = table.remove(q, 1)
    end
    if rare.stopPipe and #q < PIPELINE_MAX / 2 then
      Conn._setStop(self, 'stopPipe', false)
    end
  end
  self[ACTIVE] = nextRes
  if not res._keepAlive then
    -- Everything after a closing response is dropped; the socket closes once flushed.
    Conn._closeAfterFlush(self)
    return
  end
  if nextRes then
    nextRes:_activate()
  elseif rare and rare.pendingError then
    Conn._sendError(self, rare.pendingError)
  elseif self[S_READ_ENDED] or self[SERVER]._closing then
    Conn._closeAfterFlush(self)
  elseif not self[REQ] then
    self[IDLE_SINCE] = now()
  end
end

function Conn:_checkDrain()
  local res = self[ACTIVE]
  if res and res._needDrain and self[S_HANDLE]:write_queue_size() < 16384 then
    res._needDrain = false
    res:emit('drain')
  end
end

-- Connections half-closed by us and waiting for the client to close its side: conn ->
-- the loop time it is destroyed at, checked by one timer for the whole process (no timer
-- per connection).
local GRACE_MS = 2000
local graceConns, nGrace, graceTimer = {}, 0, nil

local function graceSweep()
  local t = now()
  for conn, deadline in pairs(graceConns) do
    if t >= deadline then
      conn:destroy()
    end
  end
end

local function graceAdd(conn)
  graceConns[conn] = now() + GRACE_MS
  nGrace = nGrace + 1
  if graceTimer == nil then
    graceTimer = core.timer(graceSweep)
    graceTimer:unref()
  end
  if nGrace == 1 then
    graceTimer:start(GRACE_MS / 8, GRACE_MS / 8)
  end
end

local function graceRemove(conn)
  graceConns[conn] = nil
  nGrace = nGrace - 1
  if nGrace == 0 then
    graceTimer:stop()
  end
end

function Conn:_closeAfterFlush()
  local rare = Conn._rare(self)
  if rare.closing then
    return
  end
  rare.closing = true
  self[PARSER]:http_detach()
  -- Half-close once the queued writes are flushed, and close when the client closes its
  -- side (net destroys a half-closed socket on 'end', and once the shutdown is done when the
  -- client's side had ended before). Closing at once with unread input would send a reset
  -- that can destroy the response before the client reads it; a client that never closes
  -- gets a short grace period (_sockFinish).
  self:finish()
end

-- Socket events (net's owner hooks, called before the socket's own listeners).
function Conn:_sockEnd()
  if Conn._isClosing(self) then
    return
  end
  -- EOF inside a request (its head or its body): it can never complete, so it ends now
  -- ('aborted', then 'close', from _onClose) and its socket closes, rather than holding
  -- the fd until requestTimeout.
  if self[REQ] or self[PARSER]:http_state() then
    Conn._destroy(self)
  elseif not self[ACTIVE] then
    Conn._closeAfterFlush(self)
  end
end

function Conn:_sockFinish()
  local socket = self
  if Conn._isClosing(self) and not graceConns[self] and not socket[S_READ_ENDED] then
    graceAdd(self)
  end
end

function Conn:_sockDrain()
  if Conn._stopped(self, 'stopWrite') then
    Conn._setStop(self, 'stopWrite', false)
  end
  Conn._checkDrain(self)
end

-- The connection takes the socket's errors: one without a listener of the socket's own is
-- not uncaught.
function Conn:_sockError(err)
  local server = self[SERVER]
  if not Conn._isClosing(self) and server:listenerCount('clientError') > 0 then
    server:emit('clientError', err, self)
  end
  return true
end

function Conn:_sockClose()
  if graceConns[self] then
    graceRemove(self)
  end
  self[SERVER]:_removeConn(self)
  Conn._connClose(self)
end

-- After the socket's 'close': the server, the socket's owner before us, counts it.
function Conn:_sockClosed()
  self[SERVER]:_connectionClosed()
end

function Conn:_sendError(status)
  local h = self[S_HANDLE]
  if h and not h:is_closing() then
    http_send(h, status, nil, nil, nil, F.CLOSE + F.DATE, 0, nil)
  end
  Conn._closeAfterFlush(self)
end

function Conn:_onParseError(status, code, message)
  local err = events.makeError(code, message, { bytesParsed = 0 })
  err.statusCode = status
  local server = self[SERVER]
  local req = self[REQ]
  if req then
    self[REQ] = false
    req.aborted = true
    req:emit('aborted')
  end
  if server:listenerCount('clientError') > 0 then
    server:emit('clientError', err, self)
    return
  end
  -- A body that fails to parse (a bad chunk) ends its request: when that request's response
  -- is the one to write and has not started, the 400 goes now (as Node's), since the
  -- handler may be waiting for an 'end' that never comes.
  local active = self[ACTIVE]
  if active and req and active.req == req and not active.headersSent then
    Conn._sendError(self, status)
  elseif active then
    Conn._rare(self).pendingError = status
  else
    Conn._sendError(self, status)
  end
end

function Conn:_onUpgrade(rest)
  local rare = Conn._rare(self)
  local req = rare.upgradeReq
  rare.upgradeReq = false
  self[PARSER]:http_detach()
  self[SERVER]:_removeConn(self)
  if req and self[SERVER]:listenerCount('upgrade') > 0 then
    self[SERVER]:emit('upgrade', req, self, rest)
  else
    self:destroy()
  end
end

-- Called by the server's sweep: enforces headersTimeout, requestTimeout, keepAliveTimeout.
function Conn:_sweep(t, server)
  if Conn._isClosing(self) then
    return
  end
  local inMessage, headersDone, started = self[PARSER]:http_state()
  if inMessage then
    local limit = (not headersDone) and server.headersTimeout or nil
    local rt = server.requestTimeout
    if rt and rt > 0 and (limit == nil or rt < limit) then
      limit = rt
    end
    if limit and limit > 0 and t - started >= limit then
      self[PARSER]:http_detach()
      if self[ACTIVE] and self[ACTIVE].headersSent then
        Conn._destroy(self)
      else
        Conn._sendError(self, 408)
      end
    end
  elseif self[IDLE_SINCE] and server.keepAliveTimeout and server.keepAliveTimeout > 0
    and t - self[IDLE_SINCE] >= server.keepAliveTimeout then
    Conn._destroy(self)
  end
end

function Conn:_destroy(err)
  Conn._rare(self).closing = true
  self[PARSER]:http_detach()
  self:destroy(err) -- the socket's (Conn has none)
end

function Conn:_connClose()
  local rare = Conn._rare(self)
  rare.closing = true
  self[PARSER]:http_detach()
  local req = self[REQ]
  if req and not req.complete then
    req.aborted = true
    req:emit('aborted')
    req:emit('close')
  end
  if self[ACTIVE] then
    self[ACTIVE]:emit('close')
  end
  local q = rare.queue
  if q then
    for i = 1, #q do
      q[i]:emit('close')
    end
  end
end

---------------------------------------------------------------------------------------------
-- Server

local Server = class(net.Server)

function Server:_init(options, fn)
  if type(options) == 'function' then
    options, fn = nil, options
  end
  if options ~= nil and type(options) ~= 'table' then
    -- Level 4: _init <- new <- http.createServer <- the caller.
    error('ERR_INVALID_ARG_TYPE: http.createServer: options must be a table, got ' .. type(options), 4)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: http.createServer: the request listener must be a function, got ' .. type(fn), 4)
  end
  options = options or {}
  net.Server._init(self, { allowHalfOpen = true })
  self._connRoom = true -- accepted sockets have room for a connection's fields (newConn)
  self.keepAliveTimeout = options.keepAliveTimeout or 5000
  self.headersTimeout = options.headersTimeout or 60000
  self.requestTimeout = options.requestTimeout or 300000
  self.maxHeadersCount = options.maxHeadersCount or 2000
  self.maxHeaderSize = options.maxHeaderSize or 16384
  self.maxBodySize = options.maxBodySize
  self.timeout = 0
  self._conns = {}
  if fn then
    self:on('request', fn)
  end
  self:on('connection', function(socket)
    self:_httpConnection(socket)
  end)
  self:on('listening', function()
    self:_startSweep()
  end)
end

function Server:_httpConnection(socket)
  if self._closing then
    socket:destroy()
    return
  end
  socket:setNoDelay(true)
  local conn = newConn(self, socket)
  -- _conns is an array (conn[SLOT] is the index): no hash insert and delete per connection.
  local conns = self._conns
  local n = #conns + 1
  conns[n] = conn
  conn[SLOT] = n
  socket[S_OWNER] = conn
end

function Server:_removeConn(conn)
  local i = conn[SLOT]
  if i == 0 then
    return
  end
  conn[SLOT] = 0
  local conns = self._conns
  local n = #conns
  local last = conns[n]
  conns[n] = nil
  if last ~= conn then
    conns[i] = last
    last[SLOT] = i
  end
end

-- One timer per server checks every connection's timeouts; its period follows the
-- smallest timeout so short test timeouts stay precise.
function Server:_startSweep()
  if self._sweep then
    return
  end
  local min = 1000
  for _, v in ipairs({ self.keepAliveTimeout, self.headersTimeout, self.requestTimeout }) do
    if v and v > 0 and v / 4 < min then
      min = v / 4
    end
  end
  if min < 5 then
    min = 5
  end
  self._sweep = setInterval(function()
    local t = now()
    local conns = self._conns
    for i = #conns, 1, -1 do
      local conn = conns[i]
      if conn then
        Conn._sweep(conn, t, self)
      end
    end
  end, min)
  self._sweep:unref()
end

function Server:setTimeout(ms, fn)
  if type(ms) ~= 'number' or ms < 0 then
    error('ERR_OUT_OF_RANGE: server:setTimeout: ms must be a number >= 0, got ' .. tostring(ms), 2)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: server:setTimeout: the callback must be a function, got ' .. type(fn), 2)
  end
  self.timeout = ms
  if fn then
    self:on('timeout', fn)
  end
  return self
end

-- Stops accepting; busy connections close after their response (sent with Connection:
-- close). An idle connection may have a request on its way: one that has not sent its first
-- request yet was just handed to us (by the master, during a reload), and one that was busy
-- less than server.closeGrace (1000 ms) ago is likely to send its next request now (a client
-- under load always is). Closing those at once fails that request, so they get the grace:
-- a request in it is answered with Connection: close; what is still idle after it closes.
-- Connections idle for longer than the grace close at once.
function Server:close(fn)
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: server:close: the callback must be a function, got ' .. type(fn), 2)
  end
  self._closing = true
  if self._sweep then
    self._sweep:close()
    self._sweep = nil
  end
  local r = net.Server.close(self, fn)
  local grace = self.closeGrace or 1000
  self:closeIdleConnections(grace)
  if #self._conns > 0 then
    setTimeout(function()
      self:closeIdleConnections()
    end, grace):unref()
  end
  return r
end

-- Closes connections with no request in progress; with `spareMs`, spares those that never
-- sent a request and those idle for less than spareMs.
function Server:closeIdleConnections(spareMs)
  local t = spareMs and now()
  local conns = self._conns
  for i = #conns, 1, -1 do
    local conn = conns[i]
    if conn and not conn[ACTIVE] then
      local inMessage, _, _, served = conn[PARSER]:http_state()
      local spare = spareMs and (not served or (conn[IDLE_SINCE] and t - conn[IDLE_SINCE] < spareMs))
      if not inMessage and not spare then
        Conn._destroy(conn)
      end
    end
  end
end

function Server:closeAllConnections()
  local conns = self._conns
  for i = #conns, 1, -1 do
    local conn = conns[i]
    if conn then
      Conn._destroy(conn)
    end
  end
end

function M.createServer(options, fn)
  if options == M then
    error('ERR_INVALID_THIS: http:createServer: use a dot call (http.createServer(...))', 2)
  end
  local server = Server.new(options, fn) -- not a tail call: errors name the caller's line
  return server
end

---------------------------------------------------------------------------------------------
-- Client: one request per connection (no agent). The response streams as 'data' events.

local ClientRequest = class(Headers)

-- Splits an absolute URL of `scheme` (https.lua passes 'https', 443) into request options.
local function parseUrl(url, level, scheme, defaultPort)
  level = level or 3
  scheme, defaultPort = scheme or 'http', defaultPort or 80
  local given, rest = url:match('^(%a[%w+.-]*)://(.*)$')
  if not given then
    error('ERR_INVALID_URL: invalid URL: ' .. url, level)
  end
  if given ~= scheme then
    error(('ERR_INVALID_PROTOCOL: protocol "%s:" not supported, expected "%s:"'):format(given, scheme), level)
  end
  local authority, path = rest:match('^([^/?#]*)(.*)$')
  path = path:gsub('#.*$', '')
  if path == '' or path:sub(1, 1) == '?' then
    path = '/' .. path
  end
  local host, port = authority:match('^%[(.+)%]:?(%d*)$')
  if not host then
    host, port = authority:match('^([^:]*):?(%d*)$')
  end
  return { hostname = host, port = tonumber(port) or defaultPort, path = path }
end
M._parseUrl = parseUrl

function ClientRequest:_init(options, fn)
  -- Errors are raised at level 4: _init <- new <- http.request / http.get <- the caller.
  if type(options) == 'string' then
    options = parseUrl(options, 5)
  elseif type(options) ~= 'table' or options == M then
    error(('ERR_INVALID_ARG_TYPE: http.request / http.get: options must be a URL string or a table, got %s')
      :format(options == M and 'the http module (a colon call? use http.request(...))' or type(options)), 4)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: http.request / http.get: the response callback must be a function, got '
      .. type(fn), 4)
  end
  self._headers = {}
  self._names = {}
  self.method = (options.method or 'GET'):upper()
  self.path = options.path or '/'
  self.host = options.hostname or options.host or 'localhost'
  if self.host == 'localhost' then
    self.host = '127.0.0.1'
  end
  self.port = tonumber(options.port) or 80
  self.headersSent = false
  self.finished = false
  if options.headers then
    for k, v in pairs(options.headers) do
      self:setHeader(k, v)
    end
  end
  if self._headers.host == nil then
    local hostHeader = self.host:find(':') and ('[' .. self.host .. ']') or self.host
    if self.port ~= 80 then
      hostHeader = hostHeader .. ':' .. self.port
    end
    self:setHeader('Host', hostHeader)
  end
  if fn then
    self:once('response', fn)
  end
  -- options.createConnection (Node's): https passes tls.connect with the TLS options.
  local socket = (options.createConnection or net.connect)({ port = self.port, host = self.host })
  self.socket = socket
  self.connection = socket
  if options.timeout then
    self:setTimeout(options.timeout)
  end
  socket:on('connect', function()
    -- The handle exists (and reads) from here on; nothing was read before this.
    self._parser = attach(socket._handle, 'response', function(ev, a, b, c, d, e, f, g)
      self:_onParserEvent(ev, a, b, c, d, e, f, g)
    end, {})
    if self.method == 'HEAD' then
      self._parser:expect_head(true)
    end
    self:emit('socket', socket)
  end)
  socket:on('error', function(err)
    self:_fail(err)
  end)
  socket:on('end', function()
    if self.res and not self.res.complete then
      self.res.aborted = true
      self.res:emit('aborted')
      self:_fail(events.makeError('ECONNRESET', 'response ended early'))
    elseif not self.res then
      self:_fail(events.makeError('ECONNRESET', 'socket hang up'))
    end
    socket:destroy()
  end)
  socket:on('close', function()
    if self._parser then
      self._parser:detach()
    end
    self:emit('close')
  end)
end

function ClientRequest:_fail(err)
  if self._failed or (self.res and self.res.complete) then
    return
  end
  self._failed = true
  self:emit('error', err)
  if self.res and not self.res.complete then
    self.res:emit('error', err)
  end
end

function ClientRequest:_onParserEvent(ev, status, reason, version, headers, _, _, complete)
  if ev == 'head' then
    if status >= 100 and status < 200 and status ~= 101 then
      self:emit(status == 100 and 'continue' or 'information', { statusCode = status, headers = headers })
      return
    end
    local res = IncomingMessage.new(self.socket, nil, nil, version, headers)
    res.statusCode = status
    res.statusMessage = reason
    res.httpVersion = version
    res.headers = headers
    res.req = self
    self.res = res
    if complete then
      res.complete = true
      res._queue = END_ONLY
    end
    res._onPause = function()
      self.socket:pause()
    end
    res._onResume = function()
      self.socket:resume()
    end
    res:on('end', function()
      self.socket:destroy()
    end)
    if self:listenerCount('response') == 0 then
      res:resume() -- nobody reads: drain it, as Node does
    end
    self:emit('response', res)
    res:_release()
  elseif ev == 'body' then
    if self.res then
      self.res:_push(status)
    end
  elseif ev == 'done' then
    if self.res then
      self.res:_end()
    end
  elseif ev == 'error' then
    self:_fail(events.makeError(reason, version, { statusCode = status }))
    self.socket:destroy()
  end
end

function ClientRequest:_head(chunked, len)
  local parts = { self.method, ' ', self.path, ' HTTP/1.1\r\n' }
  local h = self._headers
  for l, v in pairs(h) do
    local name = self._names[l] or l
    if type(v) == 'table' then
      for _, x in ipairs(v) do
        parts[#parts + 1] = name .. ': ' .. tostring(x) .. '\r\n'
      end
    else
      parts[#parts + 1] = name .. ': ' .. v .. '\r\n'
    end
  end
  if h.connection == nil then
    parts[#parts + 1] = 'Connection: close\r\n'
  end
  if h['content-length'] == nil and h['transfer-encoding'] == nil then
    if chunked then
      parts[#parts + 1] = 'Transfer-Encoding: chunked\r\n'
      self._chunked = true
    elseif len and (len > 0 or self.method == 'POST' or self.method == 'PUT' or self.method == 'PATCH') then
      parts[#parts + 1] = 'Content-Length: ' .. len .. '\r\n'
    end
  end
  parts[#parts + 1] = '\r\n'
  self.headersSent = true
  return table.concat(parts)
end

-- net.Socket keeps writes made while connecting, in order.
function ClientRequest:_out(data)
  return self.socket:write(data)
end

function ClientRequest:write(chunk)
  if self.finished then
    error('ERR_STREAM_WRITE_AFTER_END: write after end', 2)
  end
  chunk = tostring(chunk)
  local out = ''
  if not self.headersSent then
    out = self:_head(true)
  end
  if chunk ~= '' then
    if self._chunked then
      out = out .. ('%x\r\n'):format(#chunk) .. chunk .. '\r\n'
    else
      out = out .. chunk
    end
  end
  return self:_out(out)
end

function ClientRequest:finish(data)
  if self.finished then
    return self
  end
  if data ~= nil then
    data = tostring(data)
  end
  local out = ''
  if not self.headersSent then
    out = self:_head(false, data and #data or 0)
  end
  if data and data ~= '' then
    if self._chunked then
      out = out .. ('%x\r\n'):format(#data) .. data .. '\r\n'
    else
      out = out .. data
    end
  end
  if self._chunked then
    out = out .. '0\r\n\r\n'
  end
  self.finished = true
  self:_out(out)
  return self
end
ClientRequest['end'] = ClientRequest.finish

function ClientRequest:abort()
  self.aborted = true
  self.socket:destroy()
end

function ClientRequest:destroy(err)
  self.destroyed = true
  self.socket:destroy(err)
end

function ClientRequest:setTimeout(ms, fn)
  if type(ms) ~= 'number' or ms < 0 then
    error('ERR_OUT_OF_RANGE: req:setTimeout: ms must be a number >= 0, got ' .. tostring(ms), 2)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: req:setTimeout: the callback must be a function, got ' .. type(fn), 2)
  end
  self.socket:setTimeout(ms, function()
    if fn then
      fn()
    end
    self:emit('timeout')
  end)
  return self
end

function M.request(options, fn)
  local req = ClientRequest.new(options, fn) -- not a tail call: errors name the caller's line
  return req
end

function M.get(options, fn)
  local req = ClientRequest.new(options, fn)
  req:finish()
  return req
end

-- An uncaught error in a request handler: its client gets 500 with Connection: close now
-- (not an empty reply after the worker's kill timeout); a response whose head already went
-- out cannot be completed, so its connection closes. Then the process's sequence goes on
-- (in a worker: stop accepting, finish the other requests, exit).
local function answerUncaught()
  local res = current
  current = false
  if not res or res.finished then
    return
  end
  if res.headersSent then
    Conn._destroy(res._conn)
    return
  end
  res._headers, res._names, res._headWritten, res._chunked = false, false, false, false
  res.statusCode, res.statusMessage, res._keepAlive = 500, false, false
  res:finish()
end
local uncaughtFirst = require('process')._uncaughtFirst
uncaughtFirst[#uncaughtFirst + 1] = answerUncaught

M.Server = Server
M.IncomingMessage = IncomingMessage
M.ServerResponse = ServerResponse
M.ClientRequest = ClientRequest
M.METHODS = { 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'CONNECT', 'TRACE' }
M.maxHeaderSize = 16384

-- Dot calls (`res.finish('hi')`) raise ERR_INVALID_THIS at the caller (_class.lua).
-- The per-request methods check self themselves.
class.guard(Server, 'server', { emit = true })
class.guard(IncomingMessage, 'req', { emit = true })
class.guard(ServerResponse, 'res', { emit = true, writeHead = true, finish = true })
class.guard(ClientRequest, 'req', { emit = true })

return M
