-- What docs/api.md promises about the command line and the built-in JSON library, checked
-- against the binary (issue 11: the docs must stand alone and tell the truth).
local lctest = require('lctest')
local cjson = require('cjson')

local function readFile(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

describe('docs', function()
  after_each(lctest.cleanup)

  it("`lcluster test --help` shows lcluster's usage, lctest's helpers and busted's options", function()
    local c = lctest.spawn(nil, {}, { flags = { 'test', '--help' } })
    local code = c:waitExit(10000)
    assert.are.equal(0, code, c.stdout .. c.stderr)
    assert.truthy(c.stdout:find('usage: lcluster test', 1, true), c.stdout)
    assert.truthy(c.stdout:find('lctest.spawn(script, args', 1, true), c.stdout)
    assert.truthy(c.stdout:find('lctest.waitFor(fn, ms, what)', 1, true), c.stdout)
    for _, helper in ipairs({ 'lctest.poll(fn, ms, what)', 'lctest.get(port', 'lctest.getSync(port',
      'lctest.waitAll(list', 'lctest.waitPids(child, pattern, n', 'lctest.capture(socket)' }) do
      assert.truthy(c.stdout:find(helper, 1, true), helper .. ' is not in:\n' .. c.stdout)
    end
    assert.truthy(c.stdout:find('Usage: lcluster test [OPTIONS]', 1, true), c.stdout)
    assert.truthy(c.stdout:find('--pattern', 1, true), c.stdout)
    assert.is_nil(c.stdout:find('_busted.lua', 1, true), c.stdout)
    assert.are.equal('', c.stderr)
  end)

  it('docs/api.md stands alone: no reference to a file outside the repository', function()
    local doc = readFile('docs/api.md')
    assert.is_nil(doc:find('shared/', 1, true), 'docs/api.md refers to shared/')
    assert.is_nil(doc:find('API.md', 1, true), 'docs/api.md refers to API.md')
    for target in doc:gmatch('%]%(([^)#]+)[^)]*%)') do
      if not target:find('^https?:') then
        local f = io.open('docs/' .. target, 'rb')
        assert.truthy(f, 'docs/api.md links to a missing file: ' .. target)
        f:close()
      end
    end
  end)

  it("lua-cjson behaves as docs/api.md says: version, {} for an empty table, \\/ and 14 digits", function()
    local doc = readFile('docs/api.md')
    assert.truthy(doc:find('lua-cjson ' .. cjson._VERSION, 1, true), 'the version in the docs is ' .. cjson._VERSION)
    assert.are.equal('{}', cjson.encode({}))
    assert.are.equal('"a\\/b"', cjson.encode('a/b'))
    assert.are.equal('0.33333333333333', cjson.encode(1 / 3))
    assert.are.equal('1.2345678901235e+17', cjson.encode(123456789012345678))
    -- The docs say this build has no empty-array marker; they must change if one appears.
    assert.is_nil(cjson.empty_array)
    assert.is_nil(cjson.empty_array_mt)
    assert.truthy(doc:find('no `cjson.empty_array`', 1, true))
  end)
end)
