-- Raw IPC frames and ring bookkeeping for the fixtures that play a misbehaving peer or count
-- what a process holds (runtime/ipc_frame.h has the format).
local M = {}

-- n as `bytes` little-endian bytes.
function M.le(n, bytes)
  local t = {}
  for i = 1, bytes do
    t[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(t)
end

-- A frame header: body length (u32), kind, fd count, two reserved bytes.
function M.header(len, kind, nfds, reserved)
  return M.le(len, 4) .. string.char(kind, nfds or 0, reserved or 0, 0)
end

-- A whole frame without fds.
function M.frame(kind, body)
  return M.header(#body, kind) .. body
end

-- An LC_IPC_KIND_SHM frame's body: kind, op (0 REF, 1 ATTACH, 2 RESEND), 2 zero bytes, u32
-- len, u64 pos.
function M.shmref(kind, len, pos, op)
  return string.char(kind, op or 0, 0, 0) .. M.le(len, 4) .. M.le(pos, 8)
end

-- The rings' memfds this process holds open as fds now.
function M.memfds()
  local p = io.popen('ls -l /proc/' .. process.pid .. '/fd 2>/dev/null')
  local s = p:read('*a')
  p:close()
  local n = 0
  for _ in s:gmatch('memfd:lcluster%-ipc') do
    n = n + 1
  end
  return n
end

-- The rings this process maps now.
function M.mappings()
  local n = 0
  for line in io.lines('/proc/self/maps') do
    if line:find('memfd:lcluster-ipc', 1, true) then
      n = n + 1
    end
  end
  return n
end

return M
