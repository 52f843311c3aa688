-- json_encode_diff.lua (a helper of spec/json_encode_spec.lua and its fixture): random Lua
-- values of every shape cjson.encode meets, and the comparison of the binary's cjson.encode
-- (runtime/json_encode.c in front of lua-cjson) with Debian's own lua-cjson on the same value
-- in the same process (so the same lua_next order): the same string, or the same error.
-- Interpreted: the generators' random branches would make LuaJIT compile (and mprotect)
-- thousands of short-lived traces, most of this file's run time.
jit.off(debug.getinfo(1, 'f').func, true)
local cjson = require('cjson')
local csafe = require('cjson.safe')
local orig = require('spec.helpers.cjson_orig')

local M = {}

M.orig = orig
M.origSafe = require('spec.helpers.cjson_orig_safe')
M.ours, M.oursSafe = cjson, csafe

local random = math.random
local char, concat = string.char, table.concat
local null = cjson.null
local tnew = require('table.new')
local NEGZERO = -1 / math.huge

local SPECIAL = { 0, NEGZERO, 1, -1, 0.5, 0.1, 1 / 3, 2 / 3, 100, 1e14, 1e14 - 1, -1e14 + 1, 1e15, 2 ^ 53,
  2 ^ 53 + 2, -2 ^ 53, 2 ^ 63, 2 ^ 64, 1e21, 1e22, 1e-5, 1e-4, 9.99999e-5, 1.5e-7, 5e-324,
  2.2250738585072014e-308, 1.7976931348623157e308, 123456789012345, 12345678901234, 99999999999999,
  999999999999999, 2 ^ 31, 2 ^ 31 - 1, -2 ^ 31, 2 ^ 32, 0.1 + 0.2, 3.14159265358979, 1e100, -1e-300, 1.25,
  1234.5, 0.001 }

