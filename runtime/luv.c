// luv.c: `require('luv')` is Debian's lua-luv (linked statically) on the runtime's own loop.
// Its callbacks enter Lua through lc_pcall, so an error in one is an uncaught error like any
// other (process 'uncaughtException', or traceback and exit 1), never luv's own handler,
// which prints and exits on its own terms.
// luv.h declares `luv_acquire_vm` as `lua_State *(*)()`, an old-style declaration our
// warning set rejects; it is luv's header, not ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <luv.h>
#pragma GCC diagnostic pop

#include "lc.h"

// luv's callback hook: the function and nargs arguments are on the stack; on success the
// results are left and their count returned, on error nothing is left and a negative code
// is returned (the contract in luv.h). lc_pcall has already handled the error by then.
static int luv_pcall(lua_State *L, int nargs, int nresults, int flags) {
  (void)flags;
  int base = lua_gettop(L) - nargs - 1;
  if (lc_pcall(L, nargs, nresults) != 0) return -LUA_ERRRUN;
  return lua_gettop(L) - base;
}

int lc_luv_luaopen(lua_State *L) {
  // Both must be set before luaopen_luv, which otherwise creates a loop of its own.
  luv_set_loop(L, lc_loop);
  luv_set_callback(L, luv_pcall);
  return luaopen_luv(L); // [luv]
}
