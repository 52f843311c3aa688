-- sanitizer.lua (a helper of this project's specs): true when the running binary is the
-- ASan + UBSan build (libasan mapped), whose allocator adds redzones around every malloc'd
-- object and whose instrumented code is slower: specs that bound memory or compare costs
-- use it to pick their limits.
local f = io.open('/proc/self/maps')
local maps = f and f:read('*a') or ''
if f then
  f:close()
end
return maps:find('libasan', 1, true) ~= nil
