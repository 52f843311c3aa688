// json_encode.c: a fast path in front of lua-cjson 2.1.0's cjson.encode, byte-identical to it.
//
// lua-cjson (Debian's lua_cjson.o, not recompiled here) walks tables through the Lua C API
// (lua_next, lua_type, lua_tolstring, lua_settop per entry; an array is walked twice, once by
// lua_array_length to tell it from an object, then by lua_rawgeti) and appends its output
// through strbuf calls one piece at a time: ~61k instructions for bench/realistic's 1 KB
// answer. This encoder writes into one reusable buffer and has two ways to read a table:
//
// - The direct path (d_table, below): LuaJIT's tables read in place, as lj_tab_next reads
//   them (lua_next's order), once their layout has been checked on probe values. The
//   array/object decision is lua_array_length's, taken over the same keys in the same order;
//   an object is written in that order, an array from its array part. ~22k instructions for
//   that answer. A table whose positive integer keys sit in the hash part would need
//   lua-cjson's rawgeti order: the direct path declines and the value is encoded again by
//   the API path.
// - The API path (encode_table), through the Lua C API: one lua_next walk per table. Its
//   first key decides most tables: anything but a positive integer makes the table an
//   object for lua-cjson too (lua_array_length returns -1 at the first such key), so the
//   walk goes on writing the object. A positive integer starts an array speculatively:
//   while keys come in ascending order (an array part), each value is written as element k,
//   small gaps filled with nulls as lua-cjson's rawgeti loop would; a later key that is not
//   a positive integer makes it an object after all (the output since its '[' is dropped and
//   it is walked again, as lua-cjson does too); keys out of order stop the writing, and the
//   elements are written after the walk from lua_rawgeti 1..max.
// Both apply encode_sparse_array's rule (ratio, safe, convert) to the max and count
// lua-cjson computes.
//
// What neither handles goes to lua-cjson's own encode (kept as an upvalue) on the same argument,
// after this encoder's output is discarded: NaN and infinity (whatever
// encode_invalid_numbers says), a type JSON cannot carry (function, userdata, thread, a
// lightuserdata other than NULL), a key neither a string nor a number, a nesting deeper than
// encode_max_depth (a cycle ends there) or than DEPTH_MAX, an excessively sparse array that
// is not converted, a positive integer key above INT_MAX (lua-cjson stores it in an int),
// an output over OUT_MAX, or a re-entered encode (see busy). Every error message, and
// cjson.safe's nil, err, is therefore lua-cjson's own. spec/json_encode_spec.lua and
// fuzz/json_encode_fuzz.c compare the two encoders on generated values.
//
// Settings: the encoder needs an instance's encode_sparse_array, encode_max_depth and
// encode_number_precision. lua-cjson keeps them in a userdata its functions share; rather
// than rely on that struct's layout, the three setters are wrapped by a Lua function that
// marks the instance's copy stale and tail-calls the original (a tail call, so an argument
// error names the function exactly as it did), and the next encode reads the values back
// through the original setters called with no argument (which return them).
// encode_invalid_numbers and encode_keep_buffer do not change this encoder's output (the
// former only matters for NaN and infinity, always lua-cjson's), so they are left alone.
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "bigalloc.h"
#include "json_encode.h"
#include "lj_layout.h"

// lua-cjson's fpconv (runtime/fpconv.c): %.<precision>g, at most 32 bytes with the NUL.
int fpconv_g_fmt(char *str, double num, int precision);
#define NUMBER_ROOM 32

// Deeper nestings go to lua-cjson (whose own limit is encode_max_depth, up to INT_MAX): this
// encoder recurses in C and holds two Lua stack slots per level.
#define DEPTH_MAX 2000
// Output larger than this goes to lua-cjson (its strbuf counts in int).
#define OUT_MAX ((size_t)1 << 30)
// A speculative array fills at most this many holes before one emitted element; a larger gap
// waits for the rawgeti pass (which runs only if the table is still an array then).
#define GAP_MAX 16
// The buffer is kept between encodes up to this capacity, freed after a larger output.
#define KEEP_MAX (256 * 1024)

// An instance's settings as this encoder knows them (the userdata upvalue of its encode).
typedef struct {
  int stale; // a setter was called: read the values back before the next encode
  int safe;  // cjson.safe: lua-cjson's encode returns nil, err instead of raising
  int sparse_convert, sparse_ratio, sparse_safe;
  int max_depth;
  int precision;
  size_t blob_min; // 0, or outputs this long come back as blobs (lc_json_ipc_blobs)
} enc_cfg;

// Upvalues of the encode closure.
enum { UV_CFG = 1, UV_ORIG, UV_SPARSE, UV_DEPTH, UV_PRECISION };

// The output buffer, the process's: only the main Lua state has the built-in cjson.
// The bytes live after a struct lc_json_buf header, so that a large message's buffer can be
// handed to the IPC channel as it is (push_blob).
// While `ext` is set the output goes to a region the caller lent (lc_json_encode_to: the IPC
// channel's shared-memory ring) and the buffer waits in `saved`; an output that outgrows the
// region moves to a buffer (grow_ext) and goes on there.
static struct {
  char *p; // NULL, or the data[] of a struct lc_json_buf (lc_bigalloc_realloc), or the region
  size_t len, cap;
  int ext;
} out;
static struct {
  char *p;
  size_t cap;
} saved;
#define BUF_HDR offsetof(struct lc_json_buf, data)

