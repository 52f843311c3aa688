// tcp.c: uv_tcp as `_core.tcp([cb])`, a stream (read/write methods from stream.c). Events go
// to the handle's callback: cb('connection', err?, code?) on a listening handle,
// cb('connect', err?, code?) after connect, and the stream events from stream.c. One libuv
// call per binding; net.lua holds the policy.
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lc.h"

#define MT "lc.tcp"

static lc_stream_t *check_tcp(lua_State *L, int idx) {
  return lc_handle_check(L, idx, MT);
}

// The bytes of a TCP stream, with the room after its handle when asked (lc_stream_room).
static size_t tcp_size(int room) {
  return LC_STREAM_SIZE(tcp) + (room ? LC_STREAM_ROOM_SIZE : 0);
}

// _core.tcp([cb [, room]]) -> tcp. cb may be nil for a handle whose callback is set later
// (set_callback), e.g. one wrapping a descriptor received from another process; room: see
// LC_STREAM_ROOM_SIZE.
static int tcp_new(lua_State *L) {
  lua_settop(L, 2); // [cb, room]
  int room = lua_toboolean(L, 2);
  lc_stream_t *s =
      lc_handle_new_ud(L, tcp_size(room), sizeof(lc_stream_ud_t), MT, 1); // [cb, room, ud]
  int rc = uv_tcp_init(lc_loop, &s->u.tcp);
  if (rc < 0) return luaL_error(L, "uv_tcp_init: %s", uv_strerror(rc));
  lc_stream_init(s, LC_STREAM_TCP, lua_touserdata(L, -1));
  s->room = (uint8_t)room;
  return 1;
}

// Creates the socket of `ss`'s family with SO_REUSEPORT set and hands it to the handle:
// libuv 1.44 has no flag for it.
static int open_reuseport(lc_stream_t *s, const struct sockaddr_storage *ss) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return uv_translate_sys_error(errno);
  int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    return err;
  }
  int rc = uv_tcp_open(&s->u.tcp, fd);
  if (rc < 0) close(fd);
  return rc;
}

// tcp:bind(host, port [, {ipv6only=, reuseport=}]) -> true | nil, err, code. The host is
// numeric; an address in use may only be reported by listen (libuv defers it).
static int tcp_bind(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = (int)luaL_checkinteger(L, 3);
  unsigned int flags = 0;
  int reuseport = 0;
  if (lua_istable(L, 4)) {
    lua_getfield(L, 4, "ipv6only"); // [.., v]
    if (lua_toboolean(L, -1)) flags |= UV_TCP_IPV6ONLY;
    lua_getfield(L, 4, "reuseport"); // [.., v, v]
    reuseport = lua_toboolean(L, -1);
    lua_pop(L, 2); // [..]
  }
  struct sockaddr_storage ss;
  int rc = lc_util_parse_addr(host, port, &ss);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  if (reuseport) {
    rc = open_reuseport(s, &ss);
    if (rc < 0) return lc_util_push_uverr(L, rc);
  }
  return lc_util_push_result(L, uv_tcp_bind(&s->u.tcp, (struct sockaddr *)&ss, flags));
}

