// core.c: the `_core` module, the C side lualib is written against: the loop, process
// facts, and every binding module's functions gathered in one table.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "lc.h"

extern char **environ;

static int in_run = 0;

// _core.run([mode]): runs the loop ('default', 'once' or 'nowait'). Returns true when
// handles are still active. Raises when called from inside a loop callback, where libuv
// forbids re-entering uv_run.
static int core_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  static const uv_run_mode uvmodes[] = {UV_RUN_DEFAULT, UV_RUN_ONCE, UV_RUN_NOWAIT};
  int m = luaL_checkoption(L, 1, "default", modes);
  if (in_run) return luaL_error(L, "the event loop is already running (called from a callback)");
  in_run = 1;
  int alive = uv_run(lc_loop, uvmodes[m]);
  in_run = 0;
  lua_pushboolean(L, alive);
  return 1;
}

static int core_stop(lua_State *L) {
  (void)L;
  uv_stop(lc_loop);
  return 0;
}

static int core_alive(lua_State *L) {
  lua_pushboolean(L, uv_loop_alive(lc_loop));
  return 1;
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_now(lc_loop));
  return 1;
}

static int core_update_time(lua_State *L) {
  (void)L;
  uv_update_time(lc_loop);
  return 0;
}

static int core_hrtime(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime());
  return 1;
}

static int core_exit(lua_State *L) {
  lc_exit((int)luaL_optinteger(L, 1, 0));
}

static int core_pid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

static int core_ppid(lua_State *L) {
  lua_pushinteger(L, getppid());
  return 1;
}

static int core_getenv(lua_State *L) {
  const char *v = getenv(luaL_checkstring(L, 1));
  if (v == NULL) return 0;
  lua_pushstring(L, v);
  return 1;
}

// _core.setenv(name, value|nil): nil removes the variable.
static int core_setenv(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int rc = lua_isnoneornil(L, 2) ? unsetenv(name) : setenv(name, luaL_checkstring(L, 2), 1);
  if (rc != 0) return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  lua_pushboolean(L, 1);
  return 1;
}

static int core_environ(lua_State *L) {
  lua_newtable(L);
  for (char **e = environ; *e != NULL; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL) continue;
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  return 1;
}

static int core_rss(lua_State *L) {
  size_t rss = 0;
  int rc = uv_resident_set_memory(&rss);
  if (rc != 0) return lc_util_push_uverr(L, rc);
  lua_pushnumber(L, (lua_Number)rss);
  return 1;
}

static int core_hostname(lua_State *L) {
  char buf[UV_MAXHOSTNAMESIZE];
  size_t len = sizeof(buf);
  int rc = uv_os_gethostname(buf, &len);
  if (rc != 0) return lc_util_push_uverr(L, rc);
  lua_pushlstring(L, buf, len);
  return 1;
}

static int core_cpus(lua_State *L) {
  uv_cpu_info_t *info;
  int count;
  int rc = uv_cpu_info(&info, &count);
  if (rc != 0) return lc_util_push_uverr(L, rc);
  lua_createtable(L, count, 0);
  for (int i = 0; i < count; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, info[i].model);
    lua_setfield(L, -2, "model");
    lua_pushinteger(L, info[i].speed);
    lua_setfield(L, -2, "speed");
    lua_createtable(L, 0, 5);
    lua_pushnumber(L, (lua_Number)info[i].cpu_times.user);
    lua_setfield(L, -2, "user");
    lua_pushnumber(L, (lua_Number)info[i].cpu_times.nice);
    lua_setfield(L, -2, "nice");
    lua_pushnumber(L, (lua_Number)info[i].cpu_times.sys);
    lua_setfield(L, -2, "sys");
    lua_pushnumber(L, (lua_Number)info[i].cpu_times.idle);
    lua_setfield(L, -2, "idle");
    lua_pushnumber(L, (lua_Number)info[i].cpu_times.irq);
    lua_setfield(L, -2, "irq");
    lua_setfield(L, -2, "times");
    lua_rawseti(L, -2, i + 1);
  }
  uv_free_cpu_info(info, count);
  return 1;
}

static int core_exepath(lua_State *L) {
  char buf[4096];
  size_t len = sizeof(buf);
  int rc = uv_exepath(buf, &len);
  if (rc != 0) return lc_util_push_uverr(L, rc);
  lua_pushlstring(L, buf, len);
  return 1;
}

static int core_cwd(lua_State *L) {
  char buf[4096];
  size_t len = sizeof(buf);
  int rc = uv_cwd(buf, &len);
  if (rc != 0) return lc_util_push_uverr(L, rc);
  lua_pushlstring(L, buf, len);
  return 1;
}

static int core_chdir(lua_State *L) {
  return lc_util_push_result(L, uv_chdir(luaL_checkstring(L, 1)));
}

