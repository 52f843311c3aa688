-- `lcluster test` for users' own apps: the example spec in apps/spec passes against
-- apps/echo.lua and fails against a broken copy of the app.
local lctest = require('lctest')

local function runSuite(dir)
  local c = lctest.spawn(nil, { 'test', 'apps/spec' }, { cwd = dir, env = { LCLUSTER_LUALIB = false } })
  local code = c:waitExit(20000)
  return code, c.stdout .. c.stderr
end

describe('lcluster test on an app in apps/', function()
  local dir

  before_each(function()
    dir = lctest.tmpdir()
    local copy = 'mkdir -p %s/apps/spec && cp apps/echo.lua %s/apps/ && cp apps/spec/echo_spec.lua %s/apps/spec/'
    assert.are.equal(0, os.execute(copy:format(dir, dir, dir)))
  end)

  after_each(function()
    lctest.cleanup()
    lctest.rmrf(dir)
  end)

  it('passes against the app as written', function()
    local code, out = runSuite(dir)
    assert.are.equal(0, code, out)
    assert.matches('2 successes / 0 failures', out, 1, true)
  end)

  it('fails when the app is broken', function()
    local path = dir .. '/apps/echo.lua'
    local f = assert(io.open(path))
    local src = f:read('*a')
    f:close()
    -- The broken version answers in upper case.
    src = src:gsub("socket:write%(%('%[%%d%] %%s\\n'%):format%(process.pid, line%)%)",
      "socket:write(('[%%d] %%s\\n'):format(process.pid, line:upper()))")
    assert.matches('line:upper', src, 1, true)
    lctest.writeFile(path, src)
    local code, out = runSuite(dir)
    assert.are.equal(1, code, out)
    assert.matches('1 failure', out, 1, true)
  end)
end)
