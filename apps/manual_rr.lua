-- manual_rr.lua: seed 000's hand-made round-robin in Lua. The master listens itself, accepts
-- each connection paused (pauseOnConnect, so no byte is read in the master) and sends the
-- socket to the next worker in turn with worker:send(msg, socket); the worker hands it to an
-- HTTP server that never listens, which answers on it.
--   lcluster apps/manual_rr.lua [port] [workers]
local cluster = require('cluster')
local net = require('net')
local http = require('http')

local port = tonumber(arg[1]) or 3000

if cluster.isMaster then
  local workers = {}
  for i = 1, tonumber(arg[2]) or #os.cpus() do
    workers[i] = cluster.fork()
  end
  local nextWorker = 0
  local server = net.createServer({ pauseOnConnect = true }, function(socket)
    nextWorker = nextWorker % #workers + 1
    -- The master's copy of the socket is closed once it is handed to the channel.
    workers[nextWorker]:send('conn', socket)
  end)
  server:listen(port, '127.0.0.1', function()
    print(('master %d: server listening on port %d'):format(process.pid, server:address().port))
  end)
  local function stop()
    for _, w in ipairs(workers) do
      w:kill()
    end
    process.exit(0)
  end
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
else
  print(('worker pid %d'):format(process.pid))
  local body = 'hello Lua from ' .. process.pid .. '\n'
  local app = http.createServer(function(_, res)
    res:setHeader('Content-Length', #body)
    res:writeHead(200)
    res:finish(body)
  end)
  process.on('message', function(msg, socket)
    if msg == 'conn' and socket then
      app:emit('connection', socket)
    end
  end)
end
