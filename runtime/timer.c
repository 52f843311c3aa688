// timer.c: uv_timer as `_core.timer(cb)`. The callback runs through lc_pcall.
#include "lc.h"

typedef struct {
  lc_handle_t h;
  uv_timer_t timer;
} lc_timer_t;

#define MT "lc.timer"

static void on_timer(uv_timer_t *t) {
  lc_timer_t *self = t->data;
  lua_State *L = lc_L;
  if (lc_handle_push_cb(L, &self->h)) lc_pcall(L, 0, 0);
}

// _core.timer(cb) -> timer
static int timer_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lc_timer_t *self = lc_handle_new(L, sizeof(*self), MT, 1);
  self->h.uv = (uv_handle_t *)&self->timer;
  uv_timer_init(lc_loop, &self->timer);
  self->timer.data = self;
  return 1;
}

// timer:start(timeout_ms, repeat_ms): counts from now. libuv counts from the loop's clock,
// read when the loop last woke; Lua that ran long since then (a busy callback, a spec's
// synchronous work) would get a timer already (partly) expired: setTimeout(fn, 1000) after a
// 1.5 s block fired at once. As Node (its timers read the clock with uv_update_time), the
// clock is read first; a vDSO clock_gettime.
static int timer_start(lua_State *L) {
  lc_timer_t *self = lc_handle_check(L, 1, MT);
  lua_Number timeout = luaL_checknumber(L, 2);
  lua_Number repeat = luaL_optnumber(L, 3, 0);
  if (timeout < 0) timeout = 0;
  if (repeat < 0) repeat = 0;
  self->timer.data = self;
  uv_update_time(lc_loop);
  return lc_util_push_result(
      L, uv_timer_start(&self->timer, on_timer, (uint64_t)timeout, (uint64_t)repeat));
}

static int timer_stop(lua_State *L) {
  lc_timer_t *self = lc_handle_check(L, 1, MT);
  return lc_util_push_result(L, uv_timer_stop(&self->timer));
}

void lc_timer_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"start", timer_start}, {"stop", timer_stop}, {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, timer_new);
  lua_setfield(L, -2, "timer");
}
