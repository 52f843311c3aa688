-- querystring.lua: Node's `querystring` (parse, stringify, escape, unescape). Strings are
-- bytes: percent-decoding yields the bytes encoded, and a '%' not followed by two hex digits
-- stays as it is. Pure Lua with byte-level loops the JIT compiles.
local M = {}

local byte, char, sub, find, format = string.byte, string.char, string.sub, string.find, string.format
local concat, sort = table.concat, table.sort

local function hexval(b)
  if b >= 48 and b <= 57 then
    return b - 48
  elseif b >= 65 and b <= 70 then
    return b - 55
  elseif b >= 97 and b <= 102 then
    return b - 87
  end
  return nil
end

-- unescape(s [, decodeSpaces]): percent-decoding; '+' becomes ' ' when decodeSpaces.
local function unescape(s, decodeSpaces)
  if not find(s, '%', 1, true) and not (decodeSpaces and find(s, '+', 1, true)) then
    return s
  end
  local out, n = {}, 0
  local i, len, last = 1, #s, 1
  while i <= len do
    local b = byte(s, i)
    if b == 37 and i + 2 <= len then
      local h, l = hexval(byte(s, i + 1)), hexval(byte(s, i + 2))
      if h and l then
        n = n + 1
        out[n] = sub(s, last, i - 1) .. char(h * 16 + l)
        i = i + 3
        last = i
      else
        i = i + 1
      end
    elseif b == 43 and decodeSpaces then
      n = n + 1
      out[n] = sub(s, last, i - 1) .. ' '
      i = i + 1
      last = i
    else
      i = i + 1
    end
  end
  n = n + 1
  out[n] = sub(s, last)
  return concat(out, '', 1, n)
end
M.unescapeBuffer = unescape

function M.unescape(s, decodeSpaces)
  return unescape(s, decodeSpaces)
end

-- The bytes escape() leaves alone, as Node's: A-Z a-z 0-9 - . _ ~ ! ' ( ) *
local keep = {}
for b = 0, 255 do
  local c = char(b)
  keep[b] = c:match("[%w%-%._~!'%(%)%*]") ~= nil
end
local escapes = {}
for b = 0, 255 do
  escapes[char(b)] = keep[b] and char(b) or format('%%%02X', b)
end

function M.escape(s)
  if type(s) ~= 'string' then
    s = tostring(s)
  end
  return (s:gsub("[^%w%-%._~!'%(%)%*]", escapes))
end

-- What a value stringifies to: strings, finite numbers and booleans; anything else is ''.
local function primitive(v)
  local t = type(v)
  if t == 'string' then
    return v
  elseif t == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then
      return ''
    end
    if v == math.floor(v) and v > -1e15 and v < 1e15 then
      return format('%d', v)
    end
    return tostring(v)
  elseif t == 'boolean' then
    return tostring(v)
  end
  return ''
end

-- stringify(t [, sep='&' [, eq='=' [, {encodeURIComponent=fn}]]]): keys in sorted order
-- (a Lua table has no insertion order); a list value repeats its key.
function M.stringify(t, sep, eq, opts)
  if t == nil then
    return ''
  end
  if type(t) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: querystring.stringify needs a table, got ' .. type(t), 2)
  end
  sep = sep or '&'
  eq = eq or '='
  local enc = opts and opts.encodeURIComponent or M.escape
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = tostring(k)
  end
  sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if v == nil then
      v = t[tonumber(k)]
    end
    local ks = enc(k) .. eq
    if type(v) == 'table' and (v[1] ~= nil or next(v) == nil) then
      for _, item in ipairs(v) do
        out[#out + 1] = ks .. enc(primitive(item))
      end
    else
      out[#out + 1] = ks .. enc(primitive(v))
    end
  end
  return concat(out, sep)
end
M.encode = M.stringify

local function decodeWith(fn, s)
  local ok, v = pcall(fn, s)
  if ok and type(v) == 'string' then
    return v
  end
  return unescape(s, false)
end

-- parse(s [, sep='&' [, eq='=' [, {maxKeys=1000, decodeURIComponent=fn}]]]): a key seen
-- twice gets a list of its values; '+' is a space; a piece with no `eq` has value ''.
function M.parse(s, sep, eq, opts)
  local obj = {}
  if s == nil or s == '' then
    return obj
  end
  if type(s) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: querystring.parse needs a string, got ' .. type(s), 2)
  end
  sep = sep or '&'
  eq = eq or '='
  local maxKeys = 1000
  local decode
  if opts then
    if type(opts.maxKeys) == 'number' then
      maxKeys = opts.maxKeys
    end
    decode = opts.decodeURIComponent
  end
  local custom = decode ~= nil or M.unescape ~= unescape
  local count = 0
  local pos, len, seplen, eqlen = 1, #s, #sep, #eq
  while pos <= len + 1 do
    local e = find(s, sep, pos, true)
    local piece = sub(s, pos, (e or len + 1) - 1)
    pos = e and e + seplen or len + 2
    if piece ~= '' then
      count = count + 1
      if maxKeys > 0 and count > maxKeys then
        break
      end
      local k, v
      local at = find(piece, eq, 1, true)
      if at then
        k, v = sub(piece, 1, at - 1), sub(piece, at + eqlen)
      else
        k, v = piece, ''
      end
      if custom then
        local fn = decode or M.unescape
        k = decodeWith(fn, (k:gsub('%+', ' ')))
        v = decodeWith(fn, (v:gsub('%+', ' ')))
      else
        k, v = unescape(k, true), unescape(v, true)
      end
      local cur = obj[k]
      if cur == nil then
        obj[k] = v
      elseif type(cur) == 'table' then
        cur[#cur + 1] = v
      else
        obj[k] = { cur, v }
      end
    end
  end
  return obj
end
M.decode = M.parse

return M