static void out_free(void) {
  if (out.p != NULL) lc_bigalloc_realloc(out.p - BUF_HDR, BUF_HDR + out.cap, 0);
  out.p = NULL;
  out.cap = 0;
}

// Back to the encoder's own buffer after an output into a lent region.
static void out_restore(void) {
  if (!out.ext) return;
  out.p = saved.p;
  out.cap = saved.cap;
  out.ext = 0;
  saved.p = NULL;
  saved.cap = 0;
}
// Set while an encode owns `out`. lua_pushlstring may run a GC step whose finalizer encodes;
// that nested encode goes to lua-cjson instead of overwriting the output being copied.
static int busy;

static int grow(size_t need);

// The output outgrew the lent region: it moves to the encoder's own buffer (the prefix copied
// once), which is made large enough first (a buffer too small is freed rather than grown,
// which would copy its stale contents).
static __attribute__((noinline)) int grow_ext(size_t need) {
  if (need > OUT_MAX) return -1;
  const char *prefix = out.p;
  size_t len = out.len;
  out_restore();
  if (out.cap < need) {
    out_free();
    out.len = 0;
    if (grow(need) < 0) {
      out.len = len; // the output is lost either way: the caller falls back
      return -1;
    }
  }
  memcpy(out.p, prefix, len);
  out.len = len;
  return 0;
}

static int grow(size_t need) {
  if (out.ext) return grow_ext(need);
  size_t cap = out.cap ? out.cap : 4096;
  if (need > OUT_MAX) return -1;
  while (cap < need)
    cap *= 2;
  // The buffer comes from the Lua state's allocator: large ones from its cache of freed
  // blocks, whose pages are warm (a fresh 1 MiB is 256 page faults).
  char *p = lc_bigalloc_realloc(out.p != NULL ? out.p - BUF_HDR : NULL,
                                out.p != NULL ? BUF_HDR + out.cap : 0, BUF_HDR + cap);
  if (p == NULL) return -1;
  out.p = p + BUF_HDR;
  out.cap = cap;
  return 0;
}

// Room for n more bytes, or -1 (the caller falls back).
static inline int reserve(size_t n) {
  if (out.cap - out.len >= n) return 0;
  return grow(out.len + n);
}

static inline void put_unsafe(const char *s, size_t n) {
  memcpy(out.p + out.len, s, n);
  out.len += n;
}

// lua-cjson's char2escape: the escape of each byte, "" when it is copied as is. Control
// characters are \uXXXX but for \b \t \n \f \r; '"', '\\', '/' and DEL are escaped too.
// Each is padded to 8 bytes, copied whole (escape_len says how many count).
static const char escapes[256][8] = {
    "\\u0000", "\\u0001", "\\u0002",       "\\u0003",      "\\u0004",       "\\u0005",
    "\\u0006", "\\u0007", "\\b",           "\\t",          "\\n",           "\\u000b",
    "\\f",     "\\r",     "\\u000e",       "\\u000f",      "\\u0010",       "\\u0011",
    "\\u0012", "\\u0013", "\\u0014",       "\\u0015",      "\\u0016",       "\\u0017",
    "\\u0018", "\\u0019", "\\u001a",       "\\u001b",      "\\u001c",       "\\u001d",
    "\\u001e", "\\u001f", [0x22] = "\\\"", [0x2f] = "\\/", [0x5c] = "\\\\", [0x7f] = "\\u007f",
};
// The length of each escape (0: copied as is), so the loop needs no strlen.
static unsigned char escape_len[256];

static void init_escape_len(void) {
  for (int i = 0; i < 256; i++)
    escape_len[i] = (unsigned char)strlen(escapes[i]);
}

// Whether any of the 8 bytes in x needs an escape: below 0x20, '"', '/', '\\' or DEL.
// (v - 0x01..) & ~v & 0x80.. is non-zero exactly when v has a zero byte (a borrow only
// follows a zero byte); with 0x20.. it tells bytes below 0x20 the same way.
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline uint64_t has_zero(uint64_t v) {
  return (v - ONES) & ~v & HIGHS;
}
static inline uint64_t needs_escape8(uint64_t x) {
  return ((x - ONES * 0x20) & ~x & HIGHS) | has_zero(x ^ (ONES * '"')) |
         has_zero(x ^ (ONES * '/')) | has_zero(x ^ (ONES * '\\')) | has_zero(x ^ (ONES * 0x7f));
}

// s[0..n) escaped at p; returns the end.
static inline char *escape_bytes(char *p, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    unsigned e = escape_len[c];
    if (e == 0) {
      *p++ = (char)c;
    } else {
      memcpy(p, escapes[c], 8); // a constant size: no call; the caller reserved the slack
      p += e;
    }
  }
  return p;
}

// Strings of up to 7 bytes (most keys): copied as they are while noting whether any byte
// needs an escape, without a branch per byte; only then written again with the escapes.
static inline char *escape_short(char *p, const char *s, size_t n) {
  unsigned any = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    p[i] = (char)c;
    any |= escape_len[c];
  }
  return any ? escape_bytes(p, s, n) : p + n;
}

