-- User handle passing: worker:send(msg, handle) and process.send(msg, handle) with a net
-- socket, a net server or a dgram socket (lualib/cluster/_cluster_handles.lua), and seed 000's
-- hand-made round-robin (apps/manual_rr.lua). Real masters and workers, loopback clients.
local lctest = require('lctest')
local core = require('_core')
local dgram = require('dgram')

local waitFor = lctest.waitFor

-- Connects to 127.0.0.1:port, writes `send`, reads until the server ends.
local function fetch(port, send)
  local r = { done = false, text = '' }
  local h
  h = core.tcp(function(ev, a)
    if ev == 'connect' then
      if a then
        r.err, r.done = a, true
        return h:close()
      end
      if send then
        h:write(send)
      end
      h:read_start()
    elseif ev == 'data' then
      r.text = r.text .. a
    elseif ev == 'end' or ev == 'error' then
      r.err = ev == 'error' and a or nil
      r.done = true
      h:close()
    end
  end)
  assert(h:connect('127.0.0.1', port))
  waitFor(function()
    return r.done
  end, 8000, 'the answer from port ' .. port)
  assert(r.err == nil, tostring(r.err))
  return r.text
end

local function run(mode)
  local c = lctest.spawn('spec/fixtures/shared_handles.lua', { mode })
  local wpid = tonumber(c:waitOutput('M online (%d+)\n', 10000))
  return c, wpid
end

describe('handle passing', function()
  after_each(lctest.cleanup)

  it('a socket sent by the master arrives as a live socket in the worker; the master copy is closed', function()
    local c, wpid = run('socket-to-worker')
    local port = tonumber(c:waitOutput('M port (%d+)\n'))
    for i = 1, 3 do
      assert.are.equal(('worker %d read hello%d'):format(wpid, i), fetch(port, 'hello' .. i))
    end
    -- The master prints after each send; its output may still be on its way.
    c:waitOutput(('M sent destroyed=true\n.*'):rep(3))
    c:waitOutput(('W got conn true\n.*'):rep(3))
    assert.are.equal(3, select(2, c.stdout:gsub('W got conn true\n', '')))
    assert.are.equal(3, select(2, c.stdout:gsub('M sent destroyed=true\n', '')))
  end)

  it("a socket a worker sends reaches the master's 'message' as a live socket", function()
    local c = run('socket-to-master')
    local port = tonumber(c:waitOutput('W port (%d+)\n'))
    assert.are.equal(('master %d read ping'):format(c.pid), fetch(port, 'ping'))
    c:waitOutput('M got conn true\n')
    c:waitOutput('W sent destroyed=true\n')
  end)

  it('a server sent to a worker listens there and accepts', function()
    local c, wpid = run('server-to-worker')
    local port = tonumber(c:waitOutput('M port (%d+)\n'))
    c:waitOutput('W got server true\n')
    assert.are.equal(port, tonumber(c:waitOutput('W listening true (%d+)\n')))
    for _ = 1, 3 do
      assert.are.equal(('worker %d\n'):format(wpid), fetch(port))
    end
  end)

  it('a dgram socket sent to a worker is bound there and receives', function()
    local c = run('dgram-to-worker')
    local port = tonumber(c:waitOutput('M port (%d+)\n'))
    c:waitOutput('W got dgram true\n')
    local s = dgram.createSocket('udp4')
    s:send('over-there', port, '127.0.0.1')
    c:waitOutput('W dgram over%-there 127%.0%.0%.1\n')
    local closed = false
    s:close(function()
      closed = true
    end)
    waitFor(function()
      return closed
    end, 2000)
  end)

  it('refuses closed sockets, idle servers, unbound or closed dgram sockets and shared servers', function()
    local c = run('bad')
    c:waitOutput('M worker shared%-server')
    local out = {}
    for what, msg in c.stdout:gmatch('M try (%S+) ([^\n]*)\n') do
      out[what] = msg
    end
    out['shared-server'] = c.stdout:match('M worker shared%-server ([^\n]*)\n')
    local want = {
      ['closed-socket'] = 'ERR_SOCKET_CLOSED', ['idle-server'] = 'ERR_SERVER_NOT_RUNNING',
      ['unbound-dgram'] = 'ERR_SOCKET_DGRAM_NOT_RUNNING', ['closed-dgram'] = 'ERR_SOCKET_DGRAM_NOT_RUNNING',
      table = 'ERR_INVALID_HANDLE_TYPE', options = 'ERR_INVALID_ARG_TYPE',
      ['fraction-fd'] = 'ERR_INVALID_HANDLE_TYPE', ['negative-fd'] = 'ERR_INVALID_HANDLE_TYPE',
      ['shared-server'] = 'ERR_INVALID_HANDLE_TYPE',
    }
    for what, code in pairs(want) do
      assert.truthy(out[what], 'no line for ' .. what .. ' in\n' .. c.stdout .. c.stderr)
      assert.truthy(out[what]:find(code, 1, true), ('%s: %s (want %s)'):format(what, out[what], code))
    end
    assert.is_nil(c.stdout:find('M exit', 1, true), c.stdout)
  end)
end)

describe("seed 000's hand-made round-robin (apps/manual_rr.lua)", function()
  after_each(lctest.cleanup)

  it('the master accepts paused and sends each socket to the next worker, which answers HTTP', function()
    local port = lctest.freePort()
    local c = lctest.spawn('apps/manual_rr.lua', { port, 2 })
    c:waitOutput('server listening on port ' .. port .. '\n', 10000)
    local seen, order = {}, {}
    for i = 1, 6 do
      local text = fetch(port, 'GET /' .. i .. ' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
      assert.truthy(text:match('^HTTP/1%.1 200'), text)
      local pid = tonumber(text:match('hello Lua from (%d+)\n$'))
      assert(pid, text)
      seen[pid] = true
      order[i] = pid
    end
    local workers = lctest.childPids(c.pid)
    assert.are.equal(2, #workers)
    for _, w in ipairs(workers) do
      assert.is_true(seen[w], 'worker ' .. w .. ' served')
    end
    -- Round-robin: consecutive connections alternate between the two workers.
    for i = 2, 6 do
      assert.are_not.equal(order[i - 1], order[i])
    end
  end)
end)
