-- cjson_orig.lua (a helper of this project's specs): Debian's own lua-cjson module, loaded
-- beside the binary's built-in one, or nil when it is not installed (lua-cjson-dev depends
-- on it). Its fpconv_* and lua_* calls are its own (the binary exports neither our fpconv
-- nor the renamed table calls), so it is the original the json specs compare against.
local ORIG_PATH = '/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so'
local f = io.open(ORIG_PATH, 'rb')
if not f then
  return nil
end
f:close()
return assert(package.loadlib(ORIG_PATH, 'luaopen_cjson'))()
