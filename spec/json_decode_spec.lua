-- The built-in cjson.decode's fast path (runtime/json_decode.c) against Debian's own
-- lua-cjson: thousands of generated documents (random nesting, whitespace everywhere, raw
-- UTF-8 and control bytes, every escape, numbers of every form, duplicate keys, containers
-- longer than the parser's chunks) decode to the same values, numbers bit for bit; the fast
-- path itself takes every one of them (it is the decode's first upvalue, called directly, so
-- a fast path that declined everything could not pass); mutated and odd documents give the
-- same values or the same error messages, from cjson and from cjson.safe; the instances'
-- settings (decode_max_depth, decode_invalid_numbers) are followed, on the modules and on
-- new() instances, and the setters' own errors are unchanged.
-- The run in this process is the lcluster binary, whose cjson is the one under test.
local cjson = require('cjson')
local lctest = require('lctest')
local csafe = require('cjson.safe')
local orig = require('spec.helpers.cjson_orig')
local orig_safe = require('spec.helpers.cjson_orig_safe')

local SEED = tonumber(os.getenv('LC_JSON_SEED')) or os.time()
local random = math.random
local concat, fmt = table.concat, string.format

-- A canonical text of a decoded value: numbers as %a (exact, -0 told from 0), strings %q,
-- tables with sorted keys, their length, entry count and whether they have a metatable.
local function canon(v)
  local t = type(v)
  if t == 'number' then
    return fmt('%a', v)
  elseif t == 'string' then
    return fmt('%q', v)
  elseif t ~= 'table' then
    return t .. ':' .. tostring(v)
  end
  local keys, n = {}, 0
  for k in pairs(v) do
    n = n + 1
    keys[n] = k
  end
  local ck = {}
  for i = 1, n do
    ck[keys[i]] = canon(keys[i])
  end
  table.sort(keys, function(a, b)
    return ck[a] < ck[b]
  end)
  local out = { fmt('{#%d/%d%s', #v, n, getmetatable(v) and 'mt' or '') }
  for i = 1, n do
    out[#out + 1] = ck[keys[i]] .. '=' .. canon(v[keys[i]])
  end
  return concat(out, ',') .. '}'
end

-- The fast path of a module or instance: its decode's first upvalue.
local function fastOf(m)
  local name, f = debug.getupvalue(m.decode, 1)
  assert(name == 'fast', 'decode is not the fast path wrapper')
  return f
end

-- Both called from this one line, so a luaL_error's "file:line:" prefix is the same.
local function run(decode, ...)
  local v = decode(...)
  return v
end
local function outcome(decode, ...)
  local ok, v = pcall(run, decode, ...)
  return ok and 'ok ' .. canon(v) or 'error ' .. tostring(v)
end
local function safeOutcome(decode, ...)
  local v, err = decode(...)
  return canon(v) .. ' ' .. tostring(err)
end

---------------------------------------------------------------------------------------------
-- Generators.

local function ws()
  if random(3) > 1 then
    return ''
  end
  local t = {}
  for i = 1, random(3) do
    t[i] = ({ ' ', '\t', '\n', '\r' })[random(4)]
  end
  return concat(t)
end

local function digits(n, first)
  local t = { first or tostring(random(0, 9)) }
  for i = 2, n do
    t[i] = tostring(random(0, 9))
  end
  return concat(t)
end

local SPECIAL_NUMBERS = { '0', '-0', '0.0', '-0.0', '0e0', '-0e-5', '0E+300', '-0.000e99', '1', '-1',
  '9007199254740992', '9007199254740993', '-9007199254740993', '9007199254740992.5', '18446744073709551616',
  '18446744073709551615', '1e19', '9999999999999999999', '99999999999999999999', '10000000000000000000',
  '1.7976931348623157e308', '1.7976931348623158e308', '1.7976931348623159e308', '-1e309', '4.9e-324',
  '2.4703282292062327e-324', '2.4703282292062328e-324', '1e-400', '2.2250738585072011e-308',
  '2.2250738585072014e-308', '0.1', '0.2', '0.3', '0.30000000000000004', '123456789012345678901234567890', '1e22',
  '1e23', '9.999999999999999e22', '1e-22', '1e-23', '0.000001', '1e-7', '123.456e-3', '5e-324',
  '8.98846567431158e307', '1E5', '1e+5', '1e-0005', '1e00000000000000001', '1e99999999999', '-1e-99999999999',
  '0.' .. string.rep('0', 30) .. '1', '1' .. string.rep('0', 40), '3.14159265358979323846264338327950288',
  '2.718281828459045', '-123', '100', '1000000000000000000000' }

local function number()
  local r = random(12)
  if r == 1 then
    return SPECIAL_NUMBERS[random(#SPECIAL_NUMBERS)]
  elseif r <= 3 then
    return tostring(random(-100000, 100000))
  elseif r <= 5 then
    return fmt('%.17g', (random() - 0.5) * 10 ^ random(-30, 30))
  elseif r == 6 then
    return fmt('%.' .. random(1, 17) .. 'g', (random() - 0.5) * 10 ^ random(-320, 308))
  end
  -- Built from parts: sign, integer (0 or no leading zero), fraction, exponent.
  local s = random(2) == 1 and '-' or ''
  s = s .. (random(5) == 1 and '0' or digits(random(1, 24), tostring(random(1, 9))))
  if random(2) == 1 then
    s = s .. '.' .. digits(random(1, 24))
  end
  if random(3) == 1 then
    s = s .. (random(2) == 1 and 'e' or 'E') .. ({ '', '+', '-' })[random(3)] .. digits(random(1, 4))
  end
  return s
end

local RAW = { 'a', 'b', 'Z', '0', ' ', 'é', '€', '😀', '中文', '\1', '\31', '\127', '\t', '\255', '/', "'", '\194' }
local ESC = { '\\"', '\\\\', '\\/', '\\b', '\\f', '\\n', '\\r', '\\t', '\\u0000', '\\u001f', '\\u0041', '\\u00e9',
  '\\u00E9', '\\u20AC', '\\u20ac', '\\uFFFF', '\\uD83D\\uDE00', '\\ud83d\\ude00', '\\uDBFF\\uDFFF', '\\uD800\\uDC00',
  '\\u0800', '\\u07FF', '\\u007F', '\\u0080', '\\uE000', '\\uD7FF' }

local function stringBody(maxn)
  local t = {}
  for i = 1, random(0, maxn) do
    local r = random(10)
    if r <= 6 then
      t[i] = RAW[random(#RAW)]
    elseif r <= 9 then
      t[i] = ESC[random(#ESC)]
    else
      t[i] = fmt('\\u%04x', random(0, 0xD7FF))
    end
  end
  return concat(t)
end

local function str()
  local r = random(20)
  if r == 1 then
    return '"' .. string.rep(RAW[random(#RAW)], random(8, 300)) .. '"'
  elseif r == 2 then
    return '"' .. string.rep('x', random(0, 300)) .. '\\n' .. stringBody(5) .. '"'
  elseif r <= 8 then
    return '"' .. string.rep('abcdefgh', random(0, 4)):sub(1, random(0, 32)) .. '"'
  end
  return '"' .. stringBody(12) .. '"'
end

local KEYS = { '"a"', '"b"', '"id"', '"name"', '"\\u0061"', '"\\u0062"', '""', '"a\\u0000"', '"a\\u0000b"', '"é"',
  '"\\u00e9"', '"k1"', '"k2"', '"1"' }

local function key()
  local r = random(6)
  if r <= 4 then
    return KEYS[random(#KEYS)]
  end
  return str()
end

local gen

local function array(depth, maxn)
  -- Longer than the parser's chunks of 64 sometimes, of scalars then (the size stays small).
  local big = random(8) == 1
  local n = big and random(60, 200) or random(0, maxn)
  local t = {}
  for i = 1, n do
    t[i] = ws() .. gen(big and 0 or depth - 1, maxn) .. ws()
  end
  return '[' .. (n == 0 and ws() or concat(t, ',')) .. ']'
end

local function object(depth, maxn)
  local big = random(8) == 1
  local n = big and random(60, 200) or random(0, maxn)
  local t = {}
  for i = 1, n do
    local k = big and random(4) > 1 and '"k' .. i .. '"' or key()
    t[i] = ws() .. k .. ws() .. ':' .. ws() .. gen(big and 0 or depth - 1, maxn) .. ws()
  end
  return '{' .. (n == 0 and ws() or concat(t, ',')) .. '}'
end

function gen(depth, maxn)
  local r = random(12)
  if depth <= 0 or r <= 4 then
    local s = random(8)
    if s <= 3 then
      return number()
    elseif s <= 6 then
      return str()
    elseif s == 7 then
      return ({ 'true', 'false', 'null' })[random(3)]
    end
    return random(2) == 1 and '[' .. ws() .. ']' or '{' .. ws() .. '}'
  elseif r <= 8 then
    return array(depth, maxn)
  end
  return object(depth, maxn)
end

local function doc()
  return ws() .. gen(random(0, 5), random(0, 8)) .. ws()
end

-- A few bytes changed: most become invalid, some stay valid, some become what only strtod
-- or lua-cjson's tokeniser accepts.
local MUT = { '{', '}', '[', ']', ',', ':', '"', '\\', '0', '1', '-', '+', '.', 'e', 'E', 'x', '\0', ' ', 'u', 'n',
  't', 'f', 'I', 'N', 'a', '\255', '\\u', '\\uD800', '\\uDC00', 'null', 'nan', 'inf', '0x1', '01', '1.', '.5' }

local function mutate(s)
  for _ = 1, random(1, 3) do
    local at = random(1, #s + 1)
    local r = random(4)
    if r == 1 then
      s = s:sub(1, at - 1) .. s:sub(at + 1)
    elseif r == 2 then
      s = s:sub(1, at - 1) .. MUT[random(#MUT)] .. s:sub(at)
    elseif r == 3 then
      s = s:sub(1, at - 1) .. MUT[random(#MUT)] .. s:sub(at + 1)
    else
      s = s:sub(1, at)
    end
  end
  return s
end

local ODD = { '', ' ', '\t\n', '[', '{', ']', '}', '[1,]', '[,1]', '[1 2]', '{"a":1,}', '{"a" 1}', '{"a":}', '{1:2}',
  '{a:1}', "{'a':1}", '01', '-01', '00', '-', '--1', '+1', '0x10', '0X1f', '-0x10', '1.', '-1.', '.5', '1e', '1e+',
  '1E-', '1e5.5', '1.5.5', 'NaN', 'nan', '-nan', 'inf', 'Inf', '-inf', 'Infinity', '-Infinity', 'infinity', 'tru',
  'truex', 'true false', 'nul', 'nulll', 'fals', 'falsey', '"abc', '"\\x"', '"\\u12"', '"\\u12G4"', '"\\uD800"',
  '"\\uDC00"', '"\\uD800\\u0041"', '"\\uD800x"', '"\\uD800\\uD800"', '"\\uDBFF\\uE000"', '"\\', '"\\"', '[1]x',
  '[1] [2]', '\0', '1\0', '[1]\0', '{"a":1}\0garbage', '"a\0b"', '[\0]', ' \0', '\0\0', 'a', '[1,2]]', '{"a":1}}',
  '[[[]]', '"\t"', '"\1\2\3"', '1 2', '[1]  ', '  "x"  ', '[1e999]', '[-1e999]',
  '[0.0000000000000000000000000000000001e-300]', '{"a":1,"a":2}', '{"a":1,"\\u0061":2}', '[true,false,null]', '-0',
  '[-0]', '1.0e', '1.0e+', '[1.0e]', '[1,1.]', '{"a":01}', '[0x]', '[00]', '[-]', '[+]', '[.]', '[e]', '["a",]',
  '{"":""}', '"\\/"', '["\\u0000"]', '\239\187\191[1]', '[1]\r\n', '\r\n[1]', '[ ]', '{ }', '[\n]',
  '{"a":[{"b":[{"c":[]}]}]}', '-Infinityx', 'nanx', '0x', '0xg', '1e5x', '[1}', '{"a":1]', '{"a"', '{"a":', '{"a":1',
  '[1', '[1,' }

local function deep(n, open, close, inner)
  return string.rep(open, n) .. (inner or '') .. string.rep(close, n)
end

---------------------------------------------------------------------------------------------

describe('cjson.decode fast path (runtime/json_decode.c)', function()
  local fast = fastOf(cjson)

  before_each(function()
    math.randomseed(SEED)
  end)
  after_each(function()
    -- The modules' settings are the process's: leave them as found.
    cjson.decode_max_depth(1000)
    csafe.decode_max_depth(1000)
    cjson.decode_invalid_numbers(true)
    csafe.decode_invalid_numbers(true)
  end)

  it('is installed on cjson, cjson.safe and their new() instances', function()
    for _, m in ipairs({ cjson, csafe, cjson.new(), csafe.new(), cjson.new().new(), csafe.new().new() }) do
      assert.are.equal('function', type(fastOf(m)))
      assert.are.equal('{#0/1,"a"=0x1p+0}', canon(fastOf(m)('{"a":1}')))
    end
  end)

  it('takes every generated document and decodes it as lua-cjson does, numbers bit for bit', function()
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local docs = 0
    for i = 1, 4000 do
      local s = doc()
      local want = canon(orig.decode(s))
      local got = fast(s)
      if got == nil or canon(got) ~= want then
        error(('seed %d doc %d: fast path %s\n%s\nwant %s\ngot  %s'):format(SEED, i,
          got == nil and 'declined' or 'differs',
          s:sub(1, 400), want:sub(1, 400), got == nil and '-' or canon(got):sub(1, 400)))
      end
      assert.are.equal(want, canon(cjson.decode(s)))
      local v, err = csafe.decode(s)
      assert.are.equal(want, canon(v))
      assert.is_nil(err)
      docs = docs + 1
    end
    assert.are.equal(4000, docs)
  end)

  it('decodes every number of the generators exactly, alone and inside arrays', function()
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local batch = {}
    for i = 1, 20000 do
      local s = number()
      batch[#batch + 1] = s
      local want = fmt('%a', orig.decode(s))
      local got = fast(s)
      if got == nil or fmt('%a', got) ~= want then
        error(('seed %d: %s: want %s got %s'):format(SEED, s, want, got == nil and 'declined' or fmt('%a', got)))
      end
      if i % 100 == 0 then
        local arr = '[' .. concat(batch, ' ,\n') .. ']'
        assert.are.equal(canon(orig.decode(arr)), canon(fast(arr)))
        batch = {}
      end
    end
    for _, s in ipairs(SPECIAL_NUMBERS) do
      assert.are.equal(fmt('%a', orig.decode(s)), fmt('%a', fast(s)), s)
    end
  end)

  it('gives lua-cjson\'s value or error for mutated and odd documents, from cjson and cjson.safe', function()
    if not (orig and orig_safe) then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local inputs = {}
    for _, s in ipairs(ODD) do
      inputs[#inputs + 1] = s
    end
    for _ = 1, 3000 do
      inputs[#inputs + 1] = mutate(doc())
    end
    for i, s in ipairs(inputs) do
      local want, got = outcome(orig.decode, s), outcome(cjson.decode, s)
      if want ~= got then
        error(('seed %d input %d %q:\nwant %s\ngot  %s'):format(SEED, i, s:sub(1, 300), want:sub(1, 300),
          got:sub(1, 300)))
      end
      assert.are.equal(safeOutcome(orig_safe.decode, s), safeOutcome(csafe.decode, s))
      -- The fast path itself takes only what lua-cjson decodes, and then decodes it the same.
      local f = fast(s)
      if f ~= nil then
        assert.are.equal(want, 'ok ' .. canon(f))
      end
    end
    -- Arguments that are not one string: the original's checks, its messages.
    for _, args in ipairs({ {}, { n = 2, '[1]', 2 }, { n = 1, nil }, { n = 1, {} }, { n = 1, 12 }, { n = 1, true } }) do
      local n = args.n or #args
      assert.are.equal(outcome(orig.decode, unpack(args, 1, n)), outcome(cjson.decode, unpack(args, 1, n)))
      assert.are.equal(outcome(orig_safe.decode, unpack(args, 1, n)), outcome(csafe.decode, unpack(args, 1, n)))
    end
  end)

  it('follows decode_max_depth on the modules and on new() instances', function()
    if not (orig and orig_safe) then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local pairs_ = {
      { cjson, orig, outcome },
      { csafe, orig_safe, safeOutcome },
      { cjson.new(), orig.new(), outcome },
      { csafe.new(), orig_safe.new(), safeOutcome },
    }
    for _, p in ipairs(pairs_) do
      local ours, theirs, out = p[1], p[2], p[3]
      for _, depth in ipairs({ 1, 2, 3, 7, 1000, 1008, 1023, 1024, 1025, 1500 }) do
        assert.are.equal(theirs.decode_max_depth(depth), ours.decode_max_depth(depth))
        for _, d in ipairs({ depth - 1, depth, depth + 1 }) do
          for _, s in ipairs({ deep(d, '[', ']'), deep(d, '{"a":', '}', '1'), deep(d, '[{"k":', '}]', '[]'):sub(1, -1),
            deep(d, '[1,', ']', '2') }) do
            assert.are.equal(out(theirs.decode, s), out(ours.decode, s))
          end
        end
      end
      -- Deep enough for lua-cjson's own Lua stack check: the fast path leaves it to it.
      ours.decode_max_depth(100000)
      theirs.decode_max_depth(100000)
      for _, d in ipairs({ 2500, 4000 }) do
        local s = deep(d, '{"a":', '}', '1')
        assert.are.equal(out(theirs.decode, s), out(ours.decode, s))
      end
    end
    -- Instances keep their own setting.
    cjson.decode_max_depth(1000)
    local a, b = cjson.new(), cjson.new()
    a.decode_max_depth(2)
    assert.are.equal(1000, b.decode_max_depth())
    assert.are.equal(1000, cjson.decode_max_depth())
    assert.is_nil(fastOf(a)('[[[1]]]'))
    assert.is_table(fastOf(b)('[[[1]]]'))
    assert.has_error(function()
      a.decode('[[[1]]]')
    end)
    assert.are.same({ { { 1 } } }, b.decode('[[[1]]]'))
  end)

  it('raises the setters\' own errors, as lua-cjson does', function()
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local function set(m, ...)
      local r = m.decode_max_depth(...)
      return r
    end
    local function setMethod(m, v)
      local r = m:decode_max_depth(v)
      return r
    end
    local ours, theirs = cjson.new(), orig.new()
    local cases = { {}, { n = 1, nil }, { n = 1, 0 }, { n = 1, -1 }, { n = 1, 5 }, { n = 1, '7' }, { n = 1, 'x' },
      { n = 1, {} }, { n = 2, 1, 2 }, { n = 1, 2 ^ 32 + 5 }, { n = 1, 1.9 }, { n = 1, 2 ^ 31 }, { n = 1, 2 ^ 31 - 1 },
      { n = 1, '0x10' }, { n = 1, 3 } }
    for _, args in ipairs(cases) do
      local n = args.n or 0
      local ok1, r1 = pcall(set, theirs, unpack(args, 1, n))
      local ok2, r2 = pcall(set, ours, unpack(args, 1, n))
      assert.are.equal(tostring(ok1) .. ' ' .. tostring(r1), tostring(ok2) .. ' ' .. tostring(r2))
      -- And the setting is the same afterwards.
      for d = 1, 8 do
        local s = deep(d, '[', ']')
        assert.are.equal(outcome(theirs.decode, s), outcome(ours.decode, s))
      end
    end
    local ok1, e1 = pcall(setMethod, theirs, 3)
    local ok2, e2 = pcall(setMethod, ours, 3)
    assert.are.equal(tostring(ok1) .. ' ' .. tostring(e1), tostring(ok2) .. ' ' .. tostring(e2))
  end)

  it('follows decode_invalid_numbers', function()
    if not (orig and orig_safe) then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local numbers = { '01', '-01', '0x1F', '-0x10', 'inf', '-inf', 'Infinity', '-Infinity', 'nan', 'NaN', '-nan', '+1',
      '1.', '.5', '1e5', '-0', '0', '[1,0x2]', '[01]', '{"a":-inf}', '[1.]' }
    for _, p in ipairs({ { cjson, orig, outcome }, { csafe, orig_safe, safeOutcome },
      { cjson.new(), orig.new(), outcome },
      { csafe.new(), orig_safe.new(), safeOutcome } }) do
      local ours, theirs, out = p[1], p[2], p[3]
      for _, setting in ipairs({ false, true, 'off', 'on' }) do
        assert.are.equal(theirs.decode_invalid_numbers(setting), ours.decode_invalid_numbers(setting))
        for _, s in ipairs(numbers) do
          assert.are.equal(out(theirs.decode, s), out(ours.decode, s))
        end
        for _ = 1, 200 do
          local s = doc()
          assert.are.equal(out(theirs.decode, s), out(ours.decode, s))
        end
      end
    end
  end)

  it('decodes the cluster IPC channel\'s messages on the fast path, 1008 levels deep', function()
    local ipc = require('_cluster_ipc')
    local f = fastOf({ decode = ipc.decode })
    assert.is_table(f(deep(1008, '[', ']')))
    assert.is_nil(f(deep(1009, '[', ']')))
    assert.are.same({ i = 1, p = 'x' }, f('{"i":1,"p":"x"}'))
    local v, err = ipc.decode(deep(1009, '[', ']'))
    assert.is_nil(v)
    assert.matches('too many nested', err)
  end)

  it('gives every short string its own bytes: strings alike but for one byte, as keys and values', function()
    -- Strings of up to 16 bytes come from a cache (runtime/json_decode.c) keyed by their
    -- length and bytes; thousands of near-identical ones fill every slot several times over.
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local alphabet = { 'a', 'b', 'é', '\1', ' ', '~' }
    for _ = 1, 20 do
      local vals, keys = {}, {}
      for i = 1, 600 do
        local len = random(0, 17)
        local prefix = string.rep('p', random(0, len))
        local t = { prefix }
        for _ = #prefix + 1, len do
          t[#t + 1] = alphabet[random(#alphabet)]
        end
        local sv = '"' .. concat(t) .. '"'
        vals[i] = sv
        keys[i] = sv .. ':' .. sv
      end
      for _, s in ipairs({ '[' .. concat(vals, ',') .. ']', '{' .. concat(keys, ',') .. '}',
        '[' .. concat(vals, ',') .. ',' .. '{' .. concat(keys, ',') .. '}]' }) do
        local want = canon(orig.decode(s))
        assert.are.equal(want, canon(fast(s)))
        assert.are.equal(want, canon(fast(s)))
      end
    end
  end)

  it('gives strings up to 70 bytes their own bytes: alike but for one byte anywhere', function()
    -- In place (docs/architecture.md), the cache also takes strings of 17 to 64 bytes,
    -- identified by their length, first and last 8 bytes and, compared with the cached
    -- string, the bytes between; these differ in one byte at any place, the middle too.
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    for _ = 1, 20 do
      local vals, keys = {}, {}
      for i = 1, 400 do
        local len = random(1, 70)
        local b = { string.rep('m', len):byte(1, -1) }
        b[random(len)] = ('axz'):byte(random(3))
        local sv = '"' .. string.char(unpack(b)) .. '"'
        vals[i] = sv
        keys[i] = sv .. ':' .. sv
      end
      for _, s in ipairs({ '[' .. concat(vals, ',') .. ']', '{' .. concat(keys, ',') .. '}' }) do
        local want = canon(orig.decode(s))
        assert.are.equal(want, canon(fast(s)))
        assert.are.equal(want, canon(fast(s)))
      end
    end
  end)

  it('builds the same tables while the GC runs all the time, keeps the last of duplicate keys', function()
    -- Tables are filled in place (no write barrier: the table is the newest object and
    -- nothing allocates while it is filled); with the GC's pause at 0 every allocation steps
    -- it, so a value the GC missed would be freed and the comparison would see it.
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local texts = {}
    for i = 1, 300 do
      local items = {}
      for j = 1, random(1, 40) do
        items[j] = fmt('{"id":%d,"k%d":"v%d","note":"%s","tags":["x","%s"],"id":%d}', j, random(9),
          random(99), string.rep('n', random(20, 80)), string.rep('t', random(1, 30)), -j)
      end
      texts[i] = '{"n":' .. i .. ',"items":[' .. concat(items, ',') .. '],"n":"last"}'
    end
    local pause = collectgarbage('setpause', 0)
    local mul = collectgarbage('setstepmul', 1000)
    local got = {}
    for i, s in ipairs(texts) do
      got[i] = fast(s)
    end
    collectgarbage('setpause', pause)
    collectgarbage('setstepmul', mul)
    collectgarbage()
    for i, s in ipairs(texts) do
      assert.are.equal(canon(orig.decode(s)), canon(got[i]))
      assert.are.equal('last', got[i].n)
      assert.are.equal(-1, got[i].items[1].id)
    end
  end)

  it('decodes alike through the Lua C API alone (LC_JSON_DECODE=api), the same specs', function()
    if os.getenv('LC_JSON_DECODE') then
      return -- this very run
    end
    local c = lctest.spawn('test', { 'spec/json_decode_spec.lua' }, { env = { LC_JSON_DECODE = 'api' } })
    local code = c:waitExit(240000)
    assert.are.equal(0, code, c.stdout .. c.stderr)
    assert.is_truthy(c.stdout:match(' 0 failures / 0 errors'), c.stdout .. c.stderr)
  end)

  it('leaves the byte after a Lua string\'s end alone: strings of every length up to 40', function()
    -- The parser stops on the NUL Lua keeps after every string; each cut of one text must
    -- decode (or be declined) exactly as lua-cjson does, never reading on.
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    local text = '{"abcdefghijklmnopq":[1.5e3,-0,"\\u00e9x",true,null]}'
    for n = 0, #text do
      local s = text:sub(1, n)
      assert.are.equal(outcome(orig.decode, s), outcome(cjson.decode, s))
    end
    for n = 0, 40 do
      local s = '"' .. string.rep('y', n) .. '"'
      assert.are.equal(string.rep('y', n), fast(s))
      assert.is_nil(fast(s:sub(1, -2)))
    end
  end)
end)