function M.number()
  local r = random(8)
  if r == 1 then
    return SPECIAL[random(#SPECIAL)]
  elseif r == 2 then
    return random(-1000, 1000)
  elseif r == 3 then
    return random(-2 ^ 31, 2 ^ 31)
  elseif r == 4 then
    return (random() - 0.5) * 10 ^ random(-20, 25)
  elseif r == 5 then
    return random(0, 2 ^ 20) / 2 ^ random(0, 20)
  elseif r == 6 then
    return (random(2) == 1 and 1 or -1) * (2 ^ random(30, 70) + random(-3, 3))
  elseif r == 7 then
    return tonumber(('%.' .. random(1, 17) .. 'g'):format(random() * 10 ^ random(-8, 16)))
  end
  return random(0, 99) + random(0, 99) / 100
end

local UTF8 = { '\195\169', '\230\151\165\230\156\172', '\240\159\152\128', '\226\130\172', '\194\160',
  '\239\187\191', '\237\159\191', '\244\143\191\191' }
local SPECIAL_BYTES = { '/', '"', '\\', '\0', '\n', '\r', '\t', '\b', '\f', '\127', '\31', '\1', '\11' }

function M.string(maxlen)
  local r = random(7)
  local n = random(0, maxlen or 12)
  local parts = {}
  if r == 1 then
    for i = 1, n do
      parts[i] = char(random(0, 255))
    end
  elseif r == 2 then
    for i = 1, n do
      parts[i] = random(4) == 1 and SPECIAL_BYTES[random(#SPECIAL_BYTES)] or char(random(32, 126))
    end
  elseif r == 3 then
    for i = 1, n do
      parts[i] = random(2) == 1 and UTF8[random(#UTF8)] or char(random(97, 122))
    end
  elseif r == 4 then
    -- Long: the 8-byte runs, with an escape now and then.
    n = random(0, 300)
    for i = 1, n do
      parts[i] = random(40) == 1 and SPECIAL_BYTES[random(#SPECIAL_BYTES)] or char(random(32, 126))
    end
  elseif r == 5 then
    return ({ 'id', 'name', 'a/b', 'x', '', 'items', 'ok', 'user', 'price', 'tags' })[random(10)]
  elseif r == 6 then
    for i = 1, n do
      parts[i] = char(random(0, 31))
    end
  else
    return 'item-' .. random(100)
  end
  return concat(parts)
end

local function key()
  local r = random(10)
  if r <= 7 then
    return M.string(8)
  elseif r == 8 then
    return random(-5, 20)
  elseif r == 9 then
    -- Any number but a large positive integer (see ODD_KEYS): a key of an object.
    local n = M.number()
    if n > 1000 and n == math.floor(n) then
      n = -n
    end
    return n
  end
  return tostring(random(1, 10)) -- a string that looks like an array index
end

-- (2 ^ 31 - 1 is left to the spec's fixed cases: with encode_sparse_array's ratio 0 both
-- encoders would write two billion nulls.)
local ODD_KEYS = { 0, -1, 1.5, 2 ^ 31, 1000, 2 ^ 31 + 0.5, 2 ^ 53, 1e300, -1e300, 0.5, 3e9 + 0.5,
  2 ^ 40 }

-- A value that lua-cjson refuses (or that falls back to it), if `bad` asked for one.
local function refused()
  local r = random(10)
  if r == 1 then
    return print
  elseif r == 2 then
    return coroutine.create(print)
  elseif r == 3 then
    return io.stdout
  elseif r == 4 then
    return 0 / 0
  elseif r == 5 then
    return math.huge
  elseif r == 6 then
    return -math.huge
  elseif r == 7 then
    return { [{}] = 1 }
  elseif r == 8 then
    return { [true] = 1 }
  elseif r == 9 then
    local t = { 1, 2 }
    t[3] = t -- a cycle
    return t
  end
  return { [math.huge] = 1 }
end

local value

local function tbl(depth, bad)
  local kind = random(12)
  local t = {}
  local function v()
    return value(depth - 1, bad)
  end
  if kind <= 2 then
    for i = 1, random(0, 10) do
      t[i] = v()
    end
  elseif kind == 3 then
    -- Built backwards: the integer keys land in the hash part.
    for i = random(1, 10), 1, -1 do
      t[i] = v()
    end
  elseif kind == 4 then
    -- Holes.
    for i = 1, random(1, 30) do
      if random(3) > 1 then
        t[i] = v()
      end
    end
  elseif kind == 5 then
    -- Sparse.
    for _ = 1, random(1, 4) do
      t[random(1, 60)] = v()
    end
  elseif kind <= 7 then
    for _ = 1, random(0, 8) do
      t[key()] = v()
    end
  elseif kind == 8 then
    -- Mixed: an array and named fields, in either order.
    if random(2) == 1 then
      t.x = v()
    end
    for i = 1, random(1, 6) do
      t[i] = v()
    end
    t[M.string(5)] = v()
  elseif kind == 9 then
    for i = 1, random(0, 4) do
      t[i] = v()
    end
    t[ODD_KEYS[random(#ODD_KEYS)]] = v()
  elseif kind == 10 then
    -- A pre-sized array part, with slot 0 used now and then, or dead hash keys.
    t = tnew(random(0, 16), random(0, 4))
    if random(3) == 1 then
      t[0] = v()
    end
    for i = 1, random(0, 8) do
      t[i] = v()
    end
    if random(2) == 1 then
      t.dead = 1
      t.dead = nil
    end
  elseif kind == 11 then
    -- An array whose last elements were removed, or grown past a hole.
    for i = 1, random(1, 12) do
      t[i] = v()
    end
    for i = #t, math.max(1, #t - random(0, 4)), -1 do
      t[i] = nil
    end
    if random(2) == 1 then
      t[#t + 2] = v()
    end
  else
    t = { null, false, true, v(), n = null }
  end
  return t
end

value = function(depth, bad)
  if bad and random(60) == 1 then
    return refused()
  end
  local r = random(10)
  if depth > 0 and r <= 4 then
    return tbl(depth, bad)
  elseif r <= 6 then
    return M.number()
  elseif r <= 8 then
    return M.string(r == 8 and 40 or 12)
  elseif r == 9 then
    return random(2) == 1
  end
  return null
end

M.value = value

-- Settings applied to an instance of ours and one of the original alike.
M.DEFAULTS = { sparse = { false, 2, 10 }, depth = 1000, precision = 14, invalid = false, keep = true }

function M.randomSettings()
  local inv = ({ false, true, 'null' })[random(3)]
  return { sparse = { random(2) == 1, random(0, 4), random(0, 20) }, depth = random(1, 8),
    precision = random(1, 14), invalid = inv, keep = random(2) == 1 }
end

function M.apply(m, s)
  m.encode_sparse_array(s.sparse[1], s.sparse[2], s.sparse[3])
  m.encode_max_depth(s.depth)
  m.encode_number_precision(s.precision)
  m.encode_invalid_numbers(s.invalid)
  m.encode_keep_buffer(s.keep)
end

local function show(v)
  if type(v) == 'string' then
    return ('%q'):format(v:sub(1, 400))
  end
  return tostring(v)
end

-- Raises unless ours and theirs encode v alike (raising the same error); returns ours.
function M.same(ours, theirs, v, what)
  local ok1, r1 = pcall(ours.encode, v)
  local ok2, r2 = pcall(theirs.encode, v)
  if ok1 ~= ok2 or r1 ~= r2 then
    error(('%s: ours %s %s\noriginal %s %s'):format(what or '', tostring(ok1), show(r1), tostring(ok2),
      show(r2)), 2)
  end
  return ok1, r1
end

-- The same for cjson.safe's nil, err.
function M.sameSafe(ours, theirs, v, what)
  local function pack(...)
    return { n = select('#', ...), ... }
  end
  local a = pack(ours.encode(v))
  local b = pack(theirs.encode(v))
  if a.n ~= b.n or a[1] ~= b[1] or a[2] ~= b[2] then
    error(('%s (safe): ours %d %s %s\noriginal %d %s %s'):format(what or '', a.n, show(a[1]), show(a[2]),
      b.n, show(b[1]), show(b[2])), 2)
  end
end

-- n random values (bad: some refused ones) through both pairs of encoders; returns how many
-- encoded (not refused).
function M.run(ours, theirs, oursSafe, theirsSafe, n, depth, bad, what)
  local good = 0
  for i = 1, n do
    local v = value(depth, bad)
    if M.same(ours, theirs, v, ('%s value %d'):format(what, i)) then
      good = good + 1
    end
    if oursSafe then
      M.sameSafe(oursSafe, theirsSafe, v, ('%s value %d'):format(what, i))
    end
  end
  return good
end

return M
