// dns.c: name resolution through libuv's thread pool: `_core.getaddrinfo(host, port|nil,
// family|nil, cb)` -> cb(err, {{address=, family=}, ...}), and `_core.isip(s)` -> 4, 6 or 0.
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lc.h"

typedef struct {
  uv_getaddrinfo_t req;
  int cb_ref;
} gai_req_t;

static void on_getaddrinfo(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  gai_req_t *r = (gai_req_t *)req;
  lua_State *L = lc_L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->cb_ref); // [cb]
  luaL_unref(L, LUA_REGISTRYINDEX, r->cb_ref);
  free(r);
  if (status < 0) {
    lua_pushfstring(L, "%s: %s", uv_err_name(status), uv_strerror(status)); // [cb, err]
    lua_pushnil(L);                                                         // [cb, err, nil]
    lua_pushstring(L, uv_err_name(status));                                 // [cb, err, nil, code]
    lc_pcall(L, 3, 0);
    uv_freeaddrinfo(res);
    return;
  }
  lua_pushnil(L);  // [cb, nil]
  lua_newtable(L); // [cb, nil, list]
  int n = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    lc_util_push_addr(L, ai->ai_addr); // [cb, nil, list, addr]
    lua_rawseti(L, -2, ++n);           // [cb, nil, list]
  }
  uv_freeaddrinfo(res);
  lc_pcall(L, 2, 0); // []
}

// _core.getaddrinfo(host, port|nil, family|nil, cb) -> true | nil, err, code. family is 4, 6,
// 'IPv4', 'IPv6' or nil/0 for both. The result lists stream-socket addresses (one per
// address, in the resolver's order).
static int dns_getaddrinfo(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  char portbuf[16];
  const char *service = NULL;
  if (!lua_isnoneornil(L, 2)) {
    snprintf(portbuf, sizeof(portbuf), "%d", (int)luaL_checkinteger(L, 2));
    service = portbuf;
  }
  int family = AF_UNSPEC;
  if (lua_type(L, 3) == LUA_TNUMBER) {
    int f = (int)lua_tointeger(L, 3);
    if (f == 4)
      family = AF_INET;
    else if (f == 6)
      family = AF_INET6;
    else if (f != 0)
      return luaL_argerror(L, 3, "family must be 4, 6 or 0");
  } else if (lua_type(L, 3) == LUA_TSTRING) {
    const char *f = lua_tostring(L, 3);
    if (strcmp(f, "IPv4") == 0)
      family = AF_INET;
    else if (strcmp(f, "IPv6") == 0)
      family = AF_INET6;
    else
      return luaL_argerror(L, 3, "family must be 'IPv4' or 'IPv6'");
  }
  luaL_checktype(L, 4, LUA_TFUNCTION);
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = family;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  // AI_ADDRCONFIG hides ::1 on hosts whose only IPv6 address is loopback; ask again without
  // it for the loopback names so 'localhost' always resolves.
  if (strcmp(host, "localhost") == 0 || strncmp(host, "ip6-", 4) == 0) hints.ai_flags = 0;
  gai_req_t *r = malloc(sizeof(*r));
  if (r == NULL) return lc_util_push_uverr(L, UV_ENOMEM);
  lua_pushvalue(L, 4);
  r->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  int rc = uv_getaddrinfo(lc_loop, &r->req, on_getaddrinfo, host, service, &hints);
  if (rc < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->cb_ref);
    free(r);
    return lc_util_push_uverr(L, rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

// _core.isip(s) -> 4, 6 or 0 (Node's net.isIP). An IPv6 zone ("fe80::1%eth0") counts.
static int dns_isip(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char buf[sizeof(struct in6_addr)];
  char tmp[INET6_ADDRSTRLEN + 1];
  if (inet_pton(AF_INET, s, buf) == 1) {
    lua_pushinteger(L, 4);
    return 1;
  }
  const char *pct = strchr(s, '%');
  if (pct != NULL) {
    size_t n = (size_t)(pct - s);
    if (n >= sizeof(tmp) || pct[1] == '\0') {
      lua_pushinteger(L, 0);
      return 1;
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    s = tmp;
  }
  lua_pushinteger(L, inet_pton(AF_INET6, s, buf) == 1 ? 6 : 0);
  return 1;
}

void lc_dns_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"getaddrinfo", dns_getaddrinfo}, {"isip", dns_isip}, {NULL, NULL}};
  luaL_register(L, NULL, fns);
}
