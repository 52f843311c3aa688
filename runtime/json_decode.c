// json_decode.c: a fast path in front of lua-cjson's decode, for the JSON that services send.
//
// lua_cjson.o (Debian's 2.1.0, linked as is: runtime/cjson.c) tokenises into a temporary
// buffer, copies every string there before lua_pushlstring, and fills every table key by key
// from empty. This parser reads the text once, pushes strings straight from it, and builds
// each object or array with its exact size: its entries are collected on the Lua stack and
// the table is created when it closes and filled in place (bench/realistic/ir: ~86k -> ~37k
// instructions for the 1.2 KB body of a JSON API request; docs/benchmarks.md).
//
// It handles strict JSON (RFC 8259 grammar) and nothing else: anything it does not model (a
// syntax error, a number strtod accepts but JSON does not (hex, inf, nan, "+1", "01", "1."),
// a bad escape or lone surrogate, a NUL byte before the end, nesting beyond the instance's
// decode_max_depth or 1024 levels, more than fits on the Lua stack of one C call) makes it
// decline: it drops what it built and the original decode runs on the same arguments, so
// every error message, every odd input lua-cjson accepts and cjson.safe's (nil, err) are
// lua-cjson's own.
// For what it accepts it produces what lua-cjson produces: numbers converted correctly
// rounded, as lua-cjson's strtod does (fpconv.c: both paths are exact); strings byte for
// byte as written, control characters included, \u escapes and surrogate pairs as UTF-8;
// null as cjson.null (a NULL light userdata); the last of duplicate keys wins; arrays from 1.
// spec/json_decode_spec.lua and fuzz/json_decode_fuzz.c compare the two.
//
// Installation (lc_json_decode_install, from runtime/cjson.c for cjson and cjson.safe, and
// for every instance their `new` returns): `decode` becomes a small Lua function that calls
// the fast path and, when it declines, tail-calls the original. The tail call matters: the
// original then runs in the place of the caller's call, so its luaL_error messages carry the
// caller's file:line prefix and its argument errors name 'decode', exactly as before (a C
// wrapper calling it with lua_call would lose both). `decode_max_depth` is wrapped in C so the
// fast path knows the instance's setting; it checks its arguments first with the same calls
// the original makes, so a bad argument raises the same message from the same frame.
// decode_invalid_numbers needs no wrapper: the fast path takes only numbers of JSON's
// grammar, which lua-cjson decodes alike under both settings.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <lauxlib.h>
#include <lua.h>

#include "lj_layout.h"

double fpconv_strtod(const char *nptr, char **endptr); // runtime/fpconv.c

void lc_json_decode_install(lua_State *L, int safe);
int lc_json_decode_buf(lua_State *L, const char *buf, size_t len, int max_depth);

// -- LuaJIT's objects in place ----------------------------------------------------------------
//
// As the encoder reads tables in place (json_encode.c), the decoder writes them in place: a
// table's entries, gathered on the Lua stack, go into the table lua_createtable made for
// them without a lua_rawset or lua_rawseti each (index2adr, a lookup of the new key, the
// stack juggling: ~120 and ~50 instructions an entry), and a cached string is written to the
// stack slot without a lua_rawgeti. The layouts are lj_obj.h's for GC64 (runtime/lj_layout.h,
// shared with the encoder); check_direct() verifies them on probe values
// before the first use and leaves the API path on if anything differs (LC_JSON_DECODE=api
// forces that path, for the specs). Keys go in through lj_tab_newkey, LuaJIT's own insertion
// of a key known to be absent (the binary links LuaJIT statically; the symbol is internal
// but linkable), so the hash chains are LuaJIT's. GC safety: the table is the newest object,
// made by lua_createtable (which runs the GC step that allocation owes first), so it is
// white; nothing between its creation and the last store allocates or runs the GC
// (lj_tab_newkey never rehashes a table made with room for every key), so no store needs a
// write barrier, as none is needed for a table's constructor. Tables filled after an
// allocation (a container longer than CHUNK entries, continued) go through the API.
typedef struct {
  uint64_t nextgc;
  uint8_t marked, gct, dummy_ffid, status;
  uint64_t glref, gclist;
  lj_tv *base, *top; // the running function's first slot, the first free one
} lj_state;          // lua_State, its first fields

lj_tv *lj_tab_newkey(lua_State *L, lj_tab *t, const lj_tv *key); // lj_tab.c

