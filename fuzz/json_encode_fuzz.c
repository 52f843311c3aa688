// json_encode_fuzz.c: libFuzzer harness for the cjson.encode fast path (runtime/json_encode.c)
// against lua-cjson's own encode. The input is a small program that builds Lua values on the
// stack (numbers from any 8 bytes, strings of any bytes, tables of any pre-size, keys of
// every type set raw or by index, shared and cyclic references, cjson.null, a function);
// its first bytes pick the encode settings, applied to both modules. The built-in module
// (lc_cjson_luaopen: the fast path installed) and a plain lua-cjson module (luaopen_cjson)
// then encode the same value: the same string or the same error, else abort. Corpus in
// corpus/json_encode/. The fast path reads tables in place; with LC_JSON_ENCODE=api in the
// environment it goes through the Lua C API instead (run both). Long strings (op 12: a few
// KiB, around multiples of the encoder's 4 KiB escape pieces, cycling input bytes) cross the
// pieces' edges. Each value is also encoded by lc_json_encode_to into a malloc'd region of a
// size the input picks (the IPC channel's encode into its ring): the output must be the
// encode's, in the region when it fits, and never written past it (ASan).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "json_encode.h"

int luaopen_cjson(lua_State *L);
int lc_cjson_luaopen(lua_State *L);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define MAX_ITEMS 200 // values on the stack
#define MAX_TABS 32   // tables addressable by the program

// Compares the two modules' encode of the value on top (registry refs to the modules).
static const char compare[] = "local ours, orig, v = ...\n"
                              "local ok1, r1 = pcall(ours.encode, v)\n"
                              "local ok2, r2 = pcall(orig.encode, v)\n"
                              "if ok1 ~= ok2 or r1 ~= r2 then\n"
                              "  error(('ours %s %q\\norig %s %q'):format(tostring(ok1),\n"
                              "    tostring(r1), tostring(ok2), tostring(r2)))\n"
                              "end\n";

static const char settings[] = "local m, convert, ratio, safe, depth, prec, inv = ...\n"
                               "m.encode_sparse_array(convert, ratio, safe)\n"
                               "m.encode_max_depth(depth)\n"
                               "m.encode_number_precision(prec)\n"
                               "m.encode_invalid_numbers(({false, true, 'null'})[inv + 1])\n";

static void must(lua_State *L, int status) {
  if (status != 0) {
    fprintf(stderr, "json_encode_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
}

static void apply(lua_State *L, int settings_ref, int mod_ref, const unsigned char *s) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, settings_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, mod_ref);
  lua_pushboolean(L, s[0] & 1);
  lua_pushinteger(L, (s[0] >> 1) % 5); // ratio 0..4
  lua_pushinteger(L, s[1] % 16);       // safe
  lua_pushinteger(L, 1 + s[2] % 24);   // max depth
  lua_pushinteger(L, 1 + s[3] % 14);   // precision
  lua_pushinteger(L, s[0] >> 6 < 3 ? s[0] >> 6 : 0);
  must(L, lua_pcall(L, 7, 0, 0));
}

static lua_State *L;

