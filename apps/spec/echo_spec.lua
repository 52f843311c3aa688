-- An example of testing your own app with `lcluster test apps/spec`: the app runs as a real
-- cluster (lcluster -w 2), the spec talks to it over loopback with the runtime's own net
-- module, and lctest stops everything afterwards.
local lctest = require('lctest')
local net = require('net')

-- Sends lines on a new connection; returns the reply once `n` lines came back.
local function ask(port, lines, n)
  local reply, closed = '', false
  local sock = net.connect(port, '127.0.0.1')
  sock:on('data', function(d)
    reply = reply .. d
  end)
  sock:on('close', function()
    closed = true
  end)
  sock:write(table.concat(lines, '\n') .. '\n')
  lctest.waitFor(function()
    local _, count = reply:gsub('\n', '')
    return count >= n
  end, 3000, n .. ' echoed lines')
  sock:finish()
  lctest.waitFor(function()
    return closed
  end, 3000, 'the connection to close')
  return reply
end

describe('apps/echo.lua', function()
  local app, port

  before_each(function()
    port = lctest.freePort()
    app = lctest.spawn('apps/echo.lua', { port }, { flags = { '-w', '2' } })
    -- Both workers are up when each has printed its line.
    app:waitOutput('echo listening on %d+.-echo listening on %d+')
  end)

  after_each(lctest.cleanup)

  it('echoes every line, prefixed with the worker', function()
    local reply = ask(port, { 'hello', 'world' }, 2)
    local pid, first = reply:match('^%[(%d+)%] ([^\n]*)\n')
    assert.are.equal('hello', first)
    assert.matches('%[' .. pid .. '%] world\n', reply)
  end)

  it('spreads connections over both workers', function()
    local seen = {}
    for i = 1, 6 do
      local pid = ask(port, { 'ping ' .. i }, 1):match('^%[(%d+)%]')
      seen[pid] = true
    end
    local workers = 0
    for _ in pairs(seen) do
      workers = workers + 1
    end
    assert.are.equal(2, workers)
  end)
end)
