// check.c: the handle behind setImmediate. A uv_check runs the callback after each poll;
// while it is started, an idle handle keeps the poll from blocking so immediates run at
// the next loop turn even when no I/O is pending.
#include "lc.h"

typedef struct {
  lc_handle_t h;
  uv_check_t check;
  uv_idle_t idle;
  int started;
} lc_check_t;

#define MT "lc.check"

static void on_idle(uv_idle_t *i) {
  (void)i;
}

static void on_check(uv_check_t *c) {
  lc_check_t *self = c->data;
  lua_State *L = lc_L;
  if (lc_handle_push_cb(L, &self->h)) lc_pcall(L, 0, 0);
}

static void idle_closed(uv_handle_t *h) {
  (void)h;
}

static int check_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lc_check_t *self = lc_handle_new(L, sizeof(*self), MT, 1);
  self->h.uv = (uv_handle_t *)&self->check;
  uv_check_init(lc_loop, &self->check);
  self->check.data = self;
  // The idle handle is embedded in the same block; it is closed by check:stop/close below.
  uv_idle_init(lc_loop, &self->idle);
  self->idle.data = self;
  uv_unref((uv_handle_t *)&self->idle);
  return 1;
}

static int check_start(lua_State *L) {
  lc_check_t *self = lc_handle_check(L, 1, MT);
  self->check.data = self;
  uv_check_start(&self->check, on_check);
  uv_idle_start(&self->idle, on_idle);
  self->started = 1;
  return 0;
}

static int check_stop(lua_State *L) {
  lc_check_t *self = lc_handle_check(L, 1, MT);
  uv_check_stop(&self->check);
  uv_idle_stop(&self->idle);
  self->started = 0;
  return 0;
}

// The idle handle must be closed before the block is freed: close it first, and since
// libuv runs close callbacks in order, it is gone before the check's own close callback.
static int check_close(lua_State *L) {
  lc_handle_t **ud = luaL_checkudata(L, 1, MT);
  if (*ud == NULL || (*ud)->closing) return 0;
  lc_check_t *self = (lc_check_t *)*ud;
  uv_close((uv_handle_t *)&self->idle, idle_closed);
  lc_handle_close(&self->h);
  return 0;
}

void lc_check_open(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"start", check_start}, {"stop", check_stop}, {"close", check_close}, {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, check_new);
  lua_setfield(L, -2, "check");
}