// At exit, before LeakSanitizer looks: lua-cjson's buffers are owned by Lua objects, which
// live in LuaJIT's own mmap'd heap where LSan does not look for pointers.
static void close_state(void) {
  lua_close(L);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static int ours_ref, orig_ref, compare_ref, settings_ref;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    atexit(close_state);
    lc_cjson_luaopen(L);
    ours_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaopen_cjson(L);
    orig_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    must(L, luaL_loadstring(L, compare));
    compare_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    must(L, luaL_loadstring(L, settings));
    settings_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (size < 4) return 0;
  apply(L, settings_ref, ours_ref, data);
  apply(L, settings_ref, orig_ref, data);
  int ratio0 = (data[0] >> 1) % 5 == 0;
  const unsigned char *p = data + 4, *end = data + size;
  int base = lua_gettop(L);
  lua_checkstack(L, MAX_ITEMS + 8);
  // The tables built, in a list at base + 1 (values are popped off the stack as they are set).
  lua_newtable(L);
  int tabs = base + 1, ntabs = 0;
  while (p < end && lua_gettop(L) - tabs < MAX_ITEMS) {
    int op = *p++ % 13;
    int b = p < end ? *p : 0;
    switch (op) {
    case 0:
      lua_pushnil(L);
      break;
    case 1:
      lua_pushboolean(L, b & 1);
      p++;
      break;
    case 2:
      lua_pushlightuserdata(L, NULL); // cjson.null
      break;
    case 3:
      lua_pushnumber(L, (signed char)b);
      p++;
      break;
    case 4: { // any double, NaN and infinities included
      double d = 0;
      size_t n = (size_t)(end - p) < sizeof(d) ? (size_t)(end - p) : sizeof(d);
      memcpy(&d, p, n);
      p += n;
      lua_pushnumber(L, d);
      break;
    }
    case 5: { // a string of any bytes
      size_t n = (size_t)b;
      p++;
      if (n > (size_t)(end - p)) n = (size_t)(end - p);
      lua_pushlstring(L, (const char *)p, n);
      p += n;
      break;
    }
    case 6: // a table with array and hash parts pre-sized
      lua_createtable(L, b & 15, b >> 4);
      p++;
      if (ntabs < MAX_TABS) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, tabs, ++ntabs);
      }
      break;
    case 7: { // t[k] = v (k, v popped), t picked by the next byte
      p++;
      if (ntabs == 0 || lua_gettop(L) - tabs < 2) break;
      // A nil or NaN key cannot be set; a large positive integer key with ratio 0 would
      // make both encoders write millions of nulls: negated.
      if (lua_isnil(L, -2) ||
          (lua_type(L, -2) == LUA_TNUMBER && lua_tonumber(L, -2) != lua_tonumber(L, -2))) {
        lua_pop(L, 2);
        break;
      }
      if (ratio0 && lua_type(L, -2) == LUA_TNUMBER && lua_tonumber(L, -2) > 300) {
        lua_pushnumber(L, -lua_tonumber(L, -2));
        lua_replace(L, -3);
      }
      lua_rawgeti(L, tabs, b % ntabs + 1); // [k v t]
      lua_insert(L, -3);                   // [t k v]
      lua_rawset(L, -3);
      lua_pop(L, 1);
      break;
    }
    case 8: { // t[i] = v (v popped), t and i from the next bytes
      p++;
      int i = p < end ? (signed char)*p++ : 1;
      if (ntabs == 0 || lua_gettop(L) - tabs < 1) break;
      lua_rawgeti(L, tabs, b % ntabs + 1); // [v t]
      lua_insert(L, -2);                   // [t v]
      lua_rawseti(L, -2, i);
      lua_pop(L, 1);
      break;
    }
    case 9: // an existing table again: shared and cyclic references
      if (ntabs) lua_rawgeti(L, tabs, b % ntabs + 1);
      p++;
      break;
    case 10:
      lua_pushcfunction(L, luaopen_cjson); // a function: refused
      break;
    case 12: { // a long string: 1-4 pieces of 4096 bytes, +-127, cycling the next 1-8 bytes
      if (p < end) p++;
      int d = p < end ? (int)*p++ - 128 : 0;
      size_t plen = 1 + (size_t)((b >> 2) & 7), n = 4096 * (size_t)(1 + (b & 3)) + (size_t)d;
      if (plen > (size_t)(end - p)) plen = (size_t)(end - p);
      char pat[8] = "a";
      memcpy(pat, p, plen);
      p += plen;
      if (plen == 0) plen = 1;
      char *buf = malloc(n);
      if (buf == NULL) abort();
      for (size_t i = 0; i < n; i++)
        buf[i] = pat[i % plen];
      lua_pushlstring(L, buf, n);
      free(buf);
      break;
    }
    default: // a table as a key (refused) or a small positive integer
      if (b & 1) {
        lua_newtable(L);
      } else {
        lua_pushnumber(L, b >> 1);
      }
      p++;
      break;
    }
  }
  // The first table built, or the top value (nil if none).
  int top = lua_gettop(L);
  if (ntabs) {
    lua_rawgeti(L, tabs, 1);
  } else if (top > tabs) {
    lua_pushvalue(L, top);
  } else {
    lua_pushnil(L);
  }
  int v = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, compare_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ours_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, orig_ref);
  lua_pushvalue(L, v);
  must(L, lua_pcall(L, 3, 0, 0));
  // Into a lent region: the same output as ours.encode, or declined where ours may go to
  // lua-cjson.
  lua_rawgeti(L, LUA_REGISTRYINDEX, ours_ref);
  lua_getfield(L, -1, "encode");
  int fn = lua_gettop(L);
  size_t cap = data[2] & 1 ? (size_t)data[1] * 4 : (size_t)data[1] * 160;
  char *dst = cap > 0 ? malloc(cap) : NULL;
  lc_json_out o;
  if (lc_json_encode_to(L, fn, v, dst, cap, &o) == 0) {
    if (o.in_dst && (dst == NULL || o.data != dst || o.len > cap)) abort();
    lua_pushlstring(L, o.data, o.len);
    lc_json_out_done();
    lua_pushvalue(L, fn);
    lua_pushvalue(L, v);
    must(L, lua_pcall(L, 1, 1, 0));
    if (!lua_rawequal(L, -1, -2)) {
      fprintf(stderr, "json_encode_fuzz: lc_json_encode_to %s\nencode %s\n", lua_tostring(L, -2),
              lua_tostring(L, -1));
      abort();
    }
  }
  free(dst);
  lua_settop(L, base);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
