// main.c: the process entry. It builds the one Lua state, registers the embedded lualib and
// hands the command line to lualib/_main.lua, which decides what to run. Everything after
// start-up happens in callbacks from the libuv loop, each entered through lc_pcall.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bigalloc.h"
#include "lc.h"

lua_State *lc_L;
uv_loop_t *lc_loop;

extern int lc_cjson_luaopen(lua_State *L); // runtime/cjson.c
extern int lc_cjson_safe_luaopen(lua_State *L);

static int uncaught_ref = LUA_NOREF;

// The message handler for every protected call: returns {err, traceback} packed in two
// upvalue-free values. Lua 5.1's handler may return only one value, so the traceback string
// is returned and the original error object is kept in the registry slot "lc.lasterr".
static int traceback(lua_State *L) {
  lua_pushvalue(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "lc.lasterr"); // []
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
      msg = lua_tostring(L, -1);
    } else {
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
  }
  lua_getglobal(L, "debug");        // [debug]
  lua_getfield(L, -1, "traceback"); // [debug, traceback]
  lua_pushstring(L, msg);
  lua_pushinteger(L, 2);
  lua_call(L, 2, 1); // [debug, tb]
  return 1;
}

static void report_and_exit(const char *tb) {
  fprintf(stderr, "lcluster: uncaught error: %s\n", tb ? tb : "(no message)");
  lc_exit(1);
}

int lc_pcall(lua_State *L, int nargs, int nresults) {
  // The handler is created once and kept in the registry: lua_pushcfunction allocates a new
  // closure on every call, and this runs for every event (every HTTP request).
  static int traceback_ref = LUA_NOREF;
  int base = lua_gettop(L) - nargs; // index of the function
  if (traceback_ref == LUA_NOREF) {
    lua_pushcfunction(L, traceback);
    traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (rc == 0) return 0;
  // [tb]
  if (rc == LUA_ERRMEM) report_and_exit("not enough memory");
  if (uncaught_ref == LUA_NOREF) report_and_exit(lua_tostring(L, -1));
  lua_rawgeti(L, LUA_REGISTRYINDEX, uncaught_ref);  // [tb, handler]
  lua_getfield(L, LUA_REGISTRYINDEX, "lc.lasterr"); // [tb, handler, err]
  lua_pushvalue(L, -3);                             // [tb, handler, err, tb]
  // The handler decides: it returns true when the error was handled. An error inside the
  // handler itself is reported with its own traceback.
  lua_pushcfunction(L, traceback);
  lua_insert(L, -4); // [tb, msgh, handler, err, tb]
  int hrc = lua_pcall(L, 2, 1, -4);
  if (hrc != 0) {
    fprintf(stderr, "lcluster: error in uncaught-error handler: %s\n", lua_tostring(L, -1));
    report_and_exit(lua_tostring(L, -3));
  }
  int handled = lua_toboolean(L, -1);
  if (!handled) report_and_exit(lua_tostring(L, -3));
  lua_pop(L, 3); // []
  return -1;
}

void lc_exit(int code) {
  fflush(stdout);
  fflush(stderr);
  // Closing the state runs every __gc, so memory owned by Lua objects (parser buffers,
  // lua-cjson's buffer) is released and the sanitizer and valgrind builds see no leak.
  // LuaJIT's own os.exit(code, true) closes the state from inside a call the same way; we
  // never return to Lua afterwards.
  if (lc_L != NULL) {
    lua_State *L = lc_L;
    lc_L = NULL;
    lua_close(L);
    lc_bigalloc_release();
  }
  exit(code);
}

int lc_set_uncaught(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (uncaught_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, uncaught_ref);
  lua_pushvalue(L, 1);
  uncaught_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int lc_call(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int rc = lc_pcall(L, lua_gettop(L) - 1, 0);
  lua_pushboolean(L, rc == 0);
  return 1;
}

static void preload(lua_State *L, const char *name, lua_CFunction fn) {
  lua_getglobal(L, "package");    // [package]
  lua_getfield(L, -1, "preload"); // [package, preload]
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, name);
  lua_pop(L, 2); // []
}

int main(int argc, char **argv) {
  argv = uv_setup_args(argc, argv);
  // Logs must reach files and pipes at once; line buffering gives whole lines per write.
  setvbuf(stdout, NULL, _IOLBF, 0);
  setvbuf(stderr, NULL, _IOLBF, 0);
  // A write to a closed pipe or socket is an EPIPE error, never a signal that kills us.
  signal(SIGPIPE, SIG_IGN);

  lc_loop = uv_default_loop();
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "lcluster: cannot create the Lua state\n");
    return 1;
  }
  // Large blocks get fresh-page-free reuse (runtime/bigalloc.c); only this state.
  lc_bigalloc_install(L);
  lc_L = L;
  luaL_openlibs(L);
  preload(L, "cjson", lc_cjson_luaopen);
  preload(L, "cjson.safe", lc_cjson_safe_luaopen);
  preload(L, "_core", lc_core_luaopen);
  preload(L, "_luv", lc_luv_luaopen);
  lc_lualib_register(L);

  lua_pushcfunction(L, traceback); // [msgh]
  lua_getglobal(L, "require");     // [msgh, require]
  lua_pushliteral(L, "_main");
  if (lua_pcall(L, 1, 1, 1) != 0) {
    fprintf(stderr, "lcluster: cannot start: %s\n", lua_tostring(L, -1));
    return 1;
  }
  // [msgh, main]
  lua_newtable(L); // [msgh, main, argv]
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  if (lua_pcall(L, 1, 1, 1) != 0) {
    fprintf(stderr, "lcluster: uncaught error: %s\n", lua_tostring(L, -1));
    lc_exit(1);
  }
  int code = (int)lua_tointeger(L, -1);
  lc_exit(code);
}
