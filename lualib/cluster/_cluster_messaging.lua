-- _cluster_messaging.lua: the agent process and messages between any two processes of a
-- cluster, relayed by the master (seed 000's master/agent/worker model, Egg.js style).
--
--   cluster.forkAgent(script [, env]) master: starts the agent (no port; respawned if it
--                                     dies; stopped last by cluster.disconnect)
--   cluster.agent                     master: the agent's worker object (events stay on it)
--   cluster.broadcast(msg)            master: to every worker and the agent
--   process.sendTo(target, msg)       any process: target = worker id | 'agent' | 'master'
--   process.broadcast(msg)            worker/agent: to every other worker and the agent
--   process.on('message', fn(msg, handle, from))  from = 'master', a worker id or 'agent'
-- The agent tells the master it is ready when its main chunk has run (or, when it sets
-- process.deferReady = true, when it calls process.ready()); the master then emits
-- cluster 'agentReady'(agent).
local ipc = require('_cluster_ipc')

local M = {}

local function checkTarget(target, level)
  if target ~= 'agent' and target ~= 'master' and (type(target) ~= 'number' or target % 1 ~= 0) then
    error(("ERR_INVALID_ARG_VALUE: target must be a worker id, 'agent' or 'master', got %s"):format(
      tostring(target)), level + 1)
  end
end

function M.primary(cluster)
  local process = require('process')
  local internal = cluster._internal
  local agentScript, agentEnv, agentFails = nil, nil, 0

  local function fromOf(w)
    return w.isAgent and 'agent' or w.id
  end

  local function targetOf(target)
    if target == 'agent' then
      return cluster.agent
    end
    return cluster.workers[target]
  end

  -- The channel of a live worker or agent `to`, or nil.
  local function channelOf(to)
    local w = targetOf(to)
    if w and not w:isDead() then
      return w._channel
    end
  end

  -- Delivers msg to one process on behalf of `from` ('master', a worker id or 'agent').
  local function relay(to, msg, from)
    if to == 'master' then
      process.emit('message', msg, nil, from)
      return true
    end
    local ch = channelOf(to)
    return ch ~= nil and ch:sendInternal({ cmd = 'relay', from = from, msg = msg }) == true
  end

  function process.sendTo(target, msg)
    checkTarget(target, 2)
    if target == 'master' then
      ipc.release(ipc.encode(msg, 3)) -- raises what sending it would
      return relay(target, msg, 'master')
    end
    -- Encoded once, in its relay frame (raising what sending it would).
    local body = ipc.encodeWrapped({ cmd = 'relay', from = 'master', msg = msg }, msg, 3)
    local ch = channelOf(target)
    local ok = ch ~= nil and ch:send(ipc.KIND_INTERNAL, body) == true
    ipc.release(body)
    return ok
  end

  internal.sendTo = function(w, m)
    if m.to == 'master' then
      -- Also the ordinary 'message' events, so a master that only listens on cluster hears it.
      cluster._emitBoth(w, 'message', m.msg)
    end
    relay(m.to, m.msg, fromOf(w))
  end

  internal.broadcast = function(w, m)
    for _, other in pairs(cluster.workers) do
      if other ~= w then
        relay(other.id, m.msg, fromOf(w))
      end
    end
    if cluster.agent and cluster.agent ~= w then
      relay('agent', m.msg, fromOf(w))
    end
  end

  local workerBroadcast = cluster.broadcast
  function cluster.broadcast(msg)
    workerBroadcast(msg, 3) -- a message JSON cannot carry raises at our caller's line
    if cluster.agent and cluster.agent._channel then
      cluster.agent:send(msg)
    end
  end

  local stopping = false
  local function startAgent()
    local a = cluster._fork(agentEnv, { exec = agentScript })
    cluster.agent = a
    a:on('ready', function()
      a._ready = true
      cluster.emit('agentReady', a)
    end)
    a:on('exit', function(code, signal)
      if cluster.agent ~= a then
        return
      end
      if stopping or a.exitedAfterDisconnect then
        cluster.agent = nil
        return
      end
      agentFails = a._ready and 0 or agentFails + 1
      local delay = agentFails > 0 and math.min(100 * 2 ^ (agentFails - 1), 30000) or 0
      require('_lifecycle').log(('the agent (pid %d) exited with %s; restarting in %d ms'):format(
        a.process.pid, signal and ('signal ' .. signal) or ('code ' .. tostring(code)), delay))
      setTimeout(function()
        if not stopping and cluster.agent == a then
          startAgent()
        end
      end, delay)
    end)
    return a
  end

  function cluster.forkAgent(script, env)
    if type(script) ~= 'string' then
      error('ERR_INVALID_ARG_TYPE: forkAgent needs the agent script path', 2)
    end
    if cluster.agent then
      error('ERR_AGENT_RUNNING: the agent is already running', 2)
    end
    agentScript, agentEnv, stopping = script, env, false
    return startAgent()
  end

  -- cluster.disconnect stops the agent last, after every worker has exited.
  local disconnect = cluster.disconnect
  function cluster.disconnect(fn)
    if fn ~= nil and type(fn) ~= 'function' then
      error('ERR_INVALID_ARG_TYPE: cluster.disconnect: the callback must be a function, got ' .. type(fn), 2)
    end
    disconnect(function()
      local a = cluster.agent
      if a and not a:isDead() then
        stopping = true
        a:once('exit', function()
          if fn then
            setImmediate(fn)
          end
        end)
        a:disconnect()
      elseif fn then
        fn()
      end
    end)
  end
  function cluster._stopAgent()
    stopping = true
  end

  -- The built-in master's reload, after the workers: a new agent, ready before the old one
  -- stops (reason 'reload'); when the new one cannot start, the old one keeps running.
  -- cb(err).
  function cluster._reloadAgent(readyTimeout, killTimeout, cb)
    local old = cluster.agent
    local lifecycle = require('_lifecycle')
    local new = startAgent()
    lifecycle.whenReady(new, readyTimeout, function(err)
      if err then
        lifecycle.log(('agent reload aborted: the new agent %s; keeping the old one'):format(err))
        cluster.agent = old
        if not new:isDead() then
          lifecycle.stopWorker(new, killTimeout, nil, nil, 'stop')
        end
        return cb(err)
      end
      lifecycle.log(('agent (pid %d) replaced by pid %d'):format(old.process.pid, new.process.pid))
      lifecycle.stopWorker(old, killTimeout, function()
        cb(nil)
      end, nil, 'reload')
    end)
  end
end

function M.worker(cluster)
  local process = require('process')
  local internal = cluster._internal
  cluster.isAgent = process.env.LCLUSTER_AGENT == '1'
  process.env.LCLUSTER_AGENT = nil

  internal.relay = function(m)
    cluster._deliverUser(m.msg, nil, m.from)
  end

  -- Under `lcluster -w` without --master, nothing in the master reads messages sent to it.
  local noMaster = process.env.LCLUSTER_NO_MASTER == '1'
  process.env.LCLUSTER_NO_MASTER = nil
  local warned = false

  -- The message is encoded once, in its frame to the master, raising what sending it would.
  function process.sendTo(target, msg)
    checkTarget(target, 2)
    local body = ipc.encodeWrapped({ cmd = 'sendTo', to = target, msg = msg }, msg, 3)
    if target == 'master' and noMaster then
      ipc.release(body)
      if not warned then
        warned = true
        process._writeErr(("lcluster: process.sendTo('master', ...) under lcluster -w: the built-in master has no"
          .. ' code to receive it (start it with --master FILE); the message is dropped\n'))
      end
      return false
    end
    return cluster._sendEncoded(body)
  end

  function process.broadcast(msg)
    return cluster._sendEncoded(ipc.encodeWrapped({ cmd = 'broadcast', msg = msg }, msg, 3))
  end

  if cluster.isAgent then
    -- Ready once the main chunk has run, unless the agent defers it to process.ready().
    setImmediate(function()
      if not process.deferReady then
        process.ready()
      end
    end)
  end
end

return M