enum { DIRECT_UNKNOWN, DIRECT_OFF, DIRECT_ON };
static int direct = DIRECT_UNKNOWN;

// The stack slot of index idx (> 0) of the running C function.
static inline lj_tv *slot_at(lua_State *L, int idx) {
  return ((lj_state *)L)->base + (idx - 1);
}

// Entries of one object or array collected on the Lua stack before its table is created with
// their count; a longer one gets its table then and is continued in chunks of this many, the
// table growing as LuaJIT grows it for lua-cjson.
#define CHUNK 64
// Stack room: lua_checkstack when a container opens and after every ROOM_EVERY of its
// entries, not once for all of them: LuaJIT's GC may halve the running thread's stack during
// any allocation (lj_state_shrinkstack counts the slots in use, not what lua_checkstack
// promised), though only a stack over 94 slots and over 4 times the slots in use, so at
// least 24 stay free. ROOM_EVERY entries (2 slots each), a nested container's placeholder
// and flush_object's 2 stay within that; a luaL_Buffer checks for its pieces itself.
#define ROOM 40
#define ROOM_EVERY 4
// Deeper documents are left to lua-cjson even when its decode_max_depth allows them: the
// parser recurses once per level (lua-cjson does too).
#define DEPTH_CAP 1024

// Short strings met before, by their bytes: a decode of JSON API bodies meets the same keys
// (and often the same short values) in every document, and lua_rawgeti of the string kept
// at the slot is half the instructions of lua_pushlstring, which hashes the bytes and looks
// them up among all interned strings. Direct-mapped; slot i's string is t[i + 1] of a Lua
// table kept with it (which keeps the strings alive). A string is identified by its length
// and two 8-byte words covering its bytes (overlapping when it is 9 to 15 bytes long).
// Storing a missed string costs about twice what a hit saves, so a decode stores at most
// BUDGET keys and BUDGET values, plus one more of a kind for each hit of that kind: a
// document of repeated keys and unique values (ids, names) stores its keys only, and one of
// unique strings costs the lookups, not the stores.
#define CACHE_SLOTS 256
#define CACHE_MAX_LEN 16
// In direct mode strings up to this long too (the cached string's bytes are at hand to
// compare): repeated longer values (a 30-byte note in every item) skip lua_pushlstring's hash
// and intern lookup.
#define CACHE_MAX_DIRECT 64
#define BUDGET 16
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define CACHE 1
#else
#define CACHE 0 // the masks below assume little-endian loads
#endif

typedef struct {
  uint64_t w0, w1;
  uint32_t len;      // UINT32_MAX: empty
  const lj_str *str; // the string (direct mode only; the Lua table keeps it alive)
} cache_entry;

typedef struct {
  lua_State *L;
  const char *p;   // the next byte to read
  const char *end; // *end == '\0': the parser stops on it like on any other NUL
  int depth;
  int max_depth;
  cache_entry *cache; // NULL: none
  int cache_idx;      // the stack index of the cache's Lua table
  size_t cache_max;   // the longest string the cache takes
  int budget[2];      // misses that may still replace an entry: values, keys
} parser;

// The low n bytes of a word, n < 8.
static const uint64_t low_bytes[8] = {0,          0xFF,         0xFFFF,         0xFFFFFF,
                                      0xFFFFFFFF, 0xFFFFFFFFFF, 0xFFFFFFFFFFFF, 0xFFFFFFFFFFFFFF};

// Bytes that end the plain run of a string.
static const unsigned char string_stop[256] = {['"'] = 1, ['\\'] = 1, [0] = 1};

