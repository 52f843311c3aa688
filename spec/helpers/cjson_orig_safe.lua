-- cjson_orig_safe.lua (a helper of this project's specs): Debian's own cjson.safe, loaded
-- beside the binary's built-in one as spec/helpers/cjson_orig.lua loads cjson, or nil when it
-- is not installed.
return require('spec.helpers.cjson_orig_load')('luaopen_cjson_safe')
