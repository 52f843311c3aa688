-- lualib/ is grouped in folders by role; the module name stays the file's basename.
local lctest = require('lctest')

local FIX = 'spec/fixtures/'
local ALL = 'luv=table fs=table path=table url=table querystring=table child_process=table\n'

describe('lualib folders', function()
  after_each(lctest.cleanup)

  it('embeds modules from subfolders under their basename (no files beside the binary)', function()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    assert.are.equal(0, os.execute('cp ' .. lctest.binary .. ' ' .. dir .. '/lcluster'))
    assert.are.equal(0, os.execute('cp ' .. FIX .. 'io_embedded.lua ' .. dir .. '/main.lua'))
    local c = lctest.spawn('main.lua', {}, {
      binary = dir .. '/lcluster',
      cwd = dir,
      env = { LCLUSTER_LUALIB = false },
    })
    assert.are.equal(0, c:waitExit())
    assert.are.equal(ALL .. '@lualib/io/luv.lua\n', c.stdout)
  end)

  it('loads sources from LCLUSTER_LUALIB subfolders', function()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    assert.are.equal(0, os.execute('cp -r lualib ' .. dir .. '/src'))
    local c = lctest.spawn(FIX .. 'io_embedded.lua', {}, { env = { LCLUSTER_LUALIB = dir .. '/src' } })
    assert.are.equal(0, c:waitExit())
    assert.are.equal(ALL .. '@' .. dir .. '/src/io/luv.lua\n', c.stdout)
  end)

  it('fails the build when two files share a basename', function()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    assert.are.equal(0, os.execute('mkdir -p ' .. dir .. '/a ' .. dir .. '/b'))
    lctest.writeFile(dir .. '/a/dup.lua', 'return 1')
    lctest.writeFile(dir .. '/b/dup.lua', 'return 2')
    local cmd = ('luajit deps/embed.lua %s/out.c %s %s/a/dup.lua %s/b/dup.lua 2>%s/err'):format(dir, dir, dir, dir, dir)
    assert.are_not.equal(0, os.execute(cmd))
    local f = assert(io.open(dir .. '/err'))
    local err = f:read('*a')
    f:close()
    assert.matches('lualib/a/dup.lua and lualib/b/dup.lua both define module "dup"', err, 1, true)
  end)
end)
