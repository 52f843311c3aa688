-- _worker_boot.lua: a process started by cluster.fork (LCLUSTER_WORKER_ID in its
-- environment) joins its master's IPC channel before the script runs.
if os.getenv('LCLUSTER_WORKER_ID') or os.getenv('LCLUSTER_AGENT') then
  require('cluster')
end
