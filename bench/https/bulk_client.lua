-- bulk_client.lua: reads everything a TLS server sends and prints the rate and its own
-- peak RSS: lcluster bench/https/bulk_client.lua PORT CA_FILE
local tls = require('tls')
local port, caFile = tonumber(arg[1]), arg[2]
local f = assert(io.open(caFile))
local ca = f:read('*a')
f:close()
local got, peak = 0, 0
local t0 = process.hrtime()
local s = tls.connect({ host = 'localhost', port = port, ca = ca })
s:on('data', function(d)
  got = got + #d
  if got % (32 * 1024 * 1024) < #d then
    local rss = process.memoryUsage().rss
    if rss > peak then
      peak = rss
    end
  end
end)
s:on('error', function(e)
  io.stderr:write('bulk_client: ' .. tostring(e) .. '\n')
  process.exit(1)
end)
s:on('close', function()
  local secs = (process.hrtime() - t0) / 1e9
  print(('received %d bytes in %.2f s: %.0f MB/s, client peak rss %.1f MB'):format(got, secs,
    got / 1048576 / secs, peak / 1048576))
end)
