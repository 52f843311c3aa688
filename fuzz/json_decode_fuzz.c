// json_decode_fuzz.c: the cjson.decode fast path (runtime/json_decode.c) against lua-cjson's
// own decode (Debian's lua_cjson.o, as the binary links it). Each input is a text, decoded at
// decode_max_depth 1000 and 3: whenever the fast path takes it, lua-cjson must decode it
// too, to the same value (numbers compared bit for bit, strings byte for byte, tables entry
// for entry). Declining is always allowed (lua-cjson then runs, as in the binary). The text is
// given to the fast path in a heap copy of exactly its length plus the NUL the parser stops
// on, so ASan reports any read past it; and, as a Lua string, to the fast function the
// binary's cjson module gets (runtime/cjson.c's opener), whose string cache lives across
// inputs.
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int luaopen_cjson(lua_State *L);
int lc_cjson_luaopen(lua_State *L);
int lc_json_decode_buf(lua_State *L, const char *buf, size_t len, int max_depth);

static lua_State *L;

static void fail(const char *what, const uint8_t *data, size_t size) {
  fprintf(stderr, "json_decode_fuzz: %s on %zu bytes: %.*s\n", what, size,
          (int)(size > 200 ? 200 : size), data ? (const char *)data : "");
  abort();
}

// Whether the values at a and b (absolute indexes) are the same decoded value.
static int same(int a, int b) {
  int t = lua_type(L, a);
  if (t != lua_type(L, b)) return 0;
  switch (t) {
  case LUA_TNUMBER: {
    double x = lua_tonumber(L, a), y = lua_tonumber(L, b);
    return memcmp(&x, &y, sizeof(x)) == 0;
  }
  case LUA_TSTRING: {
    size_t n, m;
    const char *x = lua_tolstring(L, a, &n), *y = lua_tolstring(L, b, &m);
    return n == m && memcmp(x, y, n) == 0;
  }
  case LUA_TBOOLEAN:
    return lua_toboolean(L, a) == lua_toboolean(L, b);
  case LUA_TLIGHTUSERDATA:
    return lua_touserdata(L, a) == lua_touserdata(L, b);
  case LUA_TTABLE: {
    int na = 0, nb = 0, ok = 1;
    if (!lua_checkstack(L, 8)) fail("stack", NULL, 0);
    if (lua_getmetatable(L, a) || lua_getmetatable(L, b)) return 0; // lua-cjson sets none
    lua_pushnil(L);
    while (ok && lua_next(L, a)) { // [key value]
      int top = lua_gettop(L);
      na++;
      lua_pushvalue(L, top - 1);
      lua_rawget(L, b); // [key value b[key]]
      ok = !lua_isnil(L, -1) && same(top, top + 1);
      lua_settop(L, top - 1);
    }
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
      nb++;
      lua_pop(L, 1);
    }
    return na == nb && lua_objlen(L, a) == lua_objlen(L, b);
  }
  default:
    return 0;
  }
}

#define FAST_FN 3 // stack index of the installed fast function

static void check(const uint8_t *data, size_t size, int orig_idx, int depth, int cached) {
  char *copy = malloc(size + 1);
  memcpy(copy, data, size);
  copy[size] = '\0';
  int top = lua_gettop(L), took;
  if (cached) {
    lua_pushvalue(L, FAST_FN);
    lua_pushlstring(L, (const char *)data, size);
    lua_call(L, 1, 1); // nil: declined (a decoded value never is)
    took = !lua_isnil(L, -1);
    if (!took) lua_pop(L, 1);
  } else {
    took = lc_json_decode_buf(L, copy, size, depth);
  }
  if (took) {
    int fast = lua_gettop(L);
    if (fast != top + 1) fail("fast path left the stack unbalanced", data, size);
    lua_getfield(L, orig_idx, "decode");
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 1, 0) != 0) {
      fprintf(stderr, "lua-cjson: %s\n", lua_tostring(L, -1));
      fail("fast path took what lua-cjson rejects", data, size);
    }
    if (!same(fast, fast + 1)) fail("fast path and lua-cjson differ", data, size);
  } else if (lua_gettop(L) != top) {
    fail("a decline left values on the stack", data, size);
  }
  lua_settop(L, top);
  free(copy);
}

// lua-cjson's instances free their buffers when the state closes: before the leak check.
static void close_state(void) {
  lua_close(L);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int runs;
  if (!L) {
    L = luaL_newstate();
    atexit(close_state);
    luaL_openlibs(L);
    luaopen_cjson(L); // [cjson(1000)]
    luaopen_cjson(L); // [cjson(1000) cjson(3)]
    lua_getfield(L, 2, "decode_max_depth");
    lua_pushinteger(L, 3);
    lua_call(L, 1, 0);
    lc_cjson_luaopen(L); // [cjson(1000) cjson(3) ours]
    lua_getfield(L, 3, "decode");
    lua_getupvalue(L, -1, 1); // its fast function
    lua_replace(L, FAST_FN);
    lua_settop(L, FAST_FN);
  }
  check(data, size, 1, 1000, 0);
  check(data, size, 2, 3, 0);
  check(data, size, 1, 1000, 1);
  if (++runs % 1000 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
