-- _os.lua: Node's `os` functions added to Lua's standard `os` table (which keeps time, date,
-- getenv, ...). Loaded on the first use of a name the standard table lacks (_main.lua sets
-- that up), so a script that never asks pays nothing; the facts come from luv.
local uv = require('luv')

return function(os)
  local function uname()
    return uv.os_uname()
  end

  function os.totalmem()
    return uv.get_total_memory()
  end

  function os.freemem()
    return uv.get_free_memory()
  end

  -- {1-minute, 5-minute, 15-minute} load averages.
  function os.loadavg()
    return { uv.loadavg() }
  end

  -- Seconds since boot.
  function os.uptime()
    return uv.uptime()
  end

  -- { [name] = { {address=, netmask=, family='IPv4'|'IPv6', mac=, internal=, cidr=, scopeid=}, ... } }
  function os.networkInterfaces()
    local out = {}
    for name, list in pairs(uv.interface_addresses()) do
      local addrs = {}
      for i, a in ipairs(list) do
        local family = a.family == 'inet6' and 'IPv6' or 'IPv4'
        local bits = 0
        if family == 'IPv4' then
          for octet in a.netmask:gmatch('%d+') do
            local n = tonumber(octet)
            while n > 0 do
              bits = bits + n % 2
              n = math.floor(n / 2)
            end
          end
        else
          for group in a.netmask:gmatch('[%x]+') do
            local n = tonumber(group, 16)
            while n > 0 do
              bits = bits + n % 2
              n = math.floor(n / 2)
            end
          end
        end
        addrs[i] = {
          address = a.ip,
          netmask = a.netmask,
          family = family,
          mac = (a.mac or ''):gsub('.', function(c)
            return ('%02x:'):format(c:byte())
          end):sub(1, -2),
          internal = a.internal,
          cidr = a.ip .. '/' .. bits,
          scopeid = family == 'IPv6' and (a.scopeid or 0) or nil,
        }
      end
      out[name] = addrs
    end
    return out
  end

  function os.tmpdir()
    return uv.os_tmpdir()
  end

  function os.homedir()
    return uv.os_homedir()
  end

  -- 'linux', as Node's process.platform.
  function os.platform()
    return uname().sysname:lower()
  end

  -- Node's names ('x64', 'arm64'), which are LuaJIT's too.
  function os.arch()
    return jit.arch
  end

  -- The kernel's name and release, as uname(2) gives them ('Linux', '6.1.0-...').
  function os.type()
    return uname().sysname
  end

  function os.release()
    return uname().release
  end

  os.EOL = '\n'
  return os
end