// Strings of 8 bytes or more: runs of 8 bytes without anything to escape are copied whole.
// Out of line, so the short strings (most keys) do not pay for its registers.
static __attribute__((noinline)) char *escape_long(char *p, const char *s, size_t len) {
  size_t i = 0;
  for (; len - i >= 8; i += 8) {
    uint64_t x;
    memcpy(&x, s + i, 8);
    if (!needs_escape8(x)) {
      memcpy(p, &x, 8);
      p += 8;
    } else {
      p = escape_bytes(p, s + i, 8);
    }
  }
  return escape_bytes(p, s + i, len - i);
}

// Strings longer than this are escaped piece by piece, each piece reserving room for its own
// worst case: a 1 MiB string then needs ~1 MiB of room beyond what is written, not 6 (which
// matters when the output goes to a lent region of fixed size, lc_json_encode_to, and for the
// size of the buffer kept). A multiple of 8, so pieces split no 8-byte run.
#define PIECE 4096

// A string longer than PIECE, as put_string writes it.
static __attribute__((noinline)) int put_long_string(const char *s, size_t len, int colon) {
  // Room for the string as it is first (most large strings have little to escape): one
  // growth of the buffer, not a doubling per piece (a fresh large block costs page faults).
  if (len > OUT_MAX / 6 || reserve(len + 3) < 0) return -1; // lua-cjson takes those
  put_unsafe("\"", 1);
  for (size_t i = 0; i < len; i += PIECE) {
    size_t n = len - i < PIECE ? len - i : PIECE;
    if (reserve(n * 6 + 8 + 2) < 0) return -1;
    out.len = (size_t)(escape_long(out.p + out.len, s + i, n) - out.p);
  }
  out.p[out.len++] = '"';
  if (colon) out.p[out.len++] = ':';
  return 0;
}

// "s" escaped, then a ':' if `colon` (after a key). lua-cjson reserves len * 6 + 2 the same
// way (8 more here: escape_bytes copies 8 bytes per escape).
static inline int put_string(const char *s, size_t len, int colon) {
  if (len > PIECE) return put_long_string(s, len, colon);
  if (reserve(len * 6 + 2 + 8 + 1) < 0) return -1;
  char *p = out.p + out.len;
  *p++ = '"';
  p = len < 8 ? escape_short(p, s, len) : escape_long(p, s, len);
  *p++ = '"';
  if (colon) *p++ = ':';
  out.len = (size_t)(p - out.p);
  return 0;
}

// A finite number as lua-cjson's json_append_number writes it (fpconv_g_fmt at the
// instance's precision); -1 for NaN and infinity. Room for NUMBER_ROOM bytes is reserved.
// An integer of at most `precision` digits is what %.<precision>g prints (fixed notation, no
// point), so it is written directly; zero keeps its sign ("-0"), which fpconv handles.
static const double pow10_int[15] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6, 1e7,
                                     1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14};

static inline int put_number(double num, int precision) {
  if (!isfinite(num)) return -1;
  if (reserve(NUMBER_ROOM) < 0) return -1;
  double limit = pow10_int[precision];
  if (num != 0 && num > -limit && num < limit) {
    int64_t i = (int64_t)num;
    if ((double)i == num) {
      char digits[20];
      int n = 0;
      uint64_t u = i < 0 ? (uint64_t)-i : (uint64_t)i;
      while (u) {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
      }
      char *p = out.p + out.len;
      if (i < 0) *p++ = '-';
      while (n)
        *p++ = digits[--n];
      out.len = (size_t)(p - out.p);
      return 0;
    }
  }
  out.len += (size_t)fpconv_g_fmt(out.p + out.len, num, precision);
  return 0;
}

static int encode_value(lua_State *L, const enc_cfg *c, int depth);

// A number key as lua_array_length sees it: 1 a positive integer (stored in *k), 0 anything
// else (the table is an object), -1 a positive integer above INT_MAX, which lua-cjson converts
// to its int maximum in a way this encoder does not model.
static inline int number_array_key(double d, int *k) {
  if (d >= 1 && d <= INT_MAX) {
    int i = (int)d;
    if ((double)i != d) return 0;
    *k = i;
    return 1;
  }
  if (d > INT_MAX && floor(d) == d) return -1;
  return 0;
}

// The key at -2, as number_array_key.
static inline int array_key(lua_State *L, int *k) {
  if (lua_type(L, -2) != LUA_TNUMBER) return 0;
  return number_array_key(lua_tonumber(L, -2), k);
}

