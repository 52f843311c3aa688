// util.c: error and address helpers every binding shares.
#include <string.h>

#include "lc.h"

int lc_util_push_uverr(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", uv_err_name(err), uv_strerror(err));
  lua_pushstring(L, uv_err_name(err));
  return 3;
}

int lc_util_push_result(lua_State *L, int err) {
  if (err < 0) return lc_util_push_uverr(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

void lc_util_push_addr(lua_State *L, const struct sockaddr *sa) {
  char ip[INET6_ADDRSTRLEN];
  int port;
  if (sa == NULL) {
    lua_pushnil(L);
    return;
  }
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    uv_ip4_name(in, ip, sizeof(ip));
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(in6, ip, sizeof(ip));
    port = ntohs(in6->sin6_port);
  } else {
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 0, 3);
  lua_pushstring(L, ip);
  lua_setfield(L, -2, "address");
  lua_pushstring(L, sa->sa_family == AF_INET ? "IPv4" : "IPv6");
  lua_setfield(L, -2, "family");
  lua_pushinteger(L, port);
  lua_setfield(L, -2, "port");
}

int lc_util_parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (strchr(host, ':') != NULL) return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
  return uv_ip4_addr(host, port, (struct sockaddr_in *)ss);
}

// The shared references: few functions are shared (ctx mode only), so a small table with a
// linear search does; a function past SHARED_MAX gets plain references.
#define SHARED_MAX 8
static struct {
  const void *fn;
  int ref;
  unsigned n; // handles holding it; 0: the entry is free
} shared[SHARED_MAX];

int lc_util_ref_shared(lua_State *L, int idx) {
  const void *fn = lua_topointer(L, idx);
  int free_i = -1;
  for (int i = 0; i < SHARED_MAX; i++) {
    if (shared[i].n > 0 && shared[i].fn == fn) {
      shared[i].n++;
      return shared[i].ref;
    }
    if (shared[i].n == 0 && free_i < 0) free_i = i;
  }
  lua_pushvalue(L, idx);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (free_i >= 0) {
    shared[free_i].fn = fn;
    shared[free_i].ref = ref;
    shared[free_i].n = 1;
  }
  return ref;
}

void lc_util_unref(lua_State *L, int ref) {
  if (ref == LUA_NOREF || ref == LUA_REFNIL) return;
  for (int i = 0; i < SHARED_MAX; i++) {
    if (shared[i].n > 0 && shared[i].ref == ref) {
      if (--shared[i].n > 0) return;
      shared[i].fn = NULL;
      break;
    }
  }
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
}
