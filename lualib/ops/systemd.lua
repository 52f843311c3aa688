-- systemd.lua: the public face of _systemd.lua, for script masters (the built-in master of
-- `lcluster -w` sends its notifications itself). docs/api.md, "Service managers".
local sd = require('_systemd')

local M = {}

-- notify(state) -> true when sent, false without NOTIFY_SOCKET, nil, err when the send
-- failed. state: "KEY=VALUE" lines, e.g. 'READY=1\nSTATUS=serving'.
function M.notify(state)
  if type(state) ~= 'string' or state == '' then
    error('ERR_INVALID_ARG_TYPE: notify needs a non-empty string such as "READY=1"', 2)
  end
  return sd.notify(state)
end

-- WATCHDOG_USEC when the service has a watchdog (the master pings it itself), else nil.
M.watchdogUsec = sd.watchdogUsec

-- The sockets inherited through socket activation: a list of {fd=, name=, type=, family=,
-- address=, port=, path=}. Shared servers take them by address and port or by fdName.
M.listeners = sd.listeners

return M
