-- luv.lua: require('luv') is Debian's lua-luv (runtime/luv.c) on the runtime's own loop,
-- with its callbacks entered through the runtime's one error path. Two things differ from
-- luv run on its own loop:
--   * the runtime runs the loop: uv.run() returns at once (the loop runs after the main
--     chunk, and libuv forbids running it from inside a callback); uv.loop_close() raises.
--   * a worker that was asked to stop (cluster.worker 'disconnect') unrefs every handle made
--     through luv, so they no longer hold its loop: the worker exits once lcluster's own work
--     (servers, in-flight requests, timers) is done. Handles are tracked in a weak table as
--     the new_* constructors and uv.spawn create them (a child process still running then
--     no longer holds the worker; it is not killed).
local uv = require('_luv')

local handles = setmetatable({}, { __mode = 'k' })
local stopping = false

for name, fn in pairs(uv) do
  if type(fn) == 'function' and (name == 'spawn' or name:match('^new_')) and name ~= 'new_thread'
    and name ~= 'new_work' then
    uv[name] = function(...)
      local h, err, code = fn(...)
      if h ~= nil then
        handles[h] = true
        if stopping then
          h:unref()
        end
      end
      return h, err, code
    end
  end
end

function uv.run()
  return false
end

function uv.loop_close()
  error('ERR_LOOP_OWNED: the loop belongs to the runtime and closes when the process exits', 2)
end

-- Unrefs every luv handle still open (the worker's stop sequence calls this).
function uv._unrefAll()
  stopping = true
  for h in pairs(handles) do
    if not h:is_closing() then
      h:unref()
    end
  end
end

local cluster = package.loaded.cluster
if cluster and cluster.worker then
  cluster.worker:on('disconnect', uv._unrefAll)
end

return uv
