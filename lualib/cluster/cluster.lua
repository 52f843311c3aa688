-- cluster.lua: Node's cluster module for lcluster (API.md, `cluster`). The same script runs
-- in the master and in each worker; a worker is a process started by cluster.fork, marked by
-- LCLUSTER_WORKER_ID in its environment. The sides live in _cluster_primary.lua and
-- _cluster_worker.lua; the channel and its codec in _cluster_ipc.lua and runtime/ipc.c.
local events = require('events')

local cluster = events.bind({})

-- Scheduling policies (values as in Node). The master's hand-off of connections reads
-- cluster.schedulingPolicy; LCLUSTER_SCHED_POLICY=none|rr sets the default.
cluster.SCHED_NONE = 1
cluster.SCHED_RR = 2
local policy = os.getenv('LCLUSTER_SCHED_POLICY')
cluster.schedulingPolicy = policy == 'none' and cluster.SCHED_NONE or cluster.SCHED_RR

-- Handle types that can travel with a message (net and dgram register theirs).
cluster._registerHandleType = require('_cluster_ipc').registerHandleType

if os.getenv('LCLUSTER_WORKER_ID') then
  require('_cluster_worker')(cluster)
  require('_cluster_shared').worker(cluster)
  require('_cluster_handles')(cluster)
  require('_worker_lifecycle')(cluster)
  require('_cluster_messaging').worker(cluster)
  require('_metrics').worker(cluster)
else
  require('_cluster_primary')(cluster)
  require('_cluster_shared').primary(cluster)
  require('_cluster_handles')(cluster)
  require('_cluster_messaging').primary(cluster)
  require('_metrics').primary(cluster)
  function cluster.listenControl(opts, fn)
    return require('_control').listen(cluster, opts, fn)
  end
  require('_lifecycle').install(cluster)
  require('_watchdog').install(cluster)
end

-- Dot calls (`w.send(msg)`) raise ERR_INVALID_THIS at the caller (_class.lua). Last, once
-- every part has added its methods.
local class = require('_class')
if cluster.Worker then
  class.guard(cluster.Worker, 'worker', { emit = true })
end
if cluster.worker then
  class.guardObject(cluster.worker, 'cluster.worker', { 'send', 'isConnected', 'isDead', 'disconnect',
    'kill', 'destroy', 'on', 'once', 'off', 'listenerCount', 'listeners', 'addListener',
    'removeListener', 'removeAllListeners' })
end

return cluster
