-- The built-in cjson's number conversions (runtime/fpconv.c: fast paths in front of lua-cjson
-- 2.1.0's snprintf("%.14g") and strtod) give exactly what lua-cjson itself gives. A
-- differential test: hundreds of thousands of doubles encoded at every precision 1..14 and
-- number strings decoded, compared byte for byte with glibc's snprintf('%.<p>g') (through the
-- FFI: LuaJIT's own string.format rounds exact ties half up where glibc rounds them to even,
-- e.g. 123456789012345 at 14 digits) and tonumber(), and with Debian's own cjson.so (its
-- original fpconv.c) loaded beside the built-in one.
-- The run in this process is the lcluster binary itself, whose cjson is the one under test.
local cjson = require('cjson')
local ffi = require('ffi')

local concat, fmt = table.concat, string.format

ffi.cdef('int snprintf(char *str, size_t size, const char *format, ...);')
local gbuf = ffi.new('char[64]')
-- glibc's %.<p>g, which lua-cjson 2.1.0 prints every number with.
local function glibcG(spec, d)
  local n = ffi.C.snprintf(gbuf, 64, spec, ffi.cast('double', d))
  return ffi.string(gbuf, n)
end
local random = math.random

-- Debian's lua-cjson module, when installed: it formats with snprintf.
local orig = require('spec.helpers.cjson_orig')

local SEED = tonumber(os.getenv('LC_JSON_SEED')) or os.time()

local bits = ffi.new('union { double d; uint64_t u; struct { uint32_t lo, hi; } w; }')
local function fromBits(hi, lo)
  bits.w.hi, bits.w.lo = hi, lo
  return bits.d
end
local function toBits(d)
  bits.d = d
  return fmt('%08x%08x', bits.w.hi, bits.w.lo)
end
local function nextUp(d, n)
  bits.d = d
  bits.u = bits.u + n
  return bits.d
end