// The table at -3 with its first key and value on top, which is a positive integer key k.
// Returns 0 when the table was written as an array, 1 when it is an object (the stack back to
// the table alone, the output to `start`), -1 to fall back.
static int encode_array(lua_State *L, const enc_cfg *c, int depth, size_t start, int k) {
  int max = 0, items = 0, expect = 1, ordered = 1;
  if (reserve(1) < 0) return -1;
  put_unsafe("[", 1);
  for (;;) {
    items++;
    if (k > max) max = k;
    if (ordered) {
      if (k >= expect && k - expect <= GAP_MAX) {
        if (reserve((size_t)(k - expect) * 5 + 1) < 0) return -1;
        for (int i = expect; i < k; i++)
          put_unsafe(i > 1 ? ",null" : "null", i > 1 ? 5 : 4);
        if (k > 1) put_unsafe(",", 1);
        if (encode_value(L, c, depth) < 0) return -1;
        expect = k + 1;
      } else {
        ordered = 0;
      }
    }
    lua_pop(L, 1);
    if (!lua_next(L, -2)) break;
    int r = array_key(L, &k);
    if (r < 0) return -1;
    if (r == 0) {
      lua_pop(L, 2);
      out.len = start;
      return 1;
    }
  }
  // lua_array_length's sparse rule, in int as there (a product over INT_MAX is not modelled).
  if (c->sparse_ratio > 0) {
    int64_t bound = (int64_t)items * c->sparse_ratio;
    if (bound > INT_MAX) return -1;
    if (max > bound && max > c->sparse_safe) {
      if (!c->sparse_convert) return -1; // "excessively sparse array": lua-cjson's error
      out.len = start;
      return 1;
    }
  }
  if (!ordered) {
    // json_append_array's loop: elements 1..max, holes as null.
    out.len = start + 1;
    for (int i = 1; i <= max; i++) {
      if (i > 1) {
        if (reserve(1) < 0) return -1;
        put_unsafe(",", 1);
      }
      lua_rawgeti(L, -1, i);
      if (encode_value(L, c, depth) < 0) return -1;
      lua_pop(L, 1);
    }
  }
  if (reserve(1) < 0) return -1;
  put_unsafe("]", 1);
  return 0;
}

// The table at -3 with a key and value on top: the object, from that key on.
static int encode_object(lua_State *L, const enc_cfg *c, int depth) {
  if (reserve(1) < 0) return -1;
  put_unsafe("{", 1);
  for (;;) {
    int kt = lua_type(L, -2);
    if (kt == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, -2, &len);
      if (put_string(s, len, 1) < 0) return -1;
    } else if (kt == LUA_TNUMBER) {
      if (reserve(1) < 0) return -1;
      put_unsafe("\"", 1);
      if (put_number(lua_tonumber(L, -2), c->precision) < 0) return -1;
      if (reserve(2) < 0) return -1;
      put_unsafe("\":", 2);
    } else {
      return -1; // "table key must be a number or string"
    }
    if (encode_value(L, c, depth) < 0) return -1;
    lua_pop(L, 1);
    if (!lua_next(L, -2)) break;
    if (reserve(1) < 0) return -1;
    put_unsafe(",", 1);
  }
  if (reserve(1) < 0) return -1;
  put_unsafe("}", 1);
  return 0;
}

// The table on top, `depth` levels deep (the root table is 1, as lua-cjson counts).
static int encode_table(lua_State *L, const enc_cfg *c, int depth) {
  size_t start = out.len;
  if (depth > c->max_depth || depth > DEPTH_MAX || !lua_checkstack(L, 3)) return -1;
  lua_pushnil(L);
  if (!lua_next(L, -2)) {
    if (reserve(2) < 0) return -1;
    put_unsafe("{}", 2); // lua-cjson: no array items, so an object
    return 0;
  }
  int k;
  int r = array_key(L, &k);
  if (r < 0) return -1;
  if (r == 1) {
    r = encode_array(L, c, depth, start, k);
    if (r <= 0) return r;
    // An object after all: walk it again from its first key.
    lua_pushnil(L);
    if (!lua_next(L, -2)) return -1; // not reached: the table had keys a moment ago
  }
  return encode_object(L, c, depth);
}

// The value on top of the stack (left there), inside `depth` tables.
static int encode_value(lua_State *L, const enc_cfg *c, int depth) {
  switch (lua_type(L, -1)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    return put_string(s, len, 0);
  }
  case LUA_TNUMBER:
    return put_number(lua_tonumber(L, -1), c->precision);
  case LUA_TBOOLEAN:
    if (reserve(5) < 0) return -1;
    if (lua_toboolean(L, -1)) {
      put_unsafe("true", 4);
    } else {
      put_unsafe("false", 5);
    }
    return 0;
  case LUA_TTABLE:
    return encode_table(L, c, depth + 1);
  case LUA_TNIL:
    if (reserve(4) < 0) return -1;
    put_unsafe("null", 4);
    return 0;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, -1) != NULL) return -1;
    if (reserve(4) < 0) return -1;
    put_unsafe("null", 4); // cjson.null
    return 0;
  default:
    return -1; // "type not supported"
  }
}

// -- The direct path: LuaJIT's tables read in place ----------------------------------------
//
// Measured on bench/realistic's 1 KB answer, the encoder above spends ~60% of its ~55k
// instructions in the Lua C API (lua_next's key lookup, index2adr, lua_type, lua_tolstring,
// lua_settop per entry). The binary links Debian's LuaJIT 2.1 statically, so the tables can
// be read where they are, as lj_tab_next does: the array part's slots 0..asize-1, then the hash
// part's nodes 0..hmask, skipping nil values, which is lua_next's order. The layouts are
// lj_obj.h's for GC64 (runtime/lj_layout.h); check_direct() verifies them on probe values before
// the first use and turns this path off if anything differs (the API path above then does all the
// work). Nothing here allocates or calls Lua: a table cannot change while it is read.
enum { DIRECT_UNKNOWN, DIRECT_OFF, DIRECT_ON };
static int direct = DIRECT_UNKNOWN;
static uint64_t null_bits; // the TValue of a NULL lightuserdata (cjson.null)

