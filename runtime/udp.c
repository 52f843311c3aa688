// udp.c: uv_udp as `_core.udp([cb])`. Events go to the handle's callback:
// cb('message', data, {address=, family=, port=, size=}) and cb('error', err, code).
// Reads use one static buffer: each datagram is copied into a Lua string at once.
#include <stdlib.h>
#include <string.h>

#include "lc.h"

#define MT "lc.udp"

typedef struct {
  lc_handle_t h;
  uv_udp_t udp;
} lc_udp_t;

typedef struct {
  uv_udp_send_t req;
  int data_ref;
  int cb_ref;
} send_req_t;

static char recv_buf[65536];

static lc_udp_t *check_udp(lua_State *L, int idx) {
  return lc_handle_check(L, idx, MT);
}

// Calls the handle's callback with the event name and the nargs values on the stack.
static void emit(lua_State *L, lc_udp_t *u, const char *event, int nargs) {
  if (!lc_handle_push_cb(L, &u->h)) {
    lua_pop(L, nargs);
    return;
  }
  lua_pushstring(L, event);
  lua_insert(L, -2 - nargs); // [event, args..., cb]
  lua_insert(L, -2 - nargs); // [cb, event, args...]
  lc_pcall(L, nargs + 1, 0);
}

// _core.udp([cb]) -> udp
static int udp_new(lua_State *L) {
  lua_settop(L, 1);                                  // [cb]
  lc_udp_t *u = lc_handle_new(L, sizeof(*u), MT, 1); // [cb, ud]
  int rc = uv_udp_init(lc_loop, &u->udp);
  if (rc < 0) return luaL_error(L, "uv_udp_init: %s", uv_strerror(rc));
  u->h.uv = (uv_handle_t *)&u->udp;
  u->udp.data = u;
  return 1;
}

// udp:bind(host, port [, {reuseaddr=, ipv6only=}]) -> true | nil, err, code
static int udp_bind(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = (int)luaL_checkinteger(L, 3);
  unsigned int flags = 0;
  if (lua_istable(L, 4)) {
    lua_getfield(L, 4, "reuseaddr"); // [.., v]
    if (lua_toboolean(L, -1)) flags |= UV_UDP_REUSEADDR;
    lua_getfield(L, 4, "ipv6only"); // [.., v, v]
    if (lua_toboolean(L, -1)) flags |= UV_UDP_IPV6ONLY;
    lua_pop(L, 2); // [..]
  }
  struct sockaddr_storage ss;
  int rc = lc_util_parse_addr(host, port, &ss);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  return lc_util_push_result(L, uv_udp_bind(&u->udp, (struct sockaddr *)&ss, flags));
}

// udp:open(fd): wraps a datagram socket descriptor (e.g. one received from the master).
static int udp_open(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_open(&u->udp, (uv_os_sock_t)luaL_checkinteger(L, 2)));
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = recv_buf;
  buf->len = sizeof(recv_buf);
}

static void recv_cb(uv_udp_t *handle, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags) {
  lc_udp_t *u = handle->data;
  lua_State *L = lc_L;
  (void)flags;
  if (u->h.closing) return;
  if (nread < 0) {
    lua_pushfstring(L, "%s: %s", uv_err_name((int)nread), uv_strerror((int)nread));
    lua_pushstring(L, uv_err_name((int)nread));
    emit(L, u, "error", 2);
    return;
  }
  if (addr == NULL) return;                     // nothing more to read this time
  lua_pushlstring(L, buf->base, (size_t)nread); // [data]
  lc_util_push_addr(L, addr);                   // [data, rinfo]
  if (lua_istable(L, -1)) {
    lua_pushinteger(L, nread);
    lua_setfield(L, -2, "size");
  }
  emit(L, u, "message", 2);
}

// udp:recv_start() -> true | nil, err, code
static int udp_recv_start(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_recv_start(&u->udp, alloc_cb, recv_cb));
}

static int udp_recv_stop(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_recv_stop(&u->udp));
}

