-- log_app.lua: a worker that prints N lines of 100 bytes as fast as it can, then "done N",
-- then idles: the log-throughput workload of bench/ops/run (lcluster -w 1 log_app.lua N).
local n = tonumber(arg[1]) or 200000
local line = ('%s'):format(('x'):rep(99))
for _ = 1, n do
  print(line)
end
print('done ' .. n)
process.ready()
local keep = setInterval(function() end, 60000)
process.on('disconnect', function()
  clearInterval(keep)
end)