-- The values every precision sees.
local function boundaries()
  local v = { 0, -0.0, 1, -1, 2 ^ 53, 2 ^ 53 - 1, 2 ^ 53 + 2, -(2 ^ 53), 2 ^ 52, 2 ^ 63, 2 ^ 64,
    0.5, 0.1, 0.2, 0.3, 1 / 3, 2 / 3, 0.05, 0.015, 0.025, 0.125, 99.995, 9.5, 0.95, 5e-5,
    123456789012345, 12345678901234, 99999999999999, 100000000000000, 1e15 - 1,
    0.0001, 0.00001, 0.00009999, 0.000123, 4.9e-324, 2.2250738585072014e-308, 1.7976931348623157e308 }
  for e = -25, 25 do
    local p = tonumber('1e' .. e)
    for _, d in ipairs({ p, nextUp(p, 1), nextUp(p, -1), nextUp(p, 2), nextUp(p, -2), 5 * p, 9.5 * p,
      0.5 * p, 1.5 * p, 9.999999 * p }) do
      v[#v + 1] = d
      v[#v + 1] = -d
    end
  end
  for p = 1, 15 do
    -- Values that round up to the next power of ten at p digits, and their halves.
    local nines = tonumber(string.rep('9', p) .. '5')
    for e = -8, 4 do
      local d = nines * 10 ^ e
      v[#v + 1] = d
      v[#v + 1] = nextUp(d, 1)
      v[#v + 1] = nextUp(d, -1)
    end
  end
  return v
end

-- n values of every kind: random bit patterns (no NaN or infinity), integers of every
-- magnitude, short decimals (m / 10^k, i * 1.25, k / 100) and their neighbours.
local function randomValues(n)
  local v = {}
  for _ = 1, n do
    local kind = random(6)
    local d
    if kind == 1 then
      repeat
        d = fromBits(random(0, 0xffffffff), random(0, 0xffffffff))
      until d == d and d ~= math.huge and d ~= -math.huge
    elseif kind == 2 then
      d = math.floor(random() * 10 ^ random(0, 17))
    elseif kind == 3 then
      d = random(0, 10 ^ random(1, 15) - 1) / 10 ^ random(0, 20)
    elseif kind == 4 then
      d = random(-100000, 100000) * 1.25
    elseif kind == 5 then
      d = random(-10 ^ random(1, 9), 10 ^ random(1, 9)) / (random(2) == 1 and 100 or 1000)
    else
      d = nextUp(random(0, 10 ^ random(1, 14)) / 10 ^ random(0, 8), random(-3, 3))
    end
    if random(2) == 1 then
      d = -d
    end
    v[#v + 1] = d
  end
  return v
end

-- n values next to a rounding tie at p significant digits: (m + 1/2) * 10^e for a p-digit m,
-- and a few ulps either side, where a fast path that accepts an approximate m goes wrong.
local function nearTies(p, n)
  local v = {}
  for _ = 1, n do
    local m = random(10 ^ (p - 1), 10 ^ p - 1)
    local d = nextUp((m + 0.5) * 10 ^ random(-p - 4, 0), random(-4, 4))
    v[#v + 1] = random(2) == 1 and -d or d
  end
  return v
end

-- Encodes values at precision p in chunks and compares each chunk with snprintf and
-- with the original module; on a mismatch names the first differing value.
local function checkEncode(values, p)
  cjson.encode_number_precision(p)
  if orig then
    orig.encode_number_precision(p)
  end
  local spec = '%.' .. p .. 'g'
  local CHUNK = 2000
  for i = 1, #values, CHUNK do
    local chunk, want = {}, {}
    for j = i, math.min(i + CHUNK - 1, #values) do
      chunk[#chunk + 1] = values[j]
      want[#want + 1] = glibcG(spec, values[j])
    end
    local got = cjson.encode(chunk)
    local expected = '[' .. concat(want, ',') .. ']'
    local origGot = orig and orig.encode(chunk) or expected
    if got ~= expected or got ~= origGot then
      for j, d in ipairs(chunk) do
        local one = cjson.encode({ d })
        local o = orig and orig.encode({ d }) or '[' .. want[j] .. ']'
        if one ~= '[' .. want[j] .. ']' or one ~= o then
          error(fmt('precision %d, value %s (bits %s, seed %d): built-in %s, snprintf %s, original %s',
            p, fmt('%.17g', d), toBits(d), SEED, one, want[j], o))
        end
      end
      error(fmt('precision %d: chunk differs (seed %d)', p, SEED))
    end
  end
end

-- Random number text as JSON carries it, and what strtod-based parsers meet besides.
local function digits(n)
  local t = {}
  for i = 1, n do
    t[i] = string.char(48 + random(0, 9))
  end
  return concat(t)
end
local function randomNumberText()
  local kind = random(6)
  local s
  if kind == 1 then
    s = digits(random(1, 22))
  elseif kind == 6 then
    -- Around 2^53 and 2^64, where a 64-bit mantissa stops being exact or wraps.
    s = ({ '900719925474099', '1844674407370955161', '1844674407370955' })[random(3)] .. digits(random(1, 4))
  elseif kind == 2 then
    s = digits(random(1, 10)) .. '.' .. digits(random(1, 12))
  elseif kind == 3 then
    s = '0.' .. string.rep('0', random(0, 8)) .. digits(random(1, 17))
  elseif kind == 4 then
    s = digits(random(1, 17)) .. '.' .. digits(random(1, 25))
  else
    s = digits(random(1, 6)) .. '.' .. digits(random(1, 6)) .. (random(2) == 1 and 'e' or 'E')
      .. ({ '', '+', '-' })[random(3)] .. random(0, 320)
  end
  if random(2) == 1 then
    s = '-' .. s
  end
  return s
end

describe('cjson numbers (runtime/fpconv.c)', function()
  after_each(function()
    cjson.encode_number_precision(14)
  end)

  it('can compare with the original lua-cjson module', function()
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed: string.format is the only reference')
      return
    end
    assert.are_not.equal(cjson, orig)
    assert.are.equal('[1.5]', orig.encode({ 1.5 }))
  end)

  it('encodes every double as %.14g does, and the boundaries at every precision 1..14', function()
    math.randomseed(SEED)
    local edge = boundaries()
    checkEncode(edge, 14)
    checkEncode(randomValues(200000), 14)
    for p = 1, 14 do
      checkEncode(nearTies(p, 5000), p)
      if p < 14 then
        checkEncode(edge, p)
        checkEncode(randomValues(12000), p)
      end
    end
  end)

  it('encodes integers, short decimals and zeros without an exponent where %g has none', function()
    assert.are.equal('[0,-0,1,-1,1.25,0.1,0.0001,1e-05,99999999999999,1e+14,1.2345678901234e+14]',
      cjson.encode({ 0, -0.0, 1, -1, 1.25, 0.1, 0.0001, 0.00001, 99999999999999, 1e14, 123456789012345 }))
    cjson.encode_number_precision(3)
    assert.are.equal('[1.25,1e+03,0.125,0.000123,1.23e-05,-12.3]',
      cjson.encode({ 1.25, 1000, 0.125, 0.000123, 0.0000123, -12.34 }))
  end)

  it('decodes random number text to the same double as tonumber() and the original', function()
    math.randomseed(SEED)
    local n = 200000
    local texts = {}
    for i = 1, n do
      texts[i] = randomNumberText()
    end
    local CHUNK = 2000
    for i = 1, n, CHUNK do
      local part = {}
      for j = i, math.min(i + CHUNK - 1, n) do
        part[#part + 1] = texts[j]
      end
      local doc = '[' .. concat(part, ',') .. ']'
      local got = cjson.decode(doc)
      local o = orig and orig.decode(doc)
      for j, s in ipairs(part) do
        local want = toBits(tonumber(s))
        if toBits(got[j]) ~= want or (o and toBits(o[j]) ~= want) then
          error(fmt('%q (seed %d): built-in %s, tonumber %s, original %s', s, SEED, toBits(got[j]), want,
            o and toBits(o[j]) or '-'))
        end
      end
    end
  end)

  -- A decoded value as text, numbers by their bits (so -0 and NaN compare exactly).
  local function shape(v)
    if type(v) == 'number' then
      return toBits(v)
    elseif type(v) == 'table' then
      local t = {}
      for k, x in pairs(v) do
        t[#t + 1] = tostring(k) .. '=' .. shape(x)
      end
      table.sort(t)
      return '{' .. concat(t, ',') .. '}'
    end
    return tostring(v)
  end

  it('stops a number where strtod stops, and fails where the original fails', function()
    local cases = { '1.', '.5', '-.5', '0x1F', '-0x1f', '0X10', '1.5.2', '1e', '1e+', '1e5', '1E-5', '01',
      '00x1', '+1', '-', '--1', '1x', '1.5x', '0.0', '-0', '-0.0', 'Infinity', '-Infinity', 'inf', '-inf',
      'nan', '-nan', '9007199254740993', '9007199254740992', '18446744073709551616', '0.1e1',
      '123456789012345678901234567890', '0.' .. string.rep('0', 30) .. '1', '1' .. string.rep('0', 30),
      '4.9e-324', '1e400', '-1e400', '2.2250738585072011e-308', '0.30000000000000004', '1,2' }
    for _, s in ipairs(cases) do
      for _, doc in ipairs({ s, '[' .. s .. ']', '{"a":' .. s .. '}', s .. ' ' }) do
        local ok, v = pcall(cjson.decode, doc)
        if orig then
          local ook, ov = pcall(orig.decode, doc)
          assert.are.same({ ook, ook and shape(ov) or ov }, { ok, ok and shape(v) or v }, doc)
        end
        if ok and type(v) == 'number' and tonumber(s) then
          assert.are.equal(toBits(tonumber(s)), toBits(v), doc)
        end
      end
    end
    assert.are.equal(-math.huge, 1 / cjson.decode('-0'))
    assert.are.same({ 1.5, 2 }, cjson.decode('[1.5,2]'))
  end)
end)