// _core.write(fd, data): a blocking write of the whole string, for stdout/stderr logging.
// Logs are written at once so nothing is held back or lost when a process crashes.
static int core_write(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  size_t len;
  const char *p = luaL_checklstring(L, 2, &len);
  fflush(fd == 1 ? stdout : stderr);
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return lc_util_push_uverr(L, uv_translate_sys_error(errno));
    }
    p += n;
    len -= (size_t)n;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int core_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

// _core.kill(pid, signum)
static int core_kill(lua_State *L) {
  return lc_util_push_result(L,
                             uv_kill((int)luaL_checkinteger(L, 1), (int)luaL_checkinteger(L, 2)));
}

// _core.pdeathsig(signum): this process gets signum when its parent dies (Linux).
static int core_pdeathsig(lua_State *L) {
  int sig = (int)luaL_checkinteger(L, 1);
  if (prctl(PR_SET_PDEATHSIG, sig) != 0)
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  lua_pushboolean(L, 1);
  return 1;
}

static int core_strerror(lua_State *L) {
  int err = (int)luaL_checkinteger(L, 1);
  lua_pushstring(L, uv_err_name(err));
  lua_pushstring(L, uv_strerror(err));
  return 2;
}

// The signal numbers lualib names, so Lua never hard-codes platform values.
static void push_signals(lua_State *L) {
  static const struct {
    const char *name;
    int num;
  } sigs[] = {{"SIGHUP", SIGHUP},   {"SIGINT", SIGINT},   {"SIGQUIT", SIGQUIT},
              {"SIGKILL", SIGKILL}, {"SIGTERM", SIGTERM}, {"SIGUSR1", SIGUSR1},
              {"SIGUSR2", SIGUSR2}, {"SIGPIPE", SIGPIPE}, {"SIGABRT", SIGABRT},
              {"SIGSEGV", SIGSEGV}, {"SIGCHLD", SIGCHLD}, {"SIGCONT", SIGCONT},
              {"SIGSTOP", SIGSTOP}, {"SIGALRM", SIGALRM}, {"SIGWINCH", SIGWINCH}};
  lua_newtable(L);
  for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
    lua_pushinteger(L, sigs[i].num);
    lua_setfield(L, -2, sigs[i].name);
    lua_pushstring(L, sigs[i].name);
    lua_rawseti(L, -2, sigs[i].num);
  }
}

int lc_core_luaopen(lua_State *L) {
  static const luaL_Reg fns[] = {{"run", core_run},
                                 {"stop", core_stop},
                                 {"alive", core_alive},
                                 {"now", core_now},
                                 {"update_time", core_update_time},
                                 {"hrtime", core_hrtime},
                                 {"exit", core_exit},
                                 {"pid", core_pid},
                                 {"ppid", core_ppid},
                                 {"getenv", core_getenv},
                                 {"setenv", core_setenv},
                                 {"environ", core_environ},
                                 {"rss", core_rss},
                                 {"hostname", core_hostname},
                                 {"cpus", core_cpus},
                                 {"exepath", core_exepath},
                                 {"cwd", core_cwd},
                                 {"chdir", core_chdir},
                                 {"write", core_write},
                                 {"isatty", core_isatty},
                                 {"kill", core_kill},
                                 {"pdeathsig", core_pdeathsig},
                                 {"strerror", core_strerror},
                                 {"set_uncaught", lc_set_uncaught},
                                 {"call", lc_call},
                                 {NULL, NULL}};
  lua_newtable(L); // [core]
  luaL_register(L, NULL, fns);
  push_signals(L);
  lua_setfield(L, -2, "signals");
  lua_pushliteral(L, LC_VERSION);
  lua_setfield(L, -2, "version");
  // _core.loop_time: the address of the loop's clock (uint64_t ms, what uv_now returns), so
  // Lua reads it through the FFI (ffi.cast('const uint64_t *', ...)[0]) without a C call:
  // a compiled trace loads it, where core.now() would end the trace (a stitch).
  lua_pushlightuserdata(L, &lc_loop->time);
  lua_setfield(L, -2, "loop_time");
  void (*opens[])(lua_State *) = {
      lc_timer_open, lc_signal_open,  lc_check_open,   lc_process_open, lc_stream_open, lc_tcp_open,
      lc_pipe_open,  lc_udp_open,     lc_ipc_open,     lc_http_open,    lc_fs_open,     lc_dns_open,
      lc_rr_open,    lc_systemd_open, lc_metrics_open, lc_tls_load_open};
  for (size_t i = 0; i < sizeof(opens) / sizeof(opens[0]); i++) {
    if (opens[i] != NULL) opens[i](L);
  }
  return 1; // [core]
}