static const unsigned char is_ws[256] = {[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1};

// Most documents have no whitespace between tokens: one comparison then.
static inline void skip_ws(parser *d) {
  while ((unsigned char)*d->p <= ' ' && is_ws[(unsigned char)*d->p])
    d->p++;
}

static int parse_other(parser *d);
static inline __attribute__((always_inline)) int parse_value(parser *d);

static int hex4(const char *s) {
  int v = 0;
  // Stops at the first non-hex byte: never reads past a NUL.
  for (int i = 0; i < 4; i++) {
    int c = (unsigned char)s[i], x;
    if (c >= '0' && c <= '9')
      x = c - '0';
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
      x = (c | 0x20) - 'a' + 10;
    else
      return -1;
    v = v << 4 | x;
  }
  return v;
}

// From the backslash of an escape: appends its bytes to b, returns the byte after it or NULL
// for what lua-cjson rejects.
static const char *unescape(const char *p, luaL_Buffer *b) {
  int cp, lo;
  switch (p[1]) {
  case '"':
  case '\\':
  case '/':
    luaL_addchar(b, p[1]);
    return p + 2;
  case 'b':
    luaL_addchar(b, '\b');
    return p + 2;
  case 'f':
    luaL_addchar(b, '\f');
    return p + 2;
  case 'n':
    luaL_addchar(b, '\n');
    return p + 2;
  case 'r':
    luaL_addchar(b, '\r');
    return p + 2;
  case 't':
    luaL_addchar(b, '\t');
    return p + 2;
  case 'u':
    break;
  default:
    return NULL;
  }
  if ((cp = hex4(p + 2)) < 0) return NULL;
  p += 6;
  if ((cp & 0xF800) == 0xD800) {
    // A surrogate: a high one followed by an escaped low one, or an error.
    if (cp & 0x400 || p[0] != '\\' || p[1] != 'u') return NULL;
    if ((lo = hex4(p + 2)) < 0 || (lo & 0xFC00) != 0xDC00) return NULL;
    cp = (((cp & 0x3FF) << 10) | (lo & 0x3FF)) + 0x10000;
    p += 6;
  }
  if (cp < 0x80) {
    luaL_addchar(b, (char)cp);
  } else if (cp < 0x800) {
    luaL_addchar(b, (char)(0xC0 | cp >> 6));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    luaL_addchar(b, (char)(0xE0 | cp >> 12));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else {
    luaL_addchar(b, (char)(0xF0 | cp >> 18));
    luaL_addchar(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  }
  return p;
}

// The rest of a string from the first escape at q (s: where the string's text starts):
// pushes it. Not inlined: its luaL_Buffer is 8 KB of C stack, which must not be part of
// every level of the recursion.
static __attribute__((noinline)) int parse_escaped(parser *d, const char *s, const char *q) {
  luaL_Buffer b;
  // Its pieces (up to ~12 slots) are pushed without checks of their own.
  if (!lua_checkstack(d->L, ROOM)) return 0;
  luaL_buffinit(d->L, &b);
  for (;;) {
    luaL_addlstring(&b, s, (size_t)(q - s));
    if (*q == '"') break;
    if (*q != '\\' || !(q = unescape(q, &b))) return 0;
    for (s = q; !string_stop[(unsigned char)*q]; q++)
      ;
  }
  luaL_pushresult(&b);
  d->p = q + 1;
  return 1;
}

#if CACHE
// A cache miss: pushes the string and, within the budget, stores it in slot, whose string
// moves to the slot's pair (slot ^ 1), replacing that one: two ways, the newest first.
static __attribute__((noinline)) void cache_store(parser *d, const char *s, size_t len, int is_key,
                                                  int slot) {
  lua_State *L = d->L;
  cache_entry *e = &d->cache[slot];
  uint64_t w0 = 0, w1 = 0;
  lua_pushlstring(L, s, len);
  if (d->budget[is_key] == 0) return;
  d->budget[is_key]--;
  if (e->len != UINT32_MAX) {
    d->cache[slot ^ 1] = *e;
    lua_rawgeti(L, d->cache_idx, slot + 1);
    lua_rawseti(L, d->cache_idx, (slot ^ 1) + 1);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->cache_idx, slot + 1);
  memcpy(&w0, s, len < 8 ? len : 8);
  if (len > 8) memcpy(&w1, s + len - 8, 8);
  e->len = (uint32_t)len;
  e->w0 = w0;
  e->w1 = w1;
  e->str = direct == DIRECT_ON ? LJ_GCV(&((lj_state *)L)->top[-1]) : NULL;
}

// Whether entry e holds the len bytes at s, whose first and last 8 are w0 and w1.
static inline int cache_match(const cache_entry *e, const char *s, size_t len, uint64_t w0,
                              uint64_t w1) {
  if (e->len != len || e->w0 != w0 || e->w1 != w1) return 0;
  // A longer string (direct mode only): its middle compared with the cached string's.
  return len <= 16 || memcmp(s + 8, (const char *)(e->str + 1) + 8, len - 16) == 0;
}
#endif

// push_string's slower cases: a cache hit outside direct mode (hit: the string is at slot),
// a miss (it is to be stored at slot), a string the cache does not take (slot -1).
static __attribute__((noinline)) void push_string_slow(parser *d, const char *s, size_t len,
                                                       int is_key, int slot, int hit) {
#if CACHE
  if (hit) {
    d->budget[is_key]++;
    lua_rawgeti(d->L, d->cache_idx, slot + 1);
    return;
  }
  if (slot >= 0) {
    cache_store(d, s, len, is_key, slot);
    return;
  }
#else
  (void)is_key;
  (void)slot;
  (void)hit;
#endif
  lua_pushlstring(d->L, s, len);
}

// Pushes the string of len bytes at s (no escapes), from the cache when it is there;
// returns a hash of its bytes (its length, first and last 8 bytes), which parse_object uses
// for its keys' signatures too: a function of the bytes alone, wherever they are. Inlined,
// the rest out of line, so that a hit in direct mode saves no registers.
static inline __attribute__((always_inline)) uint64_t push_string(parser *d, const char *s,
                                                                  size_t len, int is_key) {
  uint64_t w0 = 0, w1 = 0, h;
  if (d->end - s >= 8) {
    memcpy(&w0, s, 8); // within the text
    if (len < 8) w0 &= low_bytes[len];
  } else {
    memcpy(&w0, s, len < 8 ? len : 8);
  }
  if (len > 8) memcpy(&w1, s + len - 8, 8);
  h = (w0 ^ (w1 * 0x9E3779B97F4A7C15u) ^ len) * 0xFF51AFD7ED558CCDu;
#if CACHE
  if (d->cache && len <= d->cache_max) {
    int slot = (int)(h >> 56);
    const cache_entry *e = &d->cache[slot];
    if (!cache_match(e, s, len, w0, w1)) {
      e = &d->cache[slot ^ 1];
      if (!cache_match(e, s, len, w0, w1)) {
        push_string_slow(d, s, len, is_key, slot, 0); // a miss: stored at slot
        return h;
      }
      slot ^= 1;
    }
    if (e->str != NULL) { // direct: the string into the next stack slot
      lj_state *S = (lj_state *)d->L;
      d->budget[is_key]++;
      S->top->u64 = (uint64_t)LJ_TSTR << 47 | (uintptr_t)e->str;
      S->top++;
      return h;
    }
    push_string_slow(d, s, len, is_key, slot, 1); // a hit, through the API
    return h;
  }
#endif
  push_string_slow(d, s, len, is_key, -1, 0);
  return h;
}

// A string from its opening quote; pushes it. *sig is set to a signature of its bytes, two
// bits of 64, or to 0 when it held an escape (its bytes then differ from the text's).
// Inlined: is_key is a constant at each call.
static inline __attribute__((always_inline)) int parse_string(parser *d, uint64_t *sig,
                                                              int is_key) {
  const char *s = d->p + 1, *q = s;

  // The first '"', '\\' or NUL, 16 bytes at a time while they lie before the end.
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                zero = _mm_setzero_si128();
  for (;;) {
    if (d->end - q < 16) {
      while (!string_stop[(unsigned char)*q])
        q++;
      break;
    }
    __m128i v = _mm_loadu_si128((const __m128i *)q);
    __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                               _mm_cmpeq_epi8(v, zero));
    unsigned mask = (unsigned)_mm_movemask_epi8(hit);
    if (mask) {
      q += __builtin_ctz(mask);
      break;
    }
    q += 16;
  }
#else
  while (!string_stop[(unsigned char)*q])
    q++;
#endif
  if (*q == '"') {
    uint64_t h = push_string(d, s, (size_t)(q - s), is_key);
    d->p = q + 1;
    if (is_key) *sig = (uint64_t)1 << ((h >> 40) & 63) | (uint64_t)1 << ((h >> 46) & 63);
    return 1;
  }
  if (*q != '\\') return 0; // a NUL: the end, or a byte lua-cjson stops at
  *sig = 0;
  return parse_escaped(d, s, q);
}

static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

// A number of JSON's grammar, -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?, followed by
// whitespace, ',', ']', '}' or the end; anything else (strtod would read on, or lua-cjson
// would fail on the next token) declines. The value is the correctly rounded double, as
// strtod gives: exactly computed when the digits (at most 19 significant) make an integer
// m <= 2^53 and the decimal exponent e is within 22 of zero (m and 10^|e| are exact doubles:
// one correctly rounded multiplication or division, Clinger's fast path), otherwise
// fpconv_strtod, the function lua-cjson calls.
static int parse_number(parser *d) {
  const char *start = d->p, *p = start;
  uint64_t m = 0;
  int neg = 0, sig = 0, frac = 0, exp = 0, exp_neg = 0;
  double v;

  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (*p == '0') {
    p++;
  } else if (*p >= '1' && *p <= '9') {
    for (; *p >= '0' && *p <= '9'; p++) {
      if (sig < 19) m = m * 10 + (uint64_t)(*p - '0');
      sig++;
    }
  } else {
    return 0;
  }
  if (*p == '.') {
    p++;
    if (*p < '0' || *p > '9') return 0;
    for (; *p >= '0' && *p <= '9'; p++) {
      if (sig == 0 && *p == '0') { // leading zeros of 0.000123 are not significant
        frac++;
        continue;
      }
      if (sig < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        frac++;
      }
      sig++;
    }
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '-' || *p == '+') exp_neg = *p++ == '-';
    if (*p < '0' || *p > '9') return 0;
    for (; *p >= '0' && *p <= '9'; p++)
      if (exp < 100000) exp = exp * 10 + (*p - '0');
  }
  switch (*p) {
  case ' ':
  case '\t':
  case '\n':
  case '\r':
  case ',':
  case ']':
  case '}':
    break;
  case '\0':
    if (p == d->end) break;
    return 0;
  default:
    return 0;
  }
  if (m == 0) {
    v = 0.0; // all digits zero, whatever the exponent
  } else {
    int e = (exp_neg ? -exp : exp) - frac;
    if (sig <= 19 && m <= (uint64_t)1 << 53 && e >= -22 && e <= 22) {
      v = e >= 0 ? (double)m * pow10_exact[e] : (double)m / pow10_exact[-e];
    } else {
      char *stop;
      v = fpconv_strtod(start, &stop);
      if (stop != p) return 0;
      neg = 0; // strtod read the sign
    }
  }
  lua_pushnumber(d->L, neg ? -v : v);
  d->p = p;
  return 1;
}

// Moves the `n` entries above `base` (values of an array, key-value pairs of an object) into
// the table at `base`, creating it if it is still the nil placeholder. lua_rawset and
// lua_rawseti take the topmost entry, so entries go in last first; for an object that is
// right only if no two of its keys are equal (else the first would win, lua-cjson's last
// does): `in_order` then copies them up in order instead.
static void flush_array(lua_State *L, int base, int *made, int done, int n) {
  if (!*made) {
    lua_createtable(L, n, 0);
    *made = 1;
    if (direct == DIRECT_ON) { // into the array part (asize n + 1) in place; see the top
      lj_tv *b = slot_at(L, base);
      lj_tab *t = LJ_GCV(&b[n + 1]);
      for (int i = 1; i <= n; i++)
        t->array[i] = b[i];
      b[0] = b[n + 1];
      ((lj_state *)L)->top = b + 1;
      return;
    }
    lua_replace(L, base);
  }
  for (int i = done + n; i > done; i--)
    lua_rawseti(L, base, i);
}

static void flush_object(lua_State *L, int base, int *made, int n, int in_order) {
  if (!*made) {
    lua_createtable(L, 0, n);
    *made = 1;
    if (direct == DIRECT_ON && !in_order) { // distinct keys into the new table; see the top
      lj_tv *b = slot_at(L, base);
      lj_tab *t = LJ_GCV(&b[2 * n + 1]);
      for (int i = 0; i < n; i++)
        *lj_tab_newkey(L, t, &b[1 + 2 * i]) = b[2 + 2 * i];
      b[0] = b[2 * n + 1];
      ((lj_state *)L)->top = b + 1;
      return;
    }
    lua_replace(L, base);
  }
  if (!in_order) {
    for (int i = 0; i < n; i++)
      lua_rawset(L, base);
    return;
  }
  for (int i = 0; i < n; i++) {
    lua_pushvalue(L, base + 1 + 2 * i);
    lua_pushvalue(L, base + 2 + 2 * i);
    lua_rawset(L, base);
  }
  lua_settop(L, base);
}

static __attribute__((noinline)) int parse_array(parser *d) {
  lua_State *L = d->L;
  int base, made = 0, done = 0, n = 0;

  if (++d->depth > d->max_depth || !lua_checkstack(L, ROOM)) return 0;
  d->p++;
  lua_pushnil(L); // the table's slot
  base = lua_gettop(L);
  skip_ws(d);
  if (*d->p != ']') {
    for (;;) {
      if (!parse_value(d)) return 0;
      if (++n % ROOM_EVERY == 0 && !lua_checkstack(L, ROOM)) return 0;
      if (n == CHUNK) {
        flush_array(L, base, &made, done, n);
        done += n;
        n = 0;
      }
      skip_ws(d);
      if (*d->p == ',') {
        d->p++;
        skip_ws(d);
      } else if (*d->p == ']') {
        break;
      } else {
        return 0;
      }
    }
  }
  d->p++;
  flush_array(L, base, &made, done, n);
  d->depth--;
  return 1;
}

static __attribute__((noinline)) int parse_object(parser *d) {
  lua_State *L = d->L;
  int base, made = 0, n = 0;
  uint64_t seen = 0;
  int dup = 0; // two keys may be equal

  if (++d->depth > d->max_depth || !lua_checkstack(L, ROOM)) return 0;
  d->p++;
  lua_pushnil(L);
  base = lua_gettop(L);
  skip_ws(d);
  if (*d->p != '}') {
    for (;;) {
      uint64_t bits;
      if (*d->p != '"' || !parse_string(d, &bits, 1)) return 0;
      // An escaped key's bytes are not the text's (bits 0): such an object keeps its order.
      dup |= (seen & bits) == bits;
      seen |= bits;
      skip_ws(d);
      if (*d->p != ':') return 0;
      d->p++;
      skip_ws(d);
      if (!parse_value(d)) return 0;
      if (++n % ROOM_EVERY == 0 && !lua_checkstack(L, ROOM)) return 0;
      if (n == CHUNK) {
        flush_object(L, base, &made, n, dup);
        n = 0;
      }
      skip_ws(d);
      if (*d->p == ',') {
        d->p++;
        skip_ws(d);
      } else if (*d->p == '}') {
        break;
      } else {
        return 0;
      }
    }
  }
  d->p++;
  flush_object(L, base, &made, n, dup);
  d->depth--;
  return 1;
}

// Anything but a string: out of line, so that the loops of parse_object and parse_array,
// where a string value is parsed in place, save no registers for the rest.
static __attribute__((noinline)) int parse_other(parser *d) {
  switch (*d->p) {
  case '{':
    return parse_object(d);
  case '[':
    return parse_array(d);
  case '-':
  case '0':
  case '1':
  case '2':
  case '3':
  case '4':
  case '5':
  case '6':
  case '7':
  case '8':
  case '9':
    return parse_number(d);
  case 't':
    if (d->end - d->p < 4 || memcmp(d->p, "true", 4) != 0) return 0;
    lua_pushboolean(d->L, 1);
    d->p += 4;
    return 1;
  case 'f':
    if (d->end - d->p < 5 || memcmp(d->p, "false", 5) != 0) return 0;
    lua_pushboolean(d->L, 0);
    d->p += 5;
    return 1;
  case 'n':
    if (d->end - d->p < 4 || memcmp(d->p, "null", 4) != 0) return 0;
    lua_pushlightuserdata(d->L, NULL); // cjson.null
    d->p += 4;
    return 1;
  default:
    return 0;
  }
}

static inline __attribute__((always_inline)) int parse_value(parser *d) {
  uint64_t sig;
  if (*d->p == '"') return parse_string(d, &sig, 0);
  return parse_other(d);
}

// Decodes buf[0..len), which must be followed by a NUL byte (buf[len] == '\0'; a Lua string
// is), nesting at most max_depth deep. Pushes the value and returns 1, or returns 0 with the
// stack as it was when the text is not JSON this parser handles (lua-cjson's decode must
// then be asked: it may accept it or give the error).
static int decode(lua_State *L, const char *buf, size_t len, int max_depth, cache_entry *cache,
                  int cache_idx) {
  parser d = {L,
              buf,
              buf + len,
              0,
              max_depth < DEPTH_CAP ? max_depth : DEPTH_CAP,
              cache,
              cache_idx,
              direct == DIRECT_ON ? CACHE_MAX_DIRECT : CACHE_MAX_LEN,
              {BUDGET, BUDGET}};
  int top = lua_gettop(L);

  // The root value and a luaL_Buffer's pieces (containers check for their own slots).
  if (!lua_checkstack(L, 24)) return 0;
  skip_ws(&d);
  if (parse_value(&d)) {
    skip_ws(&d);
    if (d.p == d.end) return 1;
  }
  lua_settop(L, top);
  return 0;
}

// Whether the layouts at the top are this LuaJIT's: GC64 (ffi.abi), the stack slots and a
// string read back where lua_State's base and top point, a table's parts where GCtab says
// they are; then an object and an array built in place, read back through the API. Run
// once, before the first decode.
static int check_direct(lua_State *L) {
  int top = lua_gettop(L), ok = 0;
  const char *mode = getenv("LC_JSON_DECODE");
  if (mode != NULL && strcmp(mode, "api") == 0) return DIRECT_OFF;
  if (!lua_checkstack(L, 16)) return DIRECT_OFF;
  if (luaL_loadstring(L, "local ok, ffi = pcall(require, 'ffi') return ok and ffi.abi('gc64')") !=
          0 ||
      lua_pcall(L, 0, 1, 0) != 0 || !lua_toboolean(L, -1)) {
    lua_settop(L, top);
    return DIRECT_OFF;
  }
  lua_settop(L, top);
  lua_pushnumber(L, 1.5);
  lua_pushlstring(L, "probe\0key", 9);
  lua_createtable(L, 3, 0);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, 2);
  {
    lj_state *S = (lj_state *)L;
    lj_tv *t1 = S->top - 1, *str = S->top - 2, *num = S->top - 3;
    const lj_tab *t = LJ_GCV(t1);
    const lj_str *ps = LJ_GCV(str);
    ok = S->top - S->base == lua_gettop(L) && slot_at(L, top + 1) == num &&
         LJ_ITYPE(num) < LJ_TNUMX && num->n == 1.5 && LJ_ITYPE(str) == LJ_TSTR && ps->len == 9 &&
         memcmp(ps + 1, "probe\0key", 10) == 0 && LJ_ITYPE(t1) == LJ_TTAB &&
         (const void *)t == lua_topointer(L, -1) && t->asize == 4 && t->hmask == 0 &&
         LJ_ITYPE(&t->array[1]) == LJ_TNIL && LJ_ITYPE(&t->array[2]) == LJ_TTRUE &&
         LJ_ITYPE(&t->array[3]) == LJ_TNIL;
  }
  lua_settop(L, top);
  if (ok) {
    int made = 0, base;
    direct = DIRECT_ON; // for the flushes below
    lua_pushnil(L);     // {a = 1.5, bb = true, [1] = "probe\0key"}
    base = lua_gettop(L);
    lua_pushliteral(L, "a");
    lua_pushnumber(L, 1.5);
    lua_pushliteral(L, "bb");
    lua_pushboolean(L, 1);
    lua_pushnumber(L, 1);
    lua_pushlstring(L, "probe\0key", 9);
    flush_object(L, base, &made, 3, 0);
    made = 0;
    lua_pushnil(L); // {7, "x", false}
    lua_pushnumber(L, 7);
    lua_pushliteral(L, "x");
    lua_pushboolean(L, 0);
    flush_array(L, base + 1, &made, 0, 3);
    direct = DIRECT_UNKNOWN;
    ok = lua_gettop(L) == top + 2 && lua_type(L, base) == LUA_TTABLE &&
         lua_type(L, base + 1) == LUA_TTABLE && lua_objlen(L, base + 1) == 3;
    if (ok) {
      size_t n;
      const char *v;
      int count = 0;
      lua_getfield(L, base, "a");
      lua_getfield(L, base, "bb");
      lua_rawgeti(L, base, 1);
      lua_rawgeti(L, base + 1, 1);
      lua_rawgeti(L, base + 1, 2);
      lua_rawgeti(L, base + 1, 3);
      v = lua_tolstring(L, -4, &n);
      ok = lua_tonumber(L, -6) == 1.5 && lua_toboolean(L, -5) && v != NULL && n == 9 &&
           memcmp(v, "probe\0key", 9) == 0 && lua_tonumber(L, -3) == 7 &&
           lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
      lua_settop(L, base + 1);
      lua_pushnil(L);
      while (lua_next(L, base)) {
        count++;
        lua_pop(L, 1);
      }
      ok = ok && count == 3;
    }
  }
  lua_settop(L, top);
  return ok ? DIRECT_ON : DIRECT_OFF;
}

