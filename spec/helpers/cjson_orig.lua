-- cjson_orig.lua (a helper of this project's specs): Debian's own lua-cjson module, loaded
-- beside the binary's built-in one, or nil when it is not installed (lua-cjson-dev depends
-- on it). Its fpconv_* and lua_* calls are its own (the binary exports neither our fpconv
-- nor the renamed table calls), so it is the original the json specs compare against.
return require('spec.helpers.cjson_orig_load')('luaopen_cjson')
