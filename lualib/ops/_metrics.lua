-- _metrics.lua: the numbers behind `lcluster status`, GET /metrics and --max-memory.
-- Workers keep their counters in C (runtime/metrics.h) and send them to the master on a
-- timer over the existing channel, never per request. The master reads RSS and CPU time of
-- every process from /proc, keeps the last report of each worker, and formats the
-- Prometheus text exposition and the status table.
local ffi = require('ffi')
local core = require('_core')

local M = {}

ffi.cdef([[
typedef struct {
  uint64_t requests, conns_accepted;
  int64_t conns_open;
  uint64_t bytes_in, bytes_out, handoffs, ipc_in, ipc_out;
} lc_metrics_t;
long sysconf(int name);
]])

-- The C struct itself: net.lua and _cluster_shared.lua bump fields of it from Lua (a JIT
-- trace compiles that to one add to memory).
M.c = ffi.cast('lc_metrics_t *', core.metrics)

local FIELDS = { 'requests', 'conns_accepted', 'conns_open', 'bytes_in', 'bytes_out', 'handoffs',
  'ipc_in', 'ipc_out' }
M.FIELDS = FIELDS

-- A snapshot of this process's counters as a plain table of numbers.
function M.snapshot()
  local c, t = M.c, {}
  for _, f in ipairs(FIELDS) do
    t[f] = tonumber(c[f])
  end
  return t
end

-- Linux: _SC_CLK_TCK is 2, _SC_PAGESIZE 30.
local CLK_TCK = tonumber(ffi.C.sysconf(2))
local PAGE = tonumber(ffi.C.sysconf(30))

local function readFile(path)
  local f = io.open(path, 'r')
  if not f then
    return nil
  end
  local s = f:read('*a')
  f:close()
  return s
end

-- The RSS (bytes) and CPU time (seconds, user + system) of a live process, from /proc; nil
-- when it is gone.
function M.procStats(pid)
  local statm = readFile('/proc/' .. pid .. '/statm')
  local stat = readFile('/proc/' .. pid .. '/stat')
  if not statm or not stat then
    return nil
  end
  local rss = tonumber(statm:match('^%d+%s+(%d+)') or 0) * PAGE
  -- Fields after the command name (which may hold spaces or parentheses): state is field 3,
  -- utime and stime are 14 and 15.
  local rest = stat:match('^.*%)%s+(.*)$') or ''
  local f, i = {}, 3
  for v in rest:gmatch('%S+') do
    f[i] = v
    i = i + 1
    if i > 15 then
      break
    end
  end
  local cpu = ((tonumber(f[14]) or 0) + (tonumber(f[15]) or 0)) / CLK_TCK
  return rss, cpu
end

-- Worker side: with LCLUSTER_METRICS_MS set (the built-in master sets it), report the
-- counters and the event-loop lag every that many ms. The lag is how late an unref'd
-- interval fires: the longest delay seen since the last report.
function M.worker(cluster)
  local every = tonumber(os.getenv('LCLUSTER_METRICS_MS') or '')
  if not every or every <= 0 then
    return
  end
  local tick = math.min(every, 250)
  local last = process.hrtime()
  local maxLag, sinceReport = 0, 0
  local t = setInterval(function()
    local now = process.hrtime()
    local lag = (now - last) / 1e6 - tick
    last = now
    if lag > maxLag then
      maxLag = lag
    end
    sinceReport = sinceReport + tick
    if sinceReport >= every then
      sinceReport = 0
      local msg = M.snapshot()
      msg.cmd = 'metrics'
      msg.lag = maxLag > 0 and maxLag / 1000 or 0
      maxLag = 0
      cluster._sendInternal(msg)
    end
  end, tick)
  t:unref()
end

-- Master side: keeps each worker's last report on worker._metrics.
function M.primary(cluster)
  cluster._internal.metrics = function(worker, msg)
    msg.cmd = nil
    worker._metrics = msg
  end
end

-- Prometheus text exposition (version 0.0.4). families: list of {name, type, help,
-- samples = list of {labels = {k=v}, value}}.
local function escapeLabel(v)
  return (tostring(v):gsub('\\', '\\\\'):gsub('\n', '\\n'):gsub('"', '\\"'))
end

local function fmtValue(v)
  if v ~= v then
    return 'NaN'
  elseif v == math.huge then
    return '+Inf'
  elseif v == -math.huge then
    return '-Inf'
  elseif v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return ('%d'):format(v)
  end
  return ('%.17g'):format(v)
end

function M.exposition(families)
  local out = {}
  for _, fam in ipairs(families) do
    out[#out + 1] = ('# HELP %s %s\n# TYPE %s %s\n'):format(fam.name, fam.help, fam.name, fam.type)
    for _, s in ipairs(fam.samples) do
      local keys = {}
      for k in pairs(s.labels or {}) do
        keys[#keys + 1] = k
      end
      table.sort(keys)
      local parts = {}
      for _, k in ipairs(keys) do
        parts[#parts + 1] = ('%s="%s"'):format(k, escapeLabel(s.labels[k]))
      end
      local lbl = #parts > 0 and ('{' .. table.concat(parts, ',') .. '}') or ''
      out[#out + 1] = ('%s%s %s\n'):format(fam.name, lbl, fmtValue(s.value))
    end
  end
  return table.concat(out)
end

return M
