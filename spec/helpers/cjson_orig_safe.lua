-- cjson_orig_safe.lua (a helper of this project's specs): Debian's own cjson.safe, loaded
-- beside the binary's built-in one as spec/helpers/cjson_orig.lua loads cjson, or nil when it
-- is not installed.
local ORIG_PATH = '/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so'
local f = io.open(ORIG_PATH, 'rb')
if not f then
  return nil
end
f:close()
return assert(package.loadlib(ORIG_PATH, 'luaopen_cjson_safe'))()