// Returned by the direct path for a table it does not write (positive integer keys in the
// hash part: lua-cjson's rawgeti order needs a lookup): the API path starts over.
#define DECLINE (-2)

static inline int d_string(const lj_tv *v, int colon) {
  const lj_str *s = LJ_GCV(v);
  return put_string((const char *)(s + 1), s->len, colon);
}

static int d_value(const lj_tv *v, const enc_cfg *c, int depth);

// A (non-nil) key in place, as number_array_key.
static inline int d_array_key(const lj_tv *key, int *k) {
  if (LJ_ITYPE(key) >= LJ_TNUMX) return 0;
  return number_array_key(key->n, k);
}

static int d_table(const lj_tab *t, const enc_cfg *c, int depth) {
  if (depth > c->max_depth || depth > DEPTH_MAX) return -1;
  const lj_tv *arr = t->array;
  const lj_node *node = t->node;
  uint32_t asize = t->asize, hmask = t->hmask;
  // lua_array_length: every key in traversal order until one is not a positive integer.
  int object = asize > 0 && LJ_ITYPE(&arr[0]) != LJ_TNIL; // key 0
  int max = 0, items = 0, hash_ints = 0;
  if (!object) {
    for (uint32_t i = 1; i < asize; i++) {
      if (LJ_ITYPE(&arr[i]) != LJ_TNIL) {
        items++;
        max = (int)i; // asize <= 2^27 (LJ_MAX_ASIZE)
      }
    }
    for (uint32_t j = 0; j <= hmask; j++) {
      if (LJ_ITYPE(&node[j].val) == LJ_TNIL) continue;
      int k, r = d_array_key(&node[j].key, &k);
      if (r < 0) return -1;
      if (r == 0) {
        object = 1;
        break;
      }
      items++;
      hash_ints++;
      if (k > max) max = k;
    }
  }
  if (!object) {
    if (max == 0) {
      if (reserve(2) < 0) return -1;
      put_unsafe("{}", 2); // no keys at all
      return 0;
    }
    if (c->sparse_ratio > 0) {
      int64_t bound = (int64_t)items * c->sparse_ratio;
      if (bound > INT_MAX) return -1;
      if (max > bound && max > c->sparse_safe) {
        if (!c->sparse_convert) return -1;
        object = 1;
      }
    }
  }
  if (!object) {
    if (hash_ints > 0) return DECLINE;
    // json_append_array: 1..max, all in the array part here; holes are null.
    if (reserve(1) < 0) return -1;
    put_unsafe("[", 1);
    for (int i = 1; i <= max; i++) {
      if (i > 1) {
        if (reserve(1) < 0) return -1;
        put_unsafe(",", 1);
      }
      int r = d_value(&arr[i], c, depth);
      if (r < 0) return r;
    }
    if (reserve(1) < 0) return -1;
    put_unsafe("]", 1);
    return 0;
  }
  // json_append_object, in lua_next order: the array part's keys are its indices.
  int comma = 0;
  if (reserve(1) < 0) return -1;
  put_unsafe("{", 1);
  for (uint32_t i = 0; i < asize; i++) {
    if (LJ_ITYPE(&arr[i]) == LJ_TNIL) continue;
    if (reserve(2) < 0) return -1;
    if (comma) put_unsafe(",", 1);
    comma = 1;
    put_unsafe("\"", 1);
    if (put_number((double)i, c->precision) < 0 || reserve(2) < 0) return -1;
    put_unsafe("\":", 2);
    int r = d_value(&arr[i], c, depth);
    if (r < 0) return r;
  }
  for (uint32_t j = 0; j <= hmask; j++) {
    const lj_node *n = &node[j];
    if (LJ_ITYPE(&n->val) == LJ_TNIL) continue;
    if (comma) {
      if (reserve(1) < 0) return -1;
      put_unsafe(",", 1);
    }
    comma = 1;
    uint32_t kt = LJ_ITYPE(&n->key);
    if (kt == LJ_TSTR) {
      if (d_string(&n->key, 1) < 0) return -1;
    } else if (kt < LJ_TNUMX) {
      if (reserve(1) < 0) return -1;
      put_unsafe("\"", 1);
      if (put_number(n->key.n, c->precision) < 0 || reserve(2) < 0) return -1;
      put_unsafe("\":", 2);
    } else {
      return -1; // "table key must be a number or string"
    }
    int r = d_value(&n->val, c, depth);
    if (r < 0) return r;
  }
  if (reserve(1) < 0) return -1;
  put_unsafe("}", 1);
  return 0;
}

