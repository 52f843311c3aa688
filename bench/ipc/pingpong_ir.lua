-- bench/ipc/pingpong_ir.lua: `count` IPC round trips of one 16-byte message between the
-- master and a worker, ending gracefully (disconnect) so callgrind can write both processes'
-- counts. Run by bench/ipc/ir.
local cluster = require('cluster')
local count = tonumber(arg[1])

if cluster.isMaster then
  local w = cluster.fork()
  local n = 0
  w:on('online', function()
    w:send('0123456789abcdef')
  end)
  w:on('message', function(m)
    n = n + 1
    if n == count then
      return w:disconnect()
    end
    w:send(m)
  end)
else
  process.on('message', function(m)
    process.send(m)
  end)
end
