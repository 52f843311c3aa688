-- cjson_orig_load.lua (a helper of this project's specs): load(symbol) opens Debian's own
-- lua-cjson library (cjson.so, found on package.cpath: Debian puts it in the architecture's
-- lib/<triplet>/lua/5.1) with that luaopen_ function, beside the binary's built-in module;
-- nil when it is not installed (lua-cjson-dev depends on it).
local path = package.searchpath('cjson', package.cpath)
return function(symbol)
  if not path then
    return nil
  end
  return assert(package.loadlib(path, symbol))()
end
