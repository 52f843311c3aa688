-- The built-in cjson.decode sizes the tables it fills from the last ones of the same depth and
-- place (runtime/cjson.c). What it decodes must be what Debian's own lua-cjson decodes, for
-- documents of every shape (uniform and changing siblings, empty tables, nesting deeper than
-- the sizes are learnt for, decodes aborted by an error in between), and the tables must not
-- take more memory than the original's. The run in this process is the lcluster binary,
-- whose cjson is the one under test; the original is loaded beside it when installed.
local cjson = require('cjson')

local orig = require('spec.helpers.cjson_orig')

local SEED = tonumber(os.getenv('LC_JSON_SEED')) or os.time()
local random = math.random
local concat = table.concat

-- A canonical text of a decoded value: object keys sorted, arrays by index with their
-- length, and the entry count seen by next(), so a lost or extra entry shows.
local function canon(v)
  if type(v) ~= 'table' then
    return type(v) .. ':' .. tostring(v)
  end
  local keys, n = {}, 0
  for k in pairs(v) do
    n = n + 1
    keys[n] = k
  end
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  local out = { '{#' .. #v .. '/' .. n }
  for _, k in ipairs(keys) do
    out[#out + 1] = tostring(k) .. '=' .. canon(v[k])
  end
  return concat(out, ',') .. '}'
end

-- A random JSON text: objects and arrays of 0..maxn entries down to `depth` levels.
local function gen(depth, maxn)
  local r = random(10)
  if depth <= 0 or r <= 3 then
    local s = random(5)
    if s == 1 then
      return tostring(random(-1000, 1000))
    elseif s == 2 then
      return '"s' .. random(100) .. '"'
    elseif s == 3 then
      return 'null'
    elseif s == 4 then
      return random(2) == 1 and 'true' or 'false'
    end
    return tostring(random() * 100)
  end
  local n = random(0, maxn)
  local parts = {}
  if r <= 6 then
    for i = 1, n do
      parts[i] = gen(depth - 1, maxn)
    end
    return '[' .. concat(parts, ',') .. ']'
  end
  for i = 1, n do
    parts[i] = '"k' .. i .. '":' .. gen(depth - 1, maxn)
  end
  return '{' .. concat(parts, ',') .. '}'
end

-- An array of `count` copies of one random shape (an API's list of similar records).
local function uniform(count, depth, maxn)
  local one = gen(depth, maxn)
  local parts = {}
  for i = 1, count do
    parts[i] = one
  end
  return '[' .. concat(parts, ',') .. ']'
end

local function same(doc)
  local got = canon(cjson.decode(doc))
  if orig then
    local want = canon(orig.decode(doc))
    if got ~= want then
      error(('seed %d: %s\nbuilt-in %s\noriginal %s'):format(SEED, doc:sub(1, 300), got:sub(1, 300),
        want:sub(1, 300)))
    end
  end
  return got
end

describe('cjson.decode tables (runtime/cjson.c)', function()
  it('decodes what the original decodes: random, uniform, deep and empty documents', function()
    math.randomseed(SEED)
    for _ = 1, 600 do
      same(gen(5, 9))
      same(uniform(random(1, 30), 3, 6))
    end
    -- Deeper than the 32 levels whose sizes are learnt, then shallow ones again.
    for d = 30, 40 do
      local doc = string.rep('[{"a":[1,2,3],"b":', d) .. '{"x":1,"y":2}' .. string.rep('}]', d)
      same(doc)
      same(uniform(20, 3, 5))
    end
    for _, doc in ipairs({ '{}', '[]', '[[],{},[[]],{"a":{}}]', '{"a":[],"b":{},"c":[[],[]]}', '[1]', '{"a":1}',
      '[[1,2],[3,4],[5,6]]', '[{"a":1,"b":2},{"a":3},{"a":5,"b":6,"c":7}]', '"str"', '12', 'null' }) do
      same(doc)
    end
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed: only decoded twice')
    end
  end)

  it('decodes correctly after decodes aborted by an error at any depth', function()
    math.randomseed(SEED + 1)
    for _ = 1, 300 do
      local doc = uniform(random(2, 12), 4, 6)
      local cut = doc:sub(1, random(1, #doc - 1))
      assert.is_false((pcall(cjson.decode, cut)))
      assert.is_false((pcall(cjson.decode, cut .. ']]]}}}x')))
      same(doc)
    end
  end)

  it('holds decoded tables in no more memory than the original does', function()
    if not orig then
      pending('Debian cjson.so (lua-cjson) not installed')
      return
    end
    math.randomseed(SEED + 2)
    local function size(decode, doc)
      collectgarbage('collect')
      local before = collectgarbage('count')
      local v = decode(doc)
      collectgarbage('collect')
      local kb = collectgarbage('count') - before
      assert(v)
      return kb
    end
    local docs = {
      uniform(5000, 1, 2), -- [[1,2],...] / [{"k1":..,"k2":..},...]
      uniform(3000, 2, 6),
      '[' .. string.rep('[1,2],{"a":1},', 3000) .. '[]]', -- alternating kinds
    }
    local mixed = {}
    for i = 1, 3000 do
      mixed[i] = gen(3, 8) -- a changing shape at every place
    end
    docs[#docs + 1] = '[' .. concat(mixed, ',') .. ']'
    for i, doc in ipairs(docs) do
      -- Twice, so the sizes learnt from the first decode are used in the second.
      size(cjson.decode, doc)
      local ours, theirs = size(cjson.decode, doc), size(orig.decode, doc)
      -- Shapes that change at every place get a few wrong guesses (~6% measured).
      local limit = i == #docs and 1.1 or 1.02
      assert(ours <= theirs * limit + 1,
        ('document %d (seed %d): %.0f KB against the original\'s %.0f KB'):format(i, SEED, ours, theirs))
    end
  end)
end)
