-- The built-in cjson.encode (runtime/json_encode.c: a fast path in front of lua-cjson 2.1.0's
-- encoder) gives exactly what Debian's own lua-cjson gives: the same bytes for every value it
-- encodes, the same error for every value it refuses (cjson), the same nil, err (cjson.safe),
-- under every setting, on the modules and on cjson.new() instances. A differential test:
-- thousands of generated values (spec/helpers/json_encode_diff.lua) encoded by both in this
-- process, so both walk the same tables in the same lua_next order; once more in a process
-- where the fast path's API tier does all the work (LC_JSON_ENCODE=api). The run in this
-- process is the lcluster binary itself, whose cjson is the one under test.
-- Interpreted: the generators' random branches would make LuaJIT compile (and mprotect)
-- thousands of short-lived traces, most of this file's run time.
jit.off(debug.getinfo(1, 'f').func, true)
local lctest = require('lctest')
local cjson = require('cjson')
local csafe = require('cjson.safe')

local diff = require('spec.helpers.json_encode_diff')
local orig, origSafe = diff.orig, diff.origSafe

local SEED = tonumber(os.getenv('LC_JSON_SEED')) or os.time()
local char, concat, rep = string.char, table.concat, string.rep
local null = cjson.null

-- Runs fn with the modules' settings restored afterwards (other specs share this process).
local function withModules(settings, fn)
  diff.apply(cjson, settings)
  diff.apply(orig, settings)
  diff.apply(csafe, settings)
  diff.apply(origSafe, settings)
  local ok, err = pcall(fn)
  diff.apply(cjson, diff.DEFAULTS)
  diff.apply(orig, diff.DEFAULTS)
  diff.apply(csafe, diff.DEFAULTS)
  diff.apply(origSafe, diff.DEFAULTS)
  if not ok then
    error(err, 0)
  end
end

-- Ours and the original on one value, module and safe module.
local function same(v, what)
  local ok, s = diff.same(cjson, orig, v, what)
  diff.sameSafe(csafe, origSafe, v, what)
  return ok, s
end

