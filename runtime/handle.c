// handle.c: the lifetime every handle binding shares (STYLE.md, after luv): the memory is
// freed only in the close callback, the registry keeps the userdata alive while the handle
// is open, and __gc closes only what Lua dropped without closing.
#include <stdlib.h>
#include <string.h>

#include "lc.h"

void *lc_handle_new_ud(lua_State *L, size_t size, size_t ud_size, const char *mt, int cb_idx) {
  if (cb_idx < 0) cb_idx = lua_gettop(L) + cb_idx + 1;
  lc_handle_t **ud = lua_newuserdata(L, ud_size); // [ud]
  memset(ud, 0, ud_size);
  lc_handle_t *h = calloc(1, size);
  if (h == NULL) luaL_error(L, "out of memory");
  *ud = h;
  luaL_getmetatable(L, mt);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  h->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  h->cb_ref = LUA_NOREF;
  h->close_ref = LUA_NOREF;
  if (cb_idx > 0 && !lua_isnoneornil(L, cb_idx)) {
    luaL_checktype(L, cb_idx, LUA_TFUNCTION);
    lua_pushvalue(L, cb_idx);
    h->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return h; // [ud]
}

void *lc_handle_check_any(lua_State *L, int idx, const char *mt) {
  lc_handle_t **ud = luaL_checkudata(L, idx, mt);
  if (*ud == NULL) luaL_argerror(L, idx, "handle is closed");
  return *ud;
}

void *lc_handle_check(lua_State *L, int idx, const char *mt) {
  lc_handle_t *h = lc_handle_check_any(L, idx, mt);
  if (h->closing) luaL_argerror(L, idx, "handle is closed");
  return h;
}

void *lc_handle_new(lua_State *L, size_t size, const char *mt, int cb_idx) {
  return lc_handle_new_ud(L, size, sizeof(lc_handle_t *), mt, cb_idx);
}

int lc_handle_push_cb(lua_State *L, lc_handle_t *h) {
  if (h->cb_ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->cb_ref);
  return 1;
}

void lc_handle_push_self(lua_State *L, lc_handle_t *h) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
}

static void on_close(uv_handle_t *uvh) {
  lc_handle_t *h = uvh->data;
  lua_State *L = lc_L;
  int t = uvh->type;
  int is_stream = t == UV_TCP || t == UV_NAMED_PIPE || t == UV_TTY;
  // The userdata may outlive us; clear its pointer so later calls see a closed handle.
  if (h->self_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lc_handle_t **ud = lua_touserdata(L, -1);
    if (ud != NULL) *ud = NULL; // a stream's userdata keeps its byte counts (lc_stream_t.ud)
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, h->self_ref);
  }
  if (is_stream) {
    lc_stream_t *s = (lc_stream_t *)h;
    if (s->hook != NULL) lc_http_stream_read(s, 0, NULL); // the stream goes: its reader forgets it
  }
  lc_util_unref(L, h->cb_ref);
  int close_ref = h->close_ref;
  free(h);
  if (close_ref != LUA_NOREF && close_ref != 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, close_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, close_ref);
    lc_pcall(L, 0, 0);
  }
}

void lc_handle_close(lc_handle_t *h) {
  if (h->closing) return;
  h->closing = 1;
  h->uv->data = h;
  uv_close(h->uv, on_close);
}

static lc_handle_t *any_handle(lua_State *L, int idx) {
  lc_handle_t **ud = lua_touserdata(L, idx);
  if (ud == NULL || !lua_getmetatable(L, idx)) luaL_argerror(L, idx, "expected a handle");
  lua_pop(L, 1);
  if (*ud == NULL) luaL_argerror(L, idx, "handle is closed");
  return *ud;
}

// handle:close([fn]): fn runs once the handle is closed and its memory freed.
static int h_close(lua_State *L) {
  lc_handle_t **ud = lua_touserdata(L, 1);
  if (ud == NULL || *ud == NULL || (*ud)->closing) return 0;
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    (*ud)->close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lc_handle_close(*ud);
  return 0;
}

static int h_ref(lua_State *L) {
  uv_ref(any_handle(L, 1)->uv);
  return 0;
}

static int h_unref(lua_State *L) {
  uv_unref(any_handle(L, 1)->uv);
  return 0;
}

static int h_has_ref(lua_State *L) {
  lua_pushboolean(L, uv_has_ref(any_handle(L, 1)->uv));
  return 1;
}

static int h_is_closing(lua_State *L) {
  lc_handle_t **ud = lua_touserdata(L, 1);
  lua_pushboolean(L, ud == NULL || *ud == NULL || (*ud)->closing);
  return 1;
}

static int h_fileno(lua_State *L) {
  uv_os_fd_t fd;
  int rc = uv_fileno(any_handle(L, 1)->uv, &fd);
  if (rc != 0) return lc_util_push_uverr(L, rc);
  lua_pushinteger(L, fd);
  return 1;
}

// __gc runs only once the registry dropped the userdata, which happens in on_close; a
// handle still open here was never registered (creation failed half-way) or is a bug.
static int h_gc(lua_State *L) {
  lc_handle_t **ud = lua_touserdata(L, 1);
  if (ud != NULL && *ud != NULL && !(*ud)->closing) lc_handle_close(*ud);
  return 0;
}

void lc_handle_add_methods(lua_State *L) {
  static const luaL_Reg shared[] = {{"close", h_close},
                                    {"ref", h_ref},
                                    {"unref", h_unref},
                                    {"has_ref", h_has_ref},
                                    {"is_closing", h_is_closing},
                                    {"fileno", h_fileno},
                                    {NULL, NULL}};
  luaL_register(L, NULL, shared);
}

void lc_handle_meta(lua_State *L, const char *name, const luaL_Reg *methods,
                    void (*extra)(lua_State *L)) {
  luaL_newmetatable(L, name); // [mt]
  lua_newtable(L);            // [mt, methods]
  lc_handle_add_methods(L);
  if (extra != NULL) extra(L);
  luaL_register(L, NULL, methods);
  lua_setfield(L, -2, "__index"); // [mt]
  lua_pushcfunction(L, h_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1); // []
}
