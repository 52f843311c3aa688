// signal.c: uv_signal as `_core.signal(cb)`; cb(signum) runs through lc_pcall. Also the
// workers' drain signals (`_core.drain_signals`, below).
#include <signal.h>
#include <string.h>
#include <unistd.h>

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

// Drain signals, in workers. SIGTERM or SIGINT sent straight to a worker (systemd's
// KillMode=control-group signals every process of a service) must start its stop sequence
// instead of killing it with requests in flight; but the master's worker:kill('SIGTERM')
// must still end even a worker stuck in a busy loop, as in Node. uv_signal cannot tell who
// sent a signal, so this is a sigaction handler with SA_SIGINFO: a signal from the master
// (the parent) gets the default action; any other is handed to the loop through an async
// handle (uv_async_send is async-signal-safe) and reaches Lua as cb(signum).
static uv_async_t drain_async;
static int drain_inited;
static int drain_ref = LUA_NOREF;
static pid_t drain_parent;
static volatile sig_atomic_t drain_term, drain_int;

static void drain_handler(int signum, siginfo_t *info, void *uctx) {
  (void)uctx;
  if (info != NULL && info->si_code == SI_USER && info->si_pid == drain_parent) {
    // Blocked while this handler runs, so the re-raised signal is delivered, with its
    // default action, when the handler returns.
    signal(signum, SIG_DFL);
    raise(signum);
    return;
  }
  if (signum == SIGINT)
    drain_int = 1;
  else
    drain_term = 1;
  uv_async_send(&drain_async);
}

static void on_drain(uv_async_t *a) {
  (void)a;
  lua_State *L = lc_L;
  int sigs[2] = {drain_term ? SIGTERM : 0, drain_int ? SIGINT : 0};
  drain_term = drain_int = 0;
  for (int i = 0; i < 2; i++) {
    if (sigs[i] == 0 || drain_ref == LUA_NOREF) continue;
    lua_rawgeti(L, LUA_REGISTRYINDEX, drain_ref); // [cb]
    lua_pushinteger(L, sigs[i]);                  // [cb, signum]
    lc_pcall(L, 1, 0);                            // []
  }
}

// _core.drain_signals(cb, parent_pid): (re)installs the handler for SIGTERM and SIGINT. Call
// it again after a uv_signal for either signal stopped: libuv then resets it to SIG_DFL.
static int drain_signals(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  drain_parent = (pid_t)luaL_checkinteger(L, 2);
  if (!drain_inited) {
    uv_async_init(lc_loop, &drain_async, on_drain);
    // Never keeps the loop alive by itself.
    uv_unref((uv_handle_t *)&drain_async);
    drain_inited = 1;
  }
  luaL_unref(L, LUA_REGISTRYINDEX, drain_ref);
  lua_pushvalue(L, 1);
  drain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = drain_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  return 0;
}

void lc_signal_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"start", signal_start}, {"stop", signal_stop}, {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, signal_new);
  lua_setfield(L, -2, "signal");
  lua_pushcfunction(L, drain_signals);
  lua_setfield(L, -2, "drain_signals");
}