describe('cjson.encode fast path (runtime/json_encode.c)', function()
  if not orig then
    pending('Debian cjson.so (lua-cjson) not installed')
    return
  end

  it('encodes thousands of random values byte for byte as lua-cjson does, or refuses them alike', function()
    math.randomseed(SEED)
    local good = diff.run(cjson, orig, csafe, origSafe, 6000, 5, true, 'seed ' .. SEED)
    -- Most values encode: the comparison is of output, not only of errors.
    assert.is_true(good > 3500, ('only %d of 6000 values encoded'):format(good))
  end)

  it('escapes every byte, alone, in runs of every length and as object keys, as lua-cjson does', function()
    local all = {}
    for b = 0, 255 do
      all[#all + 1] = char(b)
      local ok, s = same(char(b), 'byte ' .. b)
      assert.is_true(ok)
      assert.is_string(s)
      same({ [char(b)] = b }, 'key byte ' .. b)
      -- The byte at every place of strings around the 8-byte runs.
      for len = 1, 20 do
        for at = 1, len do
          same(rep('a', at - 1) .. char(b) .. rep('b', len - at), ('byte %d at %d of %d'):format(b, at, len))
        end
      end
    end
    same(concat(all), 'all bytes')
    same(rep(concat(all), 300), 'all bytes x300')
    same({ [concat(all)] = concat(all) }, 'all bytes as key')
    assert.are.equal('"\\/\\"\\\\\\u0000\\u001f\\u007f\\b\\t\\n\\f\\r\\u000b\128\255"',
      cjson.encode('/"\\\0\31\127\b\t\n\f\r\11\128\255'))
  end)

  it('escapes strings longer than its 4 KiB pieces as lua-cjson does, escapes at the pieces\' edges', function()
    -- Strings over 4096 bytes are escaped piece by piece (runtime/json_encode.c, PIECE), each
    -- piece reserving 6x its length: an escape, a multi-byte character or a plain byte just
    -- before, at and after every piece boundary, in strings ending around the boundaries.
    local PIECE = 4096
    local odd = { '"', '\\', '/', '\0', '\31', '\127', '\n', '\195\169', '\226\130\172', 'x' }
    for _, pieces in ipairs({ 1, 2, 3 }) do
      for _, d in ipairs({ -9, -8, -7, -1, 0, 1, 7, 8, 9 }) do
        local len = pieces * PIECE + d
        for _, c in ipairs(odd) do
          local t = {}
          for i = 1, len do
            t[i] = 'a'
          end
          for k = 1, pieces do
            for _, at in ipairs({ k * PIECE - 1, k * PIECE, k * PIECE + 1 }) do
              if at >= 1 and at <= len then
                t[at] = c
              end
            end
          end
          t[len] = c
          local s = concat(t)
          same(s, ('%d bytes, %q at the edges'):format(#s, c))
          same({ [s] = s, k = s }, ('%d bytes as key and value'):format(#s))
        end
      end
    end
    -- All escapes: 6 bytes out per byte in, 10 pieces.
    same(rep('\1', 10 * PIECE + 3), 'control characters x40963')
    same({ rep('"', 5 * PIECE), rep('\\', PIECE + 1) }, 'quotes and backslashes')
  end)

  it('formats numbers as lua-cjson does at every precision', function()
    math.randomseed(SEED + 1)
    for p = 1, 14 do
      local a, b = cjson.new(), orig.new()
      a.encode_number_precision(p)
      b.encode_number_precision(p)
      for i = 1, 2000 do
        local n = diff.number()
        diff.same(a, b, n, ('precision %d number %d'):format(p, i))
        diff.same(a, b, { n, { [n] = n } }, ('precision %d key %d'):format(p, i))
      end
    end
    for _, n in ipairs({ 0, -1 / math.huge, 2 ^ 53, 2 ^ 53 + 2, 1e14, 1e14 - 1, -99999999999999, 1e15, 5e-324 }) do
      same({ n }, tostring(n))
    end
    assert.are.equal('[-0,0,9.007199254741e+15,1e+14,99999999999999]',
      cjson.encode({ -1 / math.huge, 0, 2 ^ 53, 1e14, 1e14 - 1 }))
  end)

  it('tells arrays from objects as lua-cjson does: holes, sparse arrays, odd keys, hash parts', function()
    local tnew = require('table.new')
    local back = {}
    for i = 10, 1, -1 do
      back[i] = i
    end
    local zero = tnew(8, 0)
    zero[0], zero[1], zero[2] = 'z', 'a', 'b'
    local presized = tnew(16, 4)
    presized[1], presized[2] = 1, 2
    local dead = { 1, 2, 3 }
    dead.x = 1
    dead.x = nil
    local cases = { {}, { 1, 2, 3 }, { 1, nil, 3 }, { [1] = 1, [3] = 3 }, { [1] = 1, [11] = 1 },
      { [1] = 1, [12] = 1 }, { [2] = 1, [3] = 1, [4] = 1, [5] = 1, [6] = 1, [20] = 1 }, { [10] = 1 },
      { [11] = 1 }, back, zero, presized, dead, { 1, 2, x = 1 }, { x = 1, 1, 2 }, { [0] = 1 }, { [-1] = 1 },
      { [1.5] = 1 }, { [2 ^ 31 - 1] = 1 }, { [2 ^ 31] = 1 }, { 1, [2 ^ 31] = 1 }, { [2 ^ 53] = 1 },
      { [1e300] = 1 }, { [3e9 + 0.5] = 1 }, { ['1'] = 1, [1] = 2 }, { null, null }, { [2] = null },
      { a = { b = { c = { {}, { {} } } } } } }
    for i, t in ipairs(cases) do
      same(t, 'case ' .. i)
    end
    -- Every encode_sparse_array setting on tables around the limits.
    for convert = 0, 1 do
      for ratio = 0, 4 do
        for safe = 0, 12 do
          withModules({ sparse = { convert == 1, ratio, safe }, depth = 1000, precision = 14, invalid = false,
            keep = true }, function()
            for max = 1, 14 do
              for items = 1, max do
                local t = {}
                for j = 1, items - 1 do
                  t[j] = j
                end
                t[max] = max
                same(t, ('sparse %d %d %d: %d of %d'):format(convert, ratio, safe, items, max))
              end
            end
          end)
        end
      end
    end
  end)

  it('refuses what lua-cjson refuses, with its error (cjson) and its nil, err (cjson.safe)', function()
    local cyc = {}
    cyc.self = cyc
    local deep = {}
    local d = deep
    for _ = 1, 1100 do
      d[1] = {}
      d = d[1]
    end
    local refused = { print, coroutine.create(print), io.stdout, 0 / 0, math.huge, -math.huge, { [{}] = 1 },
      { [true] = 1 }, { [math.huge] = 1 }, cyc, deep, { [1] = 1, [100] = 1 }, { 1, 2, { f = print } },
      { x = { y = { 0 / 0 } } } }
    for i, v in ipairs(refused) do
      local ok = same(v, 'refused ' .. i)
      assert.is_false(ok, 'refused ' .. i)
    end
    -- The argument count: lua-cjson's message, naming the function as called.
    local function err(f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok)
      return e
    end
    assert.are.equal(err(function()
      local s = orig.encode()
      return s
    end):gsub('^.-:%d+: ', ''), err(function()
      local s = cjson.encode()
      return s
    end):gsub('^.-:%d+: ', ''))
    assert.are.equal(err(orig.encode, 1, 2), err(cjson.encode, 1, 2))
    -- cjson.safe raises this one too.
    assert.are.equal(err(origSafe.encode, 1, 2), err(csafe.encode, 1, 2))
    assert.are.equal(err(origSafe.encode), err(csafe.encode))
    -- The setters' own errors are untouched (the wrappers tail-call them).
    for _, bad in ipairs({ { 'encode_max_depth', 0 }, { 'encode_number_precision', 15 },
      { 'encode_sparse_array', 1, 2, 3, 4 }, { 'encode_sparse_array', 'x' } }) do
      local name = bad[1]
      local function call(m)
        local r = m[name](unpack(bad, 2))
        return r
      end
      assert.are.equal(err(call, orig):gsub('^.-:%d+: ', ''), err(call, cjson):gsub('^.-:%d+: ', ''))
    end
  end)

  it('follows every encode setting on the modules and on cjson.new() instances', function()
    math.randomseed(SEED + 2)
    for round = 1, 30 do
      local s = diff.randomSettings()
      withModules(s, function()
        diff.run(cjson, orig, csafe, origSafe, 60, 6, true, ('module settings %d'):format(round))
      end)
      -- Instances of both modules, and instances of instances.
      local a, b = cjson.new(), orig.new()
      local sa, sb = csafe.new().new(), origSafe.new().new()
      diff.apply(a, s)
      diff.apply(b, s)
      diff.apply(sa, s)
      diff.apply(sb, s)
      diff.run(a, b, sa, sb, 100, 6, true, ('instance settings %d'):format(round))
      -- A setting changed between encodes of the same table.
      local t = diff.value(4, false)
      for p = 14, 1, -3 do
        a.encode_number_precision(p)
        b.encode_number_precision(p)
        diff.same(a, b, t, 'precision ' .. p)
      end
    end
    -- Each setting as the setters return it.
    local a, b = cjson.new(), orig.new()
    assert.are.same({ b.encode_sparse_array(true, 3, 7) }, { a.encode_sparse_array(true, 3, 7) })
    assert.are.same({ b.encode_max_depth(5) }, { a.encode_max_depth(5) })
    assert.are.same({ b.encode_number_precision(3) }, { a.encode_number_precision(3) })
    assert.are.same({ b.encode_invalid_numbers('null') }, { a.encode_invalid_numbers('null') })
    assert.are.same({ b.encode_keep_buffer(false) }, { a.encode_keep_buffer(false) })
    assert.are.equal('[1.23,null,[[[{}]]]]', a.encode({ 1.2345, 0 / 0, { { { {} } } } }))
    assert.are.equal(b.encode({ 1.2345, 0 / 0, { { { {} } } } }), a.encode({ 1.2345, 0 / 0, { { { {} } } } }))
    -- The depth limit, exactly.
    for depth = 1, 12 do
      a.encode_max_depth(depth)
      b.encode_max_depth(depth)
      local t = {}
      for _ = 1, 13 do
        t = { t }
        diff.same(a, b, t, 'depth ' .. depth)
      end
    end
  end)

  it('encodes as lua-cjson does when a finalizer encodes in the middle of an encode', function()
    math.randomseed(SEED + 3)
    local seen = 0
    for _ = 1, 200 do
      local p = newproxy(true)
      getmetatable(p).__gc = function()
        seen = seen + 1
        assert(cjson.encode({ gc = { 1, 2, 'x' } }) == '{"gc":[1,2,"x"]}')
      end
    end
    for i = 1, 3000 do
      local v = diff.value(4, false)
      same(v, 'gc ' .. i)
    end
    collectgarbage()
    assert.is_true(seen > 0)
  end)

  it('takes the fast path on the modules, on instances and on the IPC encoder settings', function()
    -- A value like bench/realistic's answer. The fast path is runtime/json_encode.c's closure
    -- (5 upvalues: its settings, lua-cjson's encode, the three setters it reads them back
    -- through); lua-cjson's own encode has one (its config). Structure, not timing, tells
    -- which one each module and instance has.
    local items = {}
    for i = 1, 12 do
      items[i] = { id = i, name = 'item-' .. i, price = i * 1.25, tags = { 'a', 'b', 'c' }, active = true }
    end
    local v = { ok = true, n = 10, user = { id = 42, name = 'bench', email = 'bench@example.com' }, items = items }
    local function isFast(enc)
      if debug.getinfo(enc, 'S').what ~= 'C' then
        return false
      end
      local _, cfg = debug.getupvalue(enc, 1)
      local _, original = debug.getupvalue(enc, 2)
      return type(cfg) == 'userdata' and type(original) == 'function' and original ~= enc
        and debug.getupvalue(enc, 5) ~= nil and debug.getupvalue(enc, 6) == nil
    end
    local ipc = cjson.new()
    ipc.encode_number_precision(14)
    ipc.encode_invalid_numbers(false)
    ipc.encode_max_depth(1008)
    ipc.encode_keep_buffer(true)
    -- lua-cjson's encode in this binary (with runtime/fpconv.c's number formatting, unlike
    -- Debian's cjson.so), which the fast path keeps as its second upvalue.
    local _, builtin = debug.getupvalue(cjson.encode, 2)
    assert.is_function(builtin)
    assert.is_false(isFast(builtin))
    assert.are.equal(orig.encode(v), builtin(v))
    for name, enc in pairs({ module = cjson.encode, safe = csafe.encode, instance = cjson.new().encode,
      safeInstance = csafe.new().encode, ipc = ipc.encode }) do
      assert.is_true(isFast(enc), name .. ': not the fast path')
      assert.are.equal(orig.encode(v), enc(v))
    end
  end)

  it('gives the same results when the API path does all the work (LC_JSON_ENCODE=api)', function()
    local c = lctest.spawn('spec/fixtures/json_encode_api.lua', { tostring(SEED), '4000' },
      { env = { LC_JSON_ENCODE = 'api' } })
    local code = c:waitExit(120000)
    assert.are.equal(0, code, c.stdout .. c.stderr)
    local good = tonumber(c.stdout:match('RESULT ok (%d+) 4000'))
    assert.is_true(good ~= nil and good > 2500, c.stdout .. c.stderr)
  end)
end)