static int d_value(const lj_tv *v, const enc_cfg *c, int depth) {
  uint32_t it = LJ_ITYPE(v);
  if (it < LJ_TNUMX) return put_number(v->n, c->precision);
  switch (it) {
  case LJ_TSTR:
    return d_string(v, 0);
  case LJ_TTAB:
    return d_table(LJ_GCV(v), c, depth + 1);
  case LJ_TTRUE:
    if (reserve(4) < 0) return -1;
    put_unsafe("true", 4);
    return 0;
  case LJ_TFALSE:
    if (reserve(5) < 0) return -1;
    put_unsafe("false", 5);
    return 0;
  case LJ_TNIL:
    if (reserve(4) < 0) return -1;
    put_unsafe("null", 4);
    return 0;
  case LJ_TLIGHTUD:
    if (v->u64 != null_bits) return -1; // another lightuserdata: lua-cjson decides
    if (reserve(4) < 0) return -1;
    put_unsafe("null", 4);
    return 0;
  default:
    return -1;
  }
}

// Whether the layouts above are this LuaJIT's: GC64 (ffi.abi), then probe values written
// through the API and read back in place. Run once, before the first direct encode.
// LC_JSON_ENCODE=api in the environment turns this path off (the specs run the API path
// on everything that way).
static int check_direct(lua_State *L) {
  int top = lua_gettop(L);
  const char *mode = getenv("LC_JSON_ENCODE");
  if (mode != NULL && strcmp(mode, "api") == 0) return DIRECT_OFF;
  if (luaL_loadstring(L, "local ok, ffi = pcall(require, 'ffi') return ok and ffi.abi('gc64')") !=
          0 ||
      lua_pcall(L, 0, 1, 0) != 0 || !lua_toboolean(L, -1)) {
    lua_settop(L, top);
    return DIRECT_OFF;
  }
  lua_createtable(L, 5, 1); // t = {1.5, "ab\0c", true, NULL, <nil>, k = {}}
  lua_pushnumber(L, 1.5);
  lua_rawseti(L, -2, 1);
  lua_pushlstring(L, "ab\0c", 4);
  lua_rawseti(L, -2, 2);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, 3);
  lua_pushlightuserdata(L, NULL);
  lua_rawseti(L, -2, 4);
  lua_newtable(L);
  lua_setfield(L, -2, "k");
  lua_rawgeti(L, -1, 2);
  const char *ab = lua_tostring(L, -1);
  lua_getfield(L, -2, "k");
  const void *inner = lua_topointer(L, -1);
  const lj_tab *t = lua_topointer(L, -3);
  int ok = 0;
  if (t != NULL && t->asize >= 6 && t->asize <= 64 && t->hmask < 64) {
    const lj_tv *a = t->array;
    ok = LJ_ITYPE(&a[0]) == LJ_TNIL && LJ_ITYPE(&a[1]) < LJ_TNUMX && a[1].n == 1.5 &&
         LJ_ITYPE(&a[2]) == LJ_TSTR && (const char *)LJ_GCV(&a[2]) + sizeof(lj_str) == ab &&
         ((const lj_str *)LJ_GCV(&a[2]))->len == 4 && LJ_ITYPE(&a[3]) == LJ_TTRUE &&
         LJ_ITYPE(&a[4]) == LJ_TLIGHTUD && LJ_ITYPE(&a[5]) == LJ_TNIL;
    if (ok) null_bits = a[4].u64;
    int found = 0;
    for (uint32_t j = 0; ok && j <= t->hmask; j++) {
      const lj_node *n = &t->node[j];
      if (LJ_ITYPE(&n->val) == LJ_TNIL) continue;
      const lj_str *k = LJ_GCV(&n->key);
      found += LJ_ITYPE(&n->key) == LJ_TSTR && k->len == 1 &&
               memcmp((const char *)(k + 1), "k", 2) == 0 && LJ_ITYPE(&n->val) == LJ_TTAB &&
               LJ_GCV(&n->val) == inner;
    }
    ok = ok && found == 1;
  }
  lua_settop(L, top);
  return ok ? DIRECT_ON : DIRECT_OFF;
}

// Pushes upvalue n of the encode closure: at stack index fn, or the running one (fn == 0).
static void push_upvalue(lua_State *L, int fn, int n) {
  if (fn == 0) {
    lua_pushvalue(L, lua_upvalueindex(n));
  } else {
    lua_getupvalue(L, fn, n);
  }
}

// Reads the instance's settings back through its original setters, called with no argument.
static void refresh(lua_State *L, enc_cfg *c, int fn) {
  push_upvalue(L, fn, UV_SPARSE);
  lua_call(L, 0, 3);
  c->sparse_convert = lua_toboolean(L, -3);
  c->sparse_ratio = (int)lua_tointeger(L, -2);
  c->sparse_safe = (int)lua_tointeger(L, -1);
  lua_pop(L, 3);
  push_upvalue(L, fn, UV_DEPTH);
  lua_call(L, 0, 1);
  c->max_depth = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  push_upvalue(L, fn, UV_PRECISION);
  lua_call(L, 0, 1);
  c->precision = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  c->stale = 0;
}

