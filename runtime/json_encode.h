// json_encode.h: the fast path of cjson.encode (runtime/json_encode.c).
#ifndef LC_JSON_ENCODE_H
#define LC_JSON_ENCODE_H

#include <stddef.h>

#include <lua.h>

// Installs the fast encode on the lua-cjson module table on top of the stack (left there):
// wraps its encode, its encode_sparse_array, encode_max_depth and encode_number_precision
// setters, and its new (whose instances get the same). safe: the table is cjson.safe's.
void lc_json_encode_install(lua_State *L, int safe);

// An encoded message handed to the IPC channel without a Lua string (json_encode.c, "Encoded
// messages for the IPC channel"): freed when its last reference goes.
struct lc_json_buf {
  size_t refs;
  size_t len;
  size_t size; // of the allocation (lc_bigalloc_realloc wants it back)
  char data[];
};
#define LC_JSON_BLOB_MIN (64 * 1024) // smaller messages stay strings

// core.ipc_blobs(encode): that instance's encode returns blobs for large outputs.
int lc_json_ipc_blobs(lua_State *L);
// The buffer of the blob at idx (NULL if released); *is_blob says whether it is one.
struct lc_json_buf *lc_json_blob(lua_State *L, int idx, int *is_blob);
void lc_json_buf_ref(struct lc_json_buf *b);
void lc_json_buf_unref(struct lc_json_buf *b);

#endif
