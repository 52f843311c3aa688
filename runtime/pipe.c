// pipe.c: uv_pipe as `_core.pipe(ipc, [cb])`: child stdio pipes, and Unix-domain sockets for
// net (bind/listen/accept/connect). Events go to the handle's callback as for tcp:
// cb('connection', err?, code?), cb('connect', err?, code?) and the stream events.

#include "lc.h"

#define MT "lc.pipe"

// _core.pipe(ipc, [cb]) -> pipe
static int pipe_new(lua_State *L) {
  int ipc = lua_toboolean(L, 1);
  lua_settop(L, 2); // [ipc, cb] (the cb may be absent)
  lc_stream_t *s = lc_handle_new_ud(L, LC_STREAM_SIZE(pipe), sizeof(lc_stream_ud_t), MT, 2);
  uv_pipe_init(lc_loop, &s->u.pipe, ipc);
  lc_stream_init(s, LC_STREAM_PIPE, lua_touserdata(L, -1));
  return 1;
}

// pipe:open(fd): wraps an existing file descriptor.
static int pipe_open(lua_State *L) {
  lc_stream_t *s = lc_handle_check(L, 1, MT);
  return lc_util_push_result(L, uv_pipe_open(&s->u.pipe, (int)luaL_checkinteger(L, 2)));
}

// pipe:bind(path) -> true | nil, err, code. libuv unlinks the file when the handle closes.
static int pipe_bind(lua_State *L) {
  lc_stream_t *s = lc_handle_check(L, 1, MT);
  return lc_util_push_result(L, uv_pipe_bind(&s->u.pipe, luaL_checkstring(L, 2)));
}

// pipe:accept([cb [, ctx]]) -> new pipe | nil, err, code. cb receives the new handle's events,
// as cb(ctx, event, ...) when ctx (a table) is given.
static int pipe_accept(lua_State *L) {
  lc_stream_t *server = lc_handle_check(L, 1, MT);
  lua_settop(L, 3); // [server, cb, ctx] (may be nil)
  lc_stream_t *c =
      lc_handle_new_ud(L, LC_STREAM_SIZE(pipe), sizeof(lc_stream_ud_t), MT, 2); // [.., client]
  uv_pipe_init(lc_loop, &c->u.pipe, server->u.pipe.ipc);
  lc_stream_init(c, LC_STREAM_PIPE, lua_touserdata(L, -1));
  lc_stream_set_ctx(L, c, -1, 3);
  return lc_stream_accept(L, server, c);
}

// pipe:connect(path) -> true | nil, err, code; then cb('connect', err?, code?). libuv reports
// every failure through the callback.
static int pipe_connect(lua_State *L) {
  lc_stream_t *s = lc_handle_check(L, 1, MT);
  const char *path = luaL_checkstring(L, 2);
  uv_connect_cb cb;
  uv_connect_t *req = lc_stream_connect_req(s, &cb);
  if (req == NULL) return lc_util_push_uverr(L, UV_ENOMEM);
  uv_pipe_connect(req, &s->u.pipe, path, cb);
  lua_pushboolean(L, 1);
  return 1;
}

// pipe:getsockname() -> path | nil, err, code
static int pipe_getsockname(lua_State *L) {
  lc_stream_t *s = lc_handle_check(L, 1, MT);
  char buf[1024];
  size_t len = sizeof(buf);
  int rc = uv_pipe_getsockname(&s->u.pipe, buf, &len);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  lua_pushlstring(L, buf, len);
  return 1;
}

// pipe:set_callback(fn|nil): replaces the function events go to.
static int pipe_set_callback(lua_State *L) {
  lc_stream_t *s = lc_handle_check(L, 1, MT);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lc_util_unref(L, s->h.cb_ref);
  s->h.cb_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 2)) {
    lua_pushvalue(L, 2);
    s->h.cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

void lc_pipe_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"open", pipe_open},
                                     {"bind", pipe_bind},
                                     {"accept", pipe_accept},
                                     {"connect", pipe_connect},
                                     {"getsockname", pipe_getsockname},
                                     {"set_callback", pipe_set_callback},
                                     {NULL, NULL}};
  lc_handle_meta(L, MT, methods, lc_stream_add_methods);
  lua_pushcfunction(L, pipe_new);
  lua_setfield(L, -2, "pipe");
}