int lc_json_decode_buf(lua_State *L, const char *buf, size_t len, int max_depth) {
  if (direct == DIRECT_UNKNOWN) direct = check_direct(L);
  return decode(L, buf, len, max_depth, NULL, 0);
}

// The instance's decode settings the fast path models (upvalue of both closures below).
typedef struct {
  int max_depth;
  cache_entry cache[CACHE_SLOTS]; // its strings: the table in fast_decode's upvalue 2
} decode_cfg;

// fast(...): the decoded value, or nothing when lua-cjson's decode must run.
static int fast_decode(lua_State *L) {
  decode_cfg *cfg = lua_touserdata(L, lua_upvalueindex(1));
  size_t len;
  const char *s;
  if (lua_gettop(L) != 1 || lua_type(L, 1) != LUA_TSTRING) return 0;
  if (direct == DIRECT_UNKNOWN) direct = check_direct(L);
  s = lua_tolstring(L, 1, &len);
  lua_pushvalue(L, lua_upvalueindex(2)); // the cache's strings, at index 2
  return decode(L, s, len, cfg->max_depth, cfg->cache, 2);
}

// decode_max_depth([depth]): the original's argument checks first, made here so a bad
// argument is reported from this frame as it was from the original's (same name, same
// caller's line); then the original sets and returns the value, which is recorded.
static int wrap_decode_max_depth(lua_State *L) {
  decode_cfg *cfg = lua_touserdata(L, lua_upvalueindex(2));
  int n = lua_gettop(L);
  luaL_argcheck(L, n <= 1, 2, "found too many arguments");
  if (n == 1 && !lua_isnil(L, 1)) {
    int value = (int)luaL_checkinteger(L, 1); // truncated as the original truncates it
    luaL_argcheck(L, 1 <= value, 1, "expected integer between 1 and 2147483647");
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, 1);
  cfg->max_depth = (int)lua_tointeger(L, -1);
  return 1;
}

