-- dns.lua: name resolution through the system resolver (Node's dns.lookup), run on libuv's
-- thread pool so the loop never blocks.
local core = require('_core')
local net = require('net')

local dns = {}

local families = { [0] = 0, [4] = 4, [6] = 6, IPv4 = 4, IPv6 = 6 }

-- lookup(hostname [, options | family], fn(err, address, family)); options: family (0, 4, 6),
-- all (fn(err, {{address=, family=}, ...})). family in the answer is 4 or 6, as Node's.
function dns.lookup(hostname, options, fn)
  if type(options) == 'function' then
    options, fn = nil, options
  end
  if type(hostname) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: hostname must be a string, got ' .. type(hostname), 2)
  end
  if type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: callback must be a function', 2)
  end
  local family, all = 0, false
  if type(options) == 'table' then
    family, all = options.family or 0, options.all == true
  elseif options ~= nil then
    family = options
  end
  local fam = families[family]
  if fam == nil then
    error('ERR_INVALID_ARG_VALUE: family must be 0, 4 or 6, got ' .. tostring(family), 2)
  end
  local ok, err, code = core.getaddrinfo(hostname, nil, fam ~= 0 and fam or nil, function(err2, list, code2)
    if err2 ~= nil or #list == 0 then
      return fn(net._resolveError(err2, code2 or 'EAI_NONAME', hostname))
    end
    if all then
      local out = {}
      for i, a in ipairs(list) do
        out[i] = { address = a.address, family = a.family == 'IPv6' and 6 or 4 }
      end
      return fn(nil, out)
    end
    return fn(nil, list[1].address, list[1].family == 'IPv6' and 6 or 4)
  end)
  if not ok then
    error(net._resolveError(err, code, hostname).message, 2)
  end
end

return dns
