-- The agent process and messages relayed by the master between workers, the agent and the
-- master: real processes, counted deliveries.
local lctest = require('lctest')

local FIX = 'spec/fixtures/'

local function count(s, pattern)
  local _, n = s:gsub(pattern, '')
  return n
end

describe('the agent (lcluster -w N --agent)', function()
  after_each(lctest.cleanup)

  it('starts and is ready before any worker, and is stopped last', function()
    local app = lctest.spawn(FIX .. 'msg_app.lua', {}, { flags = { '-w', '2', '--agent', FIX .. 'msg_agent.lua' } })
    app:waitOutput('worker up %d+.-worker up %d+')
    local agentAt = app.stdout:find('agent up pid')
    local workerAt = app.stdout:find('worker up')
    assert.is_truthy(agentAt)
    assert.is_true(agentAt < workerAt)
    app:waitOutput('started 2 workers', 5000, 'stderr') -- stderr is another pipe: wait for it
    assert.is_true(app.stderr:find('is ready') < app.stderr:find('started 2 workers'))
    assert.matches('isAgent true', app.stdout, 1, true)
    app:kill('SIGTERM')
    assert.are.equal(0, app:waitExit())
    local lastWorker = 0
    for pos in app.stderr:gmatch('()worker %d+ %(pid %d+, slot %d%) exited') do
      lastWorker = pos
    end
    local agentStopped = app.stderr:find('agent %(pid %d+%) stopped')
    assert.is_truthy(agentStopped)
    assert.is_true(lastWorker > 0 and agentStopped > lastWorker)
  end)

  it('is respawned when it dies', function()
    local app = lctest.spawn(FIX .. 'msg_app.lua', {}, { flags = { '-w', '1', '--agent', FIX .. 'msg_agent.lua' } })
    local pid = tonumber(app:waitOutput('agent up pid (%d+)'))
    app:waitOutput('worker up')
    require('_core').kill(pid, 9)
    app:waitOutput('the agent %(pid ' .. pid .. '%) exited with signal SIGKILL', 5000, 'stderr')
    local newPid = tonumber(app:waitOutput('agent up pid %d+.-agent up pid (%d+)'))
    assert.are_not.equal(pid, newPid)
    -- Only one worker was ever started: the agent's respawn does not start workers again.
    assert.are.equal(1, count(app.stdout, 'worker up'))
  end)

  it('answers a worker that sends to it, and the reply says where it came from', function()
    local app = lctest.spawn(FIX .. 'msg_app.lua', {}, { flags = { '-w', '2', '--agent', FIX .. 'msg_agent.lua' } })
    local a = app:waitOutput('worker (%d+) got {"pong":%d+} from agent')
    app:waitOutput('agent got {"ping":' .. a .. '} from ' .. a)
  end)
end)

