-- The main state's allocator for blocks of 128 KiB or more (runtime/bigalloc.c): large
-- strings, tables and buffers made, grown across the threshold, dropped and collected stay
-- intact; freed blocks are reused (no fresh pages) and the cache of them is bounded.
-- The first tests run in this process (the runner's main state has the allocator).
local lctest = require('lctest')

local KiB, MiB = 1024, 1024 * 1024

local function distinct(n, i)
  return ('%08d'):format(i) .. string.rep(string.char(97 + i % 26), n - 8)
end

local function check(s, n, i)
  assert.are.equal(n, #s)
  assert.are.equal(('%08d'):format(i), s:sub(1, 8))
  local c = string.char(97 + i % 26)
  assert.are.equal(c, s:sub(9, 9))
  assert.are.equal(c, s:sub(-1))
  assert.are.equal(c, s:sub(math.floor(n / 2), math.floor(n / 2)))
end

-- A sanitizer build: the RSS test measures 44 and 50 MiB there (31 and 32 in a release
-- build; ASan's shadow memory and allocator are resident too), 101 and 142 unbounded.
local asanBuild = require('spec.helpers.sanitizer')

local function fixture(mode)
  local c = lctest.spawn('spec/fixtures/bigalloc.lua', { mode })
  local code = c:waitExit(60000)
  assert.are.equal(0, code, c.stdout .. c.stderr)
  return c.stdout:match('RESULT (.-)\n')
end

describe('large blocks', function()
  after_each(function()
    lctest.cleanup()
    -- The runner is one process for every spec file: leave it no large garbage (a later
    -- spec bounds collectgarbage('count')).
    collectgarbage()
    collectgarbage()
  end)

  it('make, drop and collect large strings of varied sizes, contents intact', function()
    local sizes = { 128 * KiB - 1, 128 * KiB, 128 * KiB + 1, 200 * KiB, MiB, MiB + 1, 3 * MiB,
      17 * MiB, 40 * MiB, 64 * KiB, 2 * MiB - 17 }
    for round = 1, 4 do
      local live = {}
      for k = 1, 24 do
        local i = round * 100 + k
        local n = sizes[(k * round) % #sizes + 1]
        live[k] = { s = distinct(n, i), n = n, i = i }
        -- Drop every third as it goes, so blocks come back while others are made.
        if k % 3 == 0 then
          live[k - 1] = false
          collectgarbage()
        end
      end
      for _, e in ipairs(live) do
        if e then
          check(e.s, e.n, e.i)
        end
      end
      live = nil -- luacheck: ignore 311
      collectgarbage()
    end
  end)

  it('reuse freed small blocks of every size up to 600 bytes, contents intact', function()
    -- Blocks up to 512 bytes freed go to per-size lists (8-byte classes) and are handed out
    -- again for requests of their class: strings of every length (a GCstr is 24 bytes, the
    -- bytes and a NUL) and tables of every hash size, made, half dropped and collected,
    -- made again in other sizes; a block given to a larger request than it holds would
    -- overwrite its neighbour, which the checks see.
    local function str(len, i)
      return (string.char(65 + i % 26) .. ('%07d'):format(i)):rep(math.ceil(len / 8)):sub(1, len)
    end
    local function tab(n, i)
      local t = {}
      for k = 1, n do
        t['k' .. k] = i + k
      end
      return t
    end
    local live = {}
    for round = 1, 6 do
      for i = 1, 2000 do
        local len = (i * 7 + round * 13) % 600 + 1
        live[#live + 1] = { s = str(len, i + round), len = len, i = i + round,
          t = tab(i % 40, i), n = i % 40, ti = i }
      end
      for k = #live, 1, -2 do
        table.remove(live, k)
      end
      collectgarbage()
      for _, e in ipairs(live) do
        assert.are.equal(str(e.len, e.i), e.s)
        local n = 0
        for key, v in pairs(e.t) do
          n = n + 1
          assert.are.equal(e.ti + tonumber(key:sub(2)), v)
        end
        assert.are.equal(e.n, n)
      end
    end
  end)

  it('grow buffers and tables across the threshold and back, contents intact', function()
    for round = 1, 3 do
      -- luaL_Buffer (table.concat) and LuaJIT's own buffer (string.rep, gsub) growing from
      -- small to several MiB: reallocs small -> large and large -> large.
      local parts = {}
      for k = 1, 600 do
        parts[k] = ('%07d|'):format(k * round) .. string.rep('p', 5000)
      end
      local s = table.concat(parts)
      assert.are.equal(600 * 5008, #s)
      local k = 0
      for num in s:gmatch('(%d%d%d%d%d%d%d)|') do
        k = k + 1
        assert.are.equal(k * round, tonumber(num))
      end
      assert.are.equal(600, k)
      local g = s:gsub('p', 'qq')
      assert.are.equal(600 * (8 + 10000), #g)
      assert.are.equal(('%07d|'):format(600 * round) .. string.rep('q', 10000), g:sub(-10008))
      -- A table's array part grows past 128 KiB (realloc large -> large), then the table is
      -- rebuilt smaller (large -> small).
      local t = {}
      for j = 1, 100000 + round do
        t[j] = j * 3
      end
      for j = 1, 100000 + round, 997 do
        assert.are.equal(j * 3, t[j])
      end
      local small = {}
      for j = 1, 10 do
        small[j] = t[j]
      end
      t = nil -- luacheck: ignore 311
      collectgarbage()
      assert.are.same({ 3, 6, 9, 12, 15, 18, 21, 24, 27, 30 }, small)
      -- A string grown by repeated concatenation through sizes on both sides of 128 KiB.
      local acc = ''
      for j = 1, 40 do
        acc = acc .. string.rep(string.char(65 + j % 26), 7 * KiB)
      end
      assert.are.equal(40 * 7 * KiB, #acc)
      assert.are.equal(string.char(65 + 40 % 26), acc:sub(-1))
      assert.are.equal(string.char(65 + 20 % 26), acc:sub(19 * 7 * KiB + 1, 19 * 7 * KiB + 1))
    end
  end)

  it('reuse freed blocks: no fresh pages for a 1 MiB string made after one was collected', function()
    -- Without the cache each 1 MiB string (and string.rep's buffer) is a fresh mapping:
    -- ~256 first-touch page faults per MiB (about 640 per round here).
    local faults = tonumber(fixture('faults'):match('^faults ([%d.]+)$'))
    assert.is_true(faults < 32, 'minor faults per round: ' .. faults)
  end)

  it('send 1 MiB table messages without fresh pages for their encoded buffers', function()
    -- The encoder's buffer (an 8 MiB reservation for a 1 MiB string, 1 MiB written) comes
    -- from the same cache; from malloc it was a fresh mapping each time: ~257 faults.
    local faults = tonumber(fixture('send'):match('^send ([%d.]+)$'))
    assert.is_true(faults < 32, 'minor faults per message in the sender: ' .. faults)
  end)

  it('bound the cache: 100 x 1 MiB and 20 x 5 MiB strings dropped leave at most its cap resident', function()
    -- The cache keeps at most 32 MiB (and 32 blocks); without a bound the freed 100 MiB stay.
    local limit = asanBuild and 60 or 44
    local mib = tonumber(fixture('rss'):match('^rss (%-?%d+)$'))
    assert.is_true(mib < limit, 'RSS growth after the strings were collected: ' .. mib .. ' MiB')
    mib = tonumber(fixture('rss5'):match('^rss (%-?%d+)$'))
    assert.is_true(mib < limit, 'RSS growth after the strings were collected: ' .. mib .. ' MiB')
  end)

  it('carry large table messages of varied sizes both ways between processes intact', function()
    assert.are.equal('ipc 11', fixture('ipc'))
  end)
end)
