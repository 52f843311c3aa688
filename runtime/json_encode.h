// json_encode.h: the fast path of cjson.encode (runtime/json_encode.c).
#ifndef LC_JSON_ENCODE_H
#define LC_JSON_ENCODE_H

#include <lua.h>

// Installs the fast encode on the lua-cjson module table on top of the stack (left there):
// wraps its encode, its encode_sparse_array, encode_max_depth and encode_number_precision
// setters, and its new (whose instances get the same). safe: the table is cjson.safe's.
void lc_json_encode_install(lua_State *L, int safe);

#endif
