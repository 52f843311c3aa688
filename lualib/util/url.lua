-- url.lua: Node's legacy `url.parse` / `url.format` (the Url object: protocol, slashes, auth,
-- host, port, hostname, hash, search, query, pathname, path, href). Absent parts are nil.
-- Pure Lua; nothing here runs unless a script requires it (http's req.url stays a string).
-- Hostnames are lowercased, not converted to punycode (non-ASCII names pass through).
local querystring = require('querystring')

local M = {}

local byte, sub, find, lower = string.byte, string.sub, string.find, string.lower

-- Protocols that never have a host, and those whose URLs always have '//' before the host.
local hostless = { ['javascript'] = true, ['javascript:'] = true }
local unsafe = hostless
local slashed = {}
for _, p in ipairs({ 'http', 'https', 'ftp', 'gopher', 'file', 'ws', 'wss' }) do
  slashed[p] = true
  slashed[p .. ':'] = true
end

-- Characters escaped in the path, query and hash (never valid there; browsers do the same).
local autoEscape = {}
for _, c in ipairs({ '\t', '\n', '\r', ' ', '"', "'", '<', '>', '\\', '^', '`', '{', '|', '}' }) do
  autoEscape[c] = ('%%%02X'):format(byte(c))
end

-- Bytes that end a host: characters never allowed in one, and '/', '?', '#'.
local nonHost = {}
for _, c in ipairs({ '\t', '\n', '\r', ' ', '"', '%', "'", ';', '<', '>', '\\', '^', '`', '{', '|', '}' }) do
  nonHost[byte(c)] = 1
end
for _, c in ipairs({ '#', '/', '?' }) do
  nonHost[byte(c)] = 2
end

local Url = {}
Url.__index = Url
M.Url = Url

local function isSpace(b)
  return b ~= nil and b < 33
end

-- A path with an optional query and no whitespace, hash, '@' or host: the common case of a
-- request target ("/a/b?c=d"), parsed without the general machinery.
local function simplePath(rest)
  if byte(rest, 1) ~= 47 then
    return nil
  end
  if byte(rest, 2) == 47 and byte(rest, 3) == 47 then
    return nil
  end
  if find(rest, '[%s#@]') then
    return nil
  end
  local q = find(rest, '?', 1, true)
  if q then
    return sub(rest, 1, q - 1), sub(rest, q)
  end
  return rest, nil
end

-- hostname characters: a-z A-Z 0-9 . - + _ and any byte above 127. At the first other byte
-- the hostname ends and the remainder joins the path.
local function splitHostname(self, rest, hostname)
  for i = 1, #hostname do
    local b = byte(hostname, i)
    local ok = (b >= 97 and b <= 122) or (b >= 65 and b <= 90) or (b >= 48 and b <= 57) or b == 46 or b == 45
      or b == 43 or b == 95 or b > 127
    if not ok then
      self.hostname = sub(hostname, 1, i - 1)
      return '/' .. sub(hostname, i) .. rest
    end
  end
  return rest
end

local function parseHost(self)
  local host = self.host
  local port = host:match(':(%d*)$')
  if port then
    if port ~= '' then
      self.port = port
    end
    host = sub(host, 1, #host - #port - 1)
  end
  if host ~= '' then
    self.hostname = host
  end
end

-- url.parse(s [, parseQueryString [, slashesDenoteHost]]) -> Url
function M.parse(s, parseQueryString, slashesDenoteHost)
  if type(s) == 'table' and getmetatable(s) == Url then
    return s
  end
  if type(s) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: the "url" argument must be a string, got ' .. type(s), 2)
  end
  local self = setmetatable({}, Url)
  -- Trim, and turn backslashes before the query or hash into slashes.
  local first, last = 1, #s
  while isSpace(byte(s, first)) do
    first = first + 1
  end
  while last >= first and isSpace(byte(s, last)) do
    last = last - 1
  end
  local rest = sub(s, first, last)
  local split = find(rest, '[?#]')
  if find(rest, '\\', 1, true) then
    if split then
      rest = sub(rest, 1, split - 1):gsub('\\', '/') .. sub(rest, split)
    else
      rest = rest:gsub('\\', '/')
    end
  end

  if not slashesDenoteHost then
    local pathname, search = simplePath(rest)
    if pathname then
      self.path, self.href, self.pathname = rest, rest, pathname
      if search then
        self.search = search
        self.query = parseQueryString and querystring.parse(sub(search, 2)) or sub(search, 2)
      elseif parseQueryString then
        self.query = {}
      end
      return self
    end
  end

  local proto = rest:match('^[%w.+-]+:')
  local lowerProto
  if proto then
    lowerProto = lower(proto)
    self.protocol = lowerProto
    rest = sub(rest, #proto + 1)
  end

  local slashes
  if slashesDenoteHost or proto or rest:match('^//[^@/]+@[^@/]+') then
    slashes = sub(rest, 1, 2) == '//'
    if slashes and not (proto and hostless[lowerProto]) then
      rest = sub(rest, 3)
      self.slashes = true
    end
  end

  if not hostless[lowerProto] and (slashes or (proto and not slashed[lowerProto])) then
    local atSign, nh = nil, nil
    for i = 1, #rest do
      local b = byte(rest, i)
      local kind = nonHost[b]
      if kind == 1 then
        nh = nh or i
      elseif kind == 2 then
        nh = nh or i
        break
      elseif b == 64 then
        atSign, nh = i, nil
      end
    end
    local start = 1
    if atSign then
      self.auth = querystring.unescape(sub(rest, 1, atSign - 1))
      start = atSign + 1
    end
    if nh then
      self.host = sub(rest, start, nh - 1)
      rest = sub(rest, nh)
    else
      self.host = sub(rest, start)
      rest = ''
    end
    parseHost(self)
    local hostname = self.hostname or ''
    self.hostname = hostname
    local ipv6 = byte(hostname, 1) == 91 and byte(hostname, -1) == 93
    if not ipv6 then
      rest = splitHostname(self, rest, hostname)
    end
    if #self.hostname > 255 then
      self.hostname = ''
    else
      self.hostname = lower(self.hostname)
    end
    local p = self.port and (':' .. self.port) or ''
    self.host = self.hostname .. p
    if ipv6 then
      self.hostname = sub(self.hostname, 2, -2)
      if byte(rest, 1) ~= 47 then
        rest = '/' .. rest
      end
    end
  end

  if not unsafe[lowerProto] then
    rest = rest:gsub('[\t\n\r "\'<>\\^`{|}]', autoEscape)
  end

  local h = find(rest, '#', 1, true)
  if h then
    self.hash = sub(rest, h)
    rest = sub(rest, 1, h - 1)
  end
  local q = find(rest, '?', 1, true)
  if q then
    self.search = sub(rest, q)
    self.query = sub(rest, q + 1)
    if parseQueryString then
      self.query = querystring.parse(self.query)
    end
    rest = sub(rest, 1, q - 1)
  elseif parseQueryString then
    self.query = {}
  end
  if rest ~= '' then
    self.pathname = rest
  end
  if slashed[lowerProto] and self.hostname and self.hostname ~= '' and not self.pathname then
    self.pathname = '/'
  end
  if self.pathname or self.search then
    self.path = (self.pathname or '') .. (self.search or '')
  end
  self.href = M.format(self)
  return self
end

-- url.format(urlObject | string) -> string
function M.format(u)
  if type(u) == 'string' then
    u = M.parse(u)
  elseif type(u) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: the "urlObject" argument must be a table or a string, got ' .. type(u), 2)
  end
  local auth = u.auth or ''
  if auth ~= '' then
    auth = querystring.escape(auth):gsub('%%3[Aa]', ':', 1) .. '@'
  end
  local protocol = u.protocol or ''
  local pathname = u.pathname or ''
  local hash = u.hash or ''
  local host = ''
  if u.host then
    host = auth .. u.host
  elseif u.hostname then
    local hn = u.hostname
    host = auth .. (find(hn, ':', 1, true) and ('[' .. hn .. ']') or hn)
    if u.port then
      host = host .. ':' .. tostring(u.port)
    end
  end
  local query = ''
  if type(u.query) == 'table' then
    query = querystring.stringify(u.query)
  end
  local search = u.search or (query ~= '' and ('?' .. query)) or ''
  if protocol ~= '' and byte(protocol, -1) ~= 58 then
    protocol = protocol .. ':'
  end
  pathname = pathname:gsub('[#?]', { ['#'] = '%23', ['?'] = '%3F' })
  if u.slashes or slashed[protocol] then
    if u.slashes or host ~= '' then
      if pathname ~= '' and byte(pathname, 1) ~= 47 then
        pathname = '/' .. pathname
      end
      host = '//' .. host
    elseif protocol == 'file:' then
      host = '//'
    end
  end
  search = search:gsub('#', '%%23')
  if hash ~= '' and byte(hash, 1) ~= 35 then
    hash = '#' .. hash
  end
  if search ~= '' and byte(search, 1) ~= 63 then
    search = '?' .. search
  end
  return protocol .. host .. pathname .. search .. hash
end

function Url:format()
  return M.format(self)
end

return M
