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

// lc_json_encode_to's output: `len` bytes at `data`, in the caller's region when in_dst, else
// in the encoder's buffer. Valid until lc_json_out_done (or, not in_dst, lc_json_out_take).
typedef struct {
  const char *data;
  size_t len;
  int in_dst;
} lc_json_out;

// Encodes the value at idx with the encode at stack index fn (a cjson instance's fast encode)
// into dst[0, cap) while it fits there (dst may be NULL), else into the encoder's buffer (the
// prefix copied once): 0 and *o, or -1 when declined (fn is not a fast encode, or the value is
// one it leaves to lua-cjson: the caller encodes it the usual way). The same bytes as that
// encode returns; no Lua runs once dst is written.
int lc_json_encode_to(lua_State *L, int fn, int idx, char *dst, size_t cap, lc_json_out *o);
// Ends the use of the output (the encoder may encode again).
void lc_json_out_done(void);
// Or: the output (not in_dst) as a counted buffer (refs 1), which the encoder gives up.
struct lc_json_buf *lc_json_out_take(void);

#endif