describe('messages between processes', function()
  after_each(lctest.cleanup)

  it('sendTo master, process.broadcast and cluster.broadcast reach each process once', function()
    local app = lctest.spawn(FIX .. 'msg_master.lua', { FIX .. 'msg_agent.lua' })
    app:waitOutput('agent ready')
    -- cluster.broadcast: every worker and the agent, from the master.
    lctest.waitFor(function()
      return count(app.stdout, 'got {"everyone":true} from master') == 4
    end, 5000, 'the broadcast to reach 3 workers and the agent')
    -- process.broadcast from worker 2: the other workers and the agent, not worker 2.
    lctest.waitFor(function()
      return count(app.stdout, 'got {"broadcast_from":2} from 2') == 3
    end, 5000, 'the worker broadcast')
    assert.are.equal(0, count(app.stdout, 'worker 2 got {"broadcast_from":2}'))
    -- sendTo('master') with the sender's id.
    for id = 2, 4 do
      app:waitOutput('master got {"hello":' .. id .. '} from ' .. id)
    end
    lctest.turn(100)
    assert.are.equal(4, count(app.stdout, 'got {"everyone":true}'))
    assert.are.equal(3, count(app.stdout, 'got {"broadcast_from":2}'))
  end)

  it('keeps the agent out of cluster.workers and cluster events, and stops it last', function()
    local app = lctest.spawn(FIX .. 'msg_master.lua', { FIX .. 'msg_agent.lua' })
    lctest.waitFor(function()
      return count(app.stdout, 'worker up') == 3
    end, 5000, 'three workers')
    app:kill('SIGUSR2')
    app:waitOutput('all disconnected; agent alive: false')
    assert.are.equal(3, count(app.stdout, 'cluster exit event'))
    local agentExit = app.stdout:find('agent exited with')
    local lastWorkerExit = 0
    for pos in app.stdout:gmatch('()cluster exit event') do
      lastWorkerExit = pos
    end
    assert.is_true(agentExit > lastWorkerExit)
    assert.are.equal(0, app:waitExit())
  end)

  it('rejects bad targets and unserializable messages with clear errors', function()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    local script = lctest.writeFile(dir .. '/bad.lua', [[
local cluster = require('cluster')
if cluster.isMaster then
  print(select(2, pcall(process.sendTo, 'nobody', {})))
  print(select(2, pcall(process.sendTo, 1, { f = print })))
  print(tostring(process.sendTo(99, { x = 1 })))
end
]])
    local app = lctest.spawn(script)
    assert.are.equal(0, app:waitExit())
    assert.matches("ERR_INVALID_ARG_VALUE: target must be a worker id, 'agent' or 'master'", app.stdout, 1, true)
    assert.matches('ERR_INVALID_ARG_TYPE: cannot send the message: msg.f is a function', app.stdout, 1, true)
    assert.matches('false', app.stdout, 1, true)
  end)

  -- The message is encoded once, inside its frame to the master (one nesting level more
  -- than the user's message): the limits and the errors are still the user's message's.
  it('sendTo and broadcast keep the nesting limit and name the caller line, from master and worker', function()
    local dir = lctest.tmpdir()
    finally(function()
      lctest.rmrf(dir)
    end)
    local script = lctest.writeFile(dir .. '/limits.lua', [[
local cluster = require('cluster')
local function nest(n) local t = {} local r = t for _ = 2, n do local c = {} t[1] = c t = c end return r end
local function depth(t) local d = 0 while type(t) == 'table' do d = d + 1 t = t[1] end return d end
if cluster.isMaster then
  local w = cluster.fork()
  process.on('message', function(m, _, from)
    print('master got ' .. depth(m) .. ' from ' .. from)
  end)
  w:on('online', function()
    print(select(2, pcall(function() process.sendTo(w.id, { f = print }) end)))
    print(select(2, pcall(function() process.sendTo(w.id, nest(1001)) end)))
    print('sent ' .. tostring(process.sendTo(w.id, nest(1000))))
  end)
else
  process.on('message', function(m, _, from)
    print('worker got ' .. depth(m) .. ' from ' .. from)
    print(select(2, pcall(function() process.sendTo('master', { f = print }) end)))
    print(select(2, pcall(function() process.broadcast(nest(1001)) end)))
    print(select(2, pcall(function() process.broadcast() end)))
    print('sent back ' .. tostring(process.sendTo('master', nest(1000))))
    cluster.worker:disconnect()
  end)
end
]])
    local app = lctest.spawn(script)
    app:waitExit()
    local out = app.stdout
    assert.matches('limits.lua:10: ERR_INVALID_ARG_TYPE: cannot send the message: msg.f is a function', out, 1, true)
    assert.matches('limits.lua:11: ERR_INVALID_ARG_TYPE: cannot send the message: msg is nested deeper', out, 1, true)
    assert.matches('sent true', out, 1, true)
    assert.matches('worker got 1000 from master', out, 1, true)
    assert.matches('limits.lua:17: ERR_INVALID_ARG_TYPE: cannot send the message: msg.f is a function', out, 1, true)
    assert.matches('limits.lua:18: ERR_INVALID_ARG_TYPE: cannot send the message: msg is nested deeper', out, 1, true)
    assert.matches('limits.lua:19: ERR_MISSING_ARGS: the message to send is nil', out, 1, true)
    assert.matches('sent back true', out, 1, true)
    assert.matches('master got 1000 from 1', out, 1, true)
  end)
end)