static void send_cb(uv_udp_send_t *req, int status) {
  send_req_t *r = (send_req_t *)req;
  lua_State *L = lc_L;
  luaL_unref(L, LUA_REGISTRYINDEX, r->data_ref);
  int cb_ref = r->cb_ref;
  free(r);
  if (cb_ref == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, cb_ref); // [fn]
  luaL_unref(L, LUA_REGISTRYINDEX, cb_ref);
  if (status < 0) {
    lua_pushfstring(L, "%s: %s", uv_err_name(status), uv_strerror(status));
  } else {
    lua_pushnil(L);
  }
  lc_pcall(L, 1, 0); // []
}

// udp:send(data, host, port [, fn(err)]) -> true | nil, err, code. The host is numeric. The
// string stays referenced until libuv is done with it.
static int udp_send(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  const char *host = luaL_checkstring(L, 3);
  int port = (int)luaL_checkinteger(L, 4);
  int has_cb = lua_isfunction(L, 5);
  struct sockaddr_storage ss;
  int rc = lc_util_parse_addr(host, port, &ss);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned int)len);
  // Without a callback, try at once: most datagrams go out here with no request at all.
  if (!has_cb && u->udp.send_queue_count == 0) {
    rc = uv_udp_try_send(&u->udp, &buf, 1, (struct sockaddr *)&ss);
    if (rc >= 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
    if (rc != UV_EAGAIN && rc != UV_ENOSYS) return lc_util_push_uverr(L, rc);
  }
  send_req_t *r = malloc(sizeof(*r));
  if (r == NULL) return lc_util_push_uverr(L, UV_ENOMEM);
  lua_pushvalue(L, 2);
  r->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  r->cb_ref = LUA_NOREF;
  if (has_cb) {
    lua_pushvalue(L, 5);
    r->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rc = uv_udp_send(&r->req, &u->udp, &buf, 1, (struct sockaddr *)&ss, send_cb);
  if (rc < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->data_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, r->cb_ref);
    free(r);
    return lc_util_push_uverr(L, rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

// udp:getsockname() -> {address=, family=, port=} | nil, err, code
static int udp_getsockname(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  int rc = uv_udp_getsockname(&u->udp, (struct sockaddr *)&ss, &len);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  lc_util_push_addr(L, (struct sockaddr *)&ss);
  return 1;
}

static int udp_set_broadcast(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_set_broadcast(&u->udp, lua_toboolean(L, 2)));
}

static int udp_set_ttl(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_set_ttl(&u->udp, (int)luaL_checkinteger(L, 2)));
}

static int udp_set_multicast_ttl(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_set_multicast_ttl(&u->udp, (int)luaL_checkinteger(L, 2)));
}

static int udp_set_multicast_loopback(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  return lc_util_push_result(L, uv_udp_set_multicast_loop(&u->udp, lua_toboolean(L, 2)));
}

static int membership(lua_State *L, uv_membership m) {
  lc_udp_t *u = check_udp(L, 1);
  const char *group = luaL_checkstring(L, 2);
  const char *iface = luaL_optstring(L, 3, NULL);
  return lc_util_push_result(L, uv_udp_set_membership(&u->udp, group, iface, m));
}

// udp:add_membership(group [, iface]) / udp:drop_membership(group [, iface])
static int udp_add_membership(lua_State *L) {
  return membership(L, UV_JOIN_GROUP);
}

static int udp_drop_membership(lua_State *L) {
  return membership(L, UV_LEAVE_GROUP);
}

// udp:set_callback(fn|nil): replaces the function events go to.
static int udp_set_callback(lua_State *L) {
  lc_udp_t *u = check_udp(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, u->h.cb_ref);
  u->h.cb_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 2)) {
    lua_pushvalue(L, 2);
    u->h.cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

void lc_udp_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"bind", udp_bind},
                                     {"open", udp_open},
                                     {"recv_start", udp_recv_start},
                                     {"recv_stop", udp_recv_stop},
                                     {"send", udp_send},
                                     {"getsockname", udp_getsockname},
                                     {"set_broadcast", udp_set_broadcast},
                                     {"set_ttl", udp_set_ttl},
                                     {"set_multicast_ttl", udp_set_multicast_ttl},
                                     {"set_multicast_loopback", udp_set_multicast_loopback},
                                     {"add_membership", udp_add_membership},
                                     {"drop_membership", udp_drop_membership},
                                     {"set_callback", udp_set_callback},
                                     {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, udp_new);
  lua_setfield(L, -2, "udp");
}
