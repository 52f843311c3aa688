// signal.c: uv_signal as `_core.signal(cb)`; cb(signum) runs through lc_pcall.
#include "lc.h"

typedef struct {
  lc_handle_t h;
  uv_signal_t sig;
} lc_signal_t;

#define MT "lc.signal"

static void on_signal(uv_signal_t *s, int signum) {
  lc_signal_t *self = s->data;
  lua_State *L = lc_L;
  if (!lc_handle_push_cb(L, &self->h)) return;
  lua_pushinteger(L, signum);
  lc_pcall(L, 1, 0);
}

static int signal_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lc_signal_t *self = lc_handle_new(L, sizeof(*self), MT, 1);
  self->h.uv = (uv_handle_t *)&self->sig;
  uv_signal_init(lc_loop, &self->sig);
  self->sig.data = self;
  return 1;
}

// signal:start(signum)
static int signal_start(lua_State *L) {
  lc_signal_t *self = lc_handle_check(L, 1, MT);
  self->sig.data = self;
  return lc_util_push_result(L,
                             uv_signal_start(&self->sig, on_signal, (int)luaL_checkinteger(L, 2)));
}

static int signal_stop(lua_State *L) {
  lc_signal_t *self = lc_handle_check(L, 1, MT);
  return lc_util_push_result(L, uv_signal_stop(&self->sig));
}

void lc_signal_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"start", signal_start}, {"stop", signal_stop}, {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, signal_new);
  lua_setfield(L, -2, "signal");
}
