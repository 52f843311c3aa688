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
end)