// tcp:accept([cb [, ctx [, room]]]) -> new tcp | nil, err, code. cb receives the new
// handle's events, as cb(ctx, event, ...) when ctx (a table) is given; room: see
// LC_STREAM_ROOM_SIZE.
static int tcp_accept(lua_State *L) {
  lc_stream_t *server = check_tcp(L, 1);
  lua_settop(L, 4); // [server, cb, ctx, room] (may be nil)
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  int room = lua_toboolean(L, 4);
  lc_stream_t *c =
      lc_handle_new_ud(L, tcp_size(room), sizeof(lc_stream_ud_t), MT, 0); // [.., client]
  int rc = uv_tcp_init(lc_loop, &c->u.tcp);
  if (rc < 0) return luaL_error(L, "uv_tcp_init: %s", uv_strerror(rc));
  lc_stream_init(c, LC_STREAM_TCP, lua_touserdata(L, -1));
  c->room = (uint8_t)room;
  lc_stream_set_ctx(L, c, -1, 3);
  if (!lua_isnil(L, 2)) {
    // With a ctx the function serves every connection: one reference for all of them.
    if (c->has_ctx) {
      c->h.cb_ref = lc_util_ref_shared(L, 2);
    } else {
      lua_pushvalue(L, 2);
      c->h.cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  return lc_stream_accept(L, server, c);
}

// tcp:connect(host, port) -> true | nil, err, code; then cb('connect', err?, code?).
static int tcp_connect(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = (int)luaL_checkinteger(L, 3);
  struct sockaddr_storage ss;
  int rc = lc_util_parse_addr(host, port, &ss);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  uv_connect_cb cb;
  uv_connect_t *req = lc_stream_connect_req(s, &cb);
  if (req == NULL) return lc_util_push_uverr(L, UV_ENOMEM);
  rc = uv_tcp_connect(req, &s->u.tcp, (struct sockaddr *)&ss, cb);
  if (rc < 0) {
    lc_stream_connect_failed(req);
    return lc_util_push_uverr(L, rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

// tcp:open(fd): wraps a socket descriptor (e.g. one received from another process).
static int tcp_open(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  return lc_util_push_result(L, uv_tcp_open(&s->u.tcp, (uv_os_sock_t)luaL_checkinteger(L, 2)));
}

static int tcp_nodelay(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  return lc_util_push_result(L, uv_tcp_nodelay(&s->u.tcp, lua_toboolean(L, 2)));
}

// tcp:keepalive(enable, delay_seconds)
static int tcp_keepalive(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  int enable = lua_toboolean(L, 2);
  unsigned int delay = (unsigned int)luaL_optinteger(L, 3, 0);
  if (enable && delay == 0) delay = 1;
  return lc_util_push_result(L, uv_tcp_keepalive(&s->u.tcp, enable, delay));
}

// tcp:getsockname() -> {address=, family=, port=} | nil, err, code
static int tcp_getsockname(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  int rc = uv_tcp_getsockname(&s->u.tcp, (struct sockaddr *)&ss, &len);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  lc_util_push_addr(L, (struct sockaddr *)&ss);
  return 1;
}

static int tcp_getpeername(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  int rc = uv_tcp_getpeername(&s->u.tcp, (struct sockaddr *)&ss, &len);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  lc_util_push_addr(L, (struct sockaddr *)&ss);
  return 1;
}

// tcp:set_callback(fn|nil [, ctx]): replaces the function events go to (a handle received
// from another process is created before the object that owns it); with ctx (a table),
// events go to fn(ctx, event, ...) (stream:set_ctx).
static int tcp_set_callback(lua_State *L) {
  lc_stream_t *s = check_tcp(L, 1);
  if (lua_gettop(L) >= 3) lc_stream_set_ctx(L, s, 1, 3);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lc_util_unref(L, s->h.cb_ref);
  s->h.cb_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 2)) {
    if (s->has_ctx) {
      s->h.cb_ref = lc_util_ref_shared(L, 2); // see tcp_accept
    } else {
      lua_pushvalue(L, 2);
      s->h.cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  return 0;
}

void lc_tcp_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"bind", tcp_bind},
                                     {"accept", tcp_accept},
                                     {"connect", tcp_connect},
                                     {"open", tcp_open},
                                     {"nodelay", tcp_nodelay},
                                     {"keepalive", tcp_keepalive},
                                     {"getsockname", tcp_getsockname},
                                     {"getpeername", tcp_getpeername},
                                     {"set_callback", tcp_set_callback},
                                     {NULL, NULL}};
  lc_handle_meta(L, MT, methods, lc_stream_add_methods);
  lua_pushcfunction(L, tcp_new);
  lua_setfield(L, -2, "tcp");
}