// Encodes the value on top of the stack into `out` (from its start): 0, or -1 to leave it to
// lua-cjson. Sets busy: the caller clears it once it has taken the output.
static int encode_top(lua_State *L, enc_cfg *c, int fn) {
  if (busy) return -1;
  if (c->stale) refresh(L, c, fn);
  if (direct == DIRECT_UNKNOWN) direct = check_direct(L);
  if (c->precision < 1 || c->precision > 14) return -1;
  busy = 1;
  out.len = 0;
  int r = DECLINE;
  if (direct == DIRECT_ON && lua_type(L, -1) == LUA_TTABLE) {
    r = d_table(lua_topointer(L, -1), c, 1);
  }
  if (r == DECLINE) {
    out.len = 0;
    r = encode_value(L, c, 0);
  }
  if (r != 0) busy = 0;
  return r == 0 ? 0 : -1;
}

// After an encode's output was taken: the buffer is kept unless it grew large.
static void encode_done(void) {
  if (out.cap > KEEP_MAX) out_free();
  busy = 0;
}

// ---- Encoded messages for the IPC channel ----
//
// A large message encoded for the cluster channel would be copied out of `out` into a Lua
// string only to be written to the socket (LuaJIT maps every string of 128 KiB or more
// afresh: a page fault per 4 KiB). the encode of an instance set up by lc_json_ipc_blobs (the
// channel's user-message encoder) hands such a buffer over instead, as a "blob" userdata that the
// channel's send accepts in place of a string (runtime/ipc.c) and queues by reference. The buffer
// is counted: one reference for the blob (dropped by blob:release() once the caller has sent it, or
// by its __gc), one per queued frame.
#define BLOB_MT "lc.json_blob"

void lc_json_buf_ref(struct lc_json_buf *b) {
  b->refs++;
}

void lc_json_buf_unref(struct lc_json_buf *b) {
  if (--b->refs == 0) lc_bigalloc_realloc(b, b->size, 0);
}

struct lc_json_buf *lc_json_blob(lua_State *L, int idx, int *is_blob) {
  struct lc_json_buf **ud = lua_touserdata(L, idx);
  *is_blob = 0;
  if (ud == NULL || lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, BLOB_MT);
  *is_blob = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return *is_blob ? *ud : NULL;
}

static int blob_release(lua_State *L) {
  struct lc_json_buf **ud = luaL_checkudata(L, 1, BLOB_MT);
  if (*ud != NULL) lc_json_buf_unref(*ud);
  *ud = NULL;
  return 0;
}

static int blob_len(lua_State *L) {
  struct lc_json_buf **ud = luaL_checkudata(L, 1, BLOB_MT);
  lua_pushinteger(L, *ud != NULL ? (lua_Integer)(*ud)->len : 0);
  return 1;
}

// The output in `out` as a counted buffer, its first reference the caller's; `out` starts
// afresh. Handed over untrimmed: a long string reserves its length, then 6 bytes per byte of
// the 4 KiB piece being escaped (its worst escape), so a 1 MiB message's buffer is ~2 MiB of
// which 1 is touched. The untouched rest costs address space, not memory, and the block
// that comes back to the allocator's cache is one the next such message fits as it is;
// trimming it cost an mremap each way (a TLB flush) and ~0.7 ms of the sender's CPU per
// 1 MiB message.
static struct lc_json_buf *out_buf(void) {
  struct lc_json_buf *b = (struct lc_json_buf *)(out.p - BUF_HDR);
  b->refs = 1;
  b->len = out.len;
  b->size = BUF_HDR + out.cap;
  out.p = NULL;
  out.cap = 0;
  return b;
}

// The output in `out` as a blob: the buffer becomes the blob's; `out` starts afresh.
static void push_blob(lua_State *L) {
  struct lc_json_buf **ud = lua_newuserdata(L, sizeof(*ud));
  *ud = NULL;
  if (luaL_newmetatable(L, BLOB_MT)) {
    lua_pushcfunction(L, blob_release);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, blob_len);
    lua_setfield(L, -2, "__len");
    lua_newtable(L);
    lua_pushcfunction(L, blob_release);
    lua_setfield(L, -2, "release");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  *ud = out_buf();
}

// The module's encode: upvalues UV_CFG .. UV_PRECISION.
static int l_encode(lua_State *L) {
  enc_cfg *c = lua_touserdata(L, lua_upvalueindex(UV_CFG));
  int nargs = lua_gettop(L);
  if (nargs != 1 && !c->safe) {
    // lua-cjson's check, raised from this function so the message names it the same way.
    return luaL_argerror(L, 1, "expected 1 argument");
  }
  if (nargs == 1 && encode_top(L, c, 0) == 0) {
    if (c->blob_min != 0 && out.len >= c->blob_min) {
      push_blob(L);
    } else {
      lua_pushlstring(L, out.p, out.len);
    }
    encode_done();
    return 1;
  }
  // lua-cjson's own encode, on the same arguments.
  lua_settop(L, nargs);
  lua_pushvalue(L, lua_upvalueindex(UV_ORIG));
  lua_insert(L, 1);
  lua_call(L, nargs, LUA_MULTRET);
  return lua_gettop(L);
}

