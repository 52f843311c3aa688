// pipe.c: uv_pipe as `_core.pipe(ipc, cb)`: child stdio pipes, and (see net) Unix sockets.
#include "lc.h"

#define MT "lc.pipe"

// _core.pipe(ipc, cb) -> pipe
static int pipe_new(lua_State *L) {
  int ipc = lua_toboolean(L, 1);
  lc_stream_t *s = lc_handle_new(L, sizeof(*s), MT, 2);
  uv_pipe_init(lc_loop, &s->u.pipe, ipc);
  lc_stream_init(s, LC_STREAM_PIPE);
  return 1;
}

// pipe:open(fd): wraps an existing file descriptor.
static int pipe_open(lua_State *L) {
  lc_stream_t *s = lc_handle_check(L, 1, MT);
  return lc_util_push_result(L, uv_pipe_open(&s->u.pipe, (int)luaL_checkinteger(L, 2)));
}

void lc_pipe_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"open", pipe_open}, {NULL, NULL}};
  lc_handle_meta(L, MT, methods, lc_stream_add_methods);
  lua_pushcfunction(L, pipe_new);
  lua_setfield(L, -2, "pipe");
}
