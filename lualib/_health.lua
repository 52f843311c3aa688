-- _health.lua: `--metrics [HOST:]PORT` under -w, reduced to what load balancers need:
-- GET /health answers 200 while the cluster serves and 503 before its first workers are
-- ready and from the moment a graceful stop begins (through the --drain-delay), so a
-- balancer's health check takes the host out before any connection is refused. The full
-- operations endpoint (/metrics, /status) replaces this file; the /health answer stays.
local log = require('_lifecycle').log

local M = {}

-- serve(spec, healthy) -> server. spec: 'PORT' or 'HOST:PORT' ('[::1]:PORT' for IPv6);
-- healthy() -> boolean. Raises on a malformed spec; a listen error ends the master (1).
function M.serve(spec, healthy)
  local host, port = tostring(spec):match('^(.*):(%d+)$')
  if not host then
    host, port = '127.0.0.1', tostring(spec):match('^(%d+)$')
  end
  port = tonumber(port)
  if not port or port > 65535 then
    return nil, 'ERR_INVALID_ARG_VALUE: --metrics needs [HOST:]PORT, got ' .. tostring(spec)
  end
  host = host:gsub('^%[(.*)%]$', '%1')
  local http = require('http')
  local srv = http.createServer(function(req, res)
    local url = req.url:gsub('%?.*$', '')
    local status, body = 404, 'not found\n'
    if url == '/health' then
      if healthy() then
        status, body = 200, 'ok\n'
      else
        status, body = 503, 'unavailable\n'
      end
    end
    res:writeHead(status, { ['Content-Type'] = 'text/plain', ['Content-Length'] = #body,
      ['Cache-Control'] = 'no-store' })
    res:finish(req.method == 'HEAD' and '' or body)
  end)
  srv:on('error', function(err)
    log(('--metrics %s: %s'):format(spec, tostring(err)))
    process.exit(1)
  end)
  srv:listen(port, host ~= '' and host or '127.0.0.1')
  return srv
end

return M