// ---- Encoding into a region the caller lends (the IPC channel's ring) ----
//
// lc_json_encode_to: the channel's send of a Lua value (ch:send_value, runtime/ipc.c) has the
// output written where the message will lie, the free part of its shared-memory ring, so
// the sender does not copy it again. The output is the same as l_encode's; what l_encode
// leaves to lua-cjson is declined (the caller then encodes the usual way, errors included).

int lc_json_encode_to(lua_State *L, int fn, int idx, char *dst, size_t cap, lc_json_out *o) {
  if (lua_tocfunction(L, fn) != l_encode || busy) return -1;
  lua_getupvalue(L, fn, UV_CFG);
  enc_cfg *c = lua_touserdata(L, -1);
  lua_pop(L, 1);
  // Whatever may call Lua (the settings' getters, the layout check) runs before the region
  // is lent: a finalizer's encode in between must not find `out` pointing at it.
  if (c->stale) refresh(L, c, fn);
  if (direct == DIRECT_UNKNOWN) direct = check_direct(L);
  lua_pushvalue(L, idx);
  if (dst != NULL) {
    saved.p = out.p;
    saved.cap = out.cap;
    out.p = dst;
    out.cap = cap;
    out.ext = 1;
  }
  int r = encode_top(L, c, fn); // calls no Lua now (see busy for the API path's pushes)
  lua_pop(L, 1);
  if (r != 0) {
    out_restore();
    return -1;
  }
  o->data = out.p;
  o->len = out.len;
  o->in_dst = out.ext;
  return 0;
}

void lc_json_out_done(void) {
  out_restore();
  encode_done();
}

struct lc_json_buf *lc_json_out_take(void) {
  struct lc_json_buf *b = out_buf();
  busy = 0;
  return b;
}

// core.ipc_blobs(encode) -> true when encode is a cjson instance's fast-path encode, which
// from now on returns its output as a blob when it is LC_JSON_BLOB_MIN bytes or more (the
// IPC channel's user-message encoder; no other instance is affected).
int lc_json_ipc_blobs(lua_State *L) {
  int ok = lua_tocfunction(L, 1) == l_encode;
  if (ok) {
    lua_getupvalue(L, 1, UV_CFG);
    enc_cfg *c = lua_touserdata(L, -1);
    c->blob_min = LC_JSON_BLOB_MIN;
  }
  lua_pushboolean(L, ok);
  return 1;
}

static int l_mark_stale(lua_State *L) {
  enc_cfg *c = lua_touserdata(L, 1);
  if (c != NULL) c->stale = 1;
  return 0;
}

// The setter wrapper: marks the settings stale, then tail-calls the original setter.
static const char setter_wrapper[] = "local orig, cfg, mark = ...\n"
                                     "return function(...) mark(cfg) return orig(...) end\n";
static const char *const setters[] = {"encode_sparse_array", "encode_max_depth",
                                      "encode_number_precision", NULL};

static int l_new(lua_State *L);

static void install(lua_State *L, int safe) {
  int mod = lua_gettop(L);
  static int escape_ready;
  if (!escape_ready) {
    init_escape_len();
    escape_ready = 1;
  }
  lua_getfield(L, mod, "encode");
  if (!lua_isfunction(L, -1)) {
    lua_settop(L, mod);
    return;
  }
  enc_cfg *c = lua_newuserdata(L, sizeof(*c)); // [encode cfg]
  memset(c, 0, sizeof(*c));
  c->stale = 1;
  c->safe = safe;
  lua_insert(L, -2);         // [cfg encode]: mod + 1 is cfg
  lua_pushvalue(L, mod + 1); // the upvalues: [cfg encode cfg]
  lua_insert(L, -2);         // [cfg cfg encode]
  for (int i = 0; setters[i] != NULL; i++) {
    lua_getfield(L, mod, setters[i]); // [cfg cfg encode setter...]
    if (!lua_isfunction(L, -1)) {
      lua_settop(L, mod);
      return;
    }
  }
  lua_pushcclosure(L, l_encode, 5); // [cfg l_encode]
  lua_setfield(L, mod, "encode");
  for (int i = 0; setters[i] != NULL; i++) {
    if (luaL_loadbuffer(L, setter_wrapper, sizeof(setter_wrapper) - 1, "=json_encode") != 0) {
      lua_error(L);
    }
    lua_getfield(L, mod, setters[i]);
    lua_pushvalue(L, mod + 1);
    lua_pushcfunction(L, l_mark_stale);
    lua_call(L, 3, 1);
    lua_setfield(L, mod, setters[i]);
  }
  // new(): the previous new (lua-cjson's, or another fast path's wrapper), then this install.
  lua_getfield(L, mod, "new");
  if (lua_isfunction(L, -1)) {
    lua_pushboolean(L, safe);
    lua_pushcclosure(L, l_new, 2);
    lua_setfield(L, mod, "new");
  }
  lua_settop(L, mod);
}

static int l_new(lua_State *L) {
  int nargs = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, nargs, LUA_MULTRET);
  int nres = lua_gettop(L);
  if (nres >= 1 && lua_istable(L, 1)) {
    lua_pushvalue(L, 1);
    install(L, lua_toboolean(L, lua_upvalueindex(2)));
    lua_pop(L, 1);
  }
  return nres;
}

void lc_json_encode_install(lua_State *L, int safe) {
  install(L, safe);
}