// new(...): the previous `new` (lua-cjson's, or another fast path's wrapper), then this
// file's decoder on the instance it returns.
static int wrap_new(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  if (lua_type(L, -1) == LUA_TTABLE)
    lc_json_decode_install(L, (int)lua_tointeger(L, lua_upvalueindex(2)));
  return 1;
}

// The Lua side of `decode`: made once per process (kept in the registry), one closure per
// instance.
static const char decode_factory[] = "local fast, orig = ...\n"
                                     "return function(...)\n"
                                     "  local v = fast(...)\n"
                                     "  if v ~= nil then return v end\n"
                                     "  return orig(...)\n"
                                     "end\n";
static char factory_key;

// On the module table (or instance) on top of the stack: decode, decode_max_depth and new
// replaced by the wrappers above. `safe` is kept for the instances `new` returns (a safe
// module's decode is lua-cjson's pcall wrapper, which the fallback calls like any original).
void lc_json_decode_install(lua_State *L, int safe) {
  int mod = lua_gettop(L), cfg_idx;
  decode_cfg *cfg = lua_newuserdata(L, sizeof(*cfg));
  cfg_idx = lua_gettop(L);
  memset(cfg->cache, 0xFF, sizeof(cfg->cache));

  lua_getfield(L, mod, "decode_max_depth"); // the current setting, from the original
  lua_pushvalue(L, -1);
  lua_call(L, 0, 1);
  cfg->max_depth = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_pushvalue(L, cfg_idx);
  lua_pushcclosure(L, wrap_decode_max_depth, 2);
  lua_setfield(L, mod, "decode_max_depth");

  lua_pushlightuserdata(L, &factory_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, decode_factory, sizeof(decode_factory) - 1, "=cjson.decode") != 0)
      lua_error(L);
    lua_pushlightuserdata(L, &factory_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pushvalue(L, cfg_idx);
  lua_createtable(L, CACHE_SLOTS, 0);
  lua_pushcclosure(L, fast_decode, 2);
  lua_getfield(L, mod, "decode");
  lua_call(L, 2, 1);
  lua_setfield(L, mod, "decode");

  lua_getfield(L, mod, "new");
  lua_pushinteger(L, safe);
  lua_pushcclosure(L, wrap_new, 2);
  lua_setfield(L, mod, "new");
  lua_settop(L, mod);
}
