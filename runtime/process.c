// process.c: uv_spawn as `_core.spawn(options, proc_exit_cb)`. options: file, args (list, args[1]
// is argv[0]), env (list of "K=V"), cwd, uid, gid, detached, stdio (list of: "inherit",
// "ignore", a pipe handle to create, or an integer fd the child inherits at that position).
#include <stdlib.h>
#include <string.h>

#include "lc.h"

typedef struct {
  lc_handle_t h;
  uv_process_t proc;
} lc_process_t;

#define MT "lc.process"
#define MAX_STDIO 16

static void proc_exit_cb(uv_process_t *p, int64_t status, int term_signal) {
  lc_process_t *self = p->data;
  lua_State *L = lc_L;
  if (!lc_handle_push_cb(L, &self->h)) return;
  lua_pushinteger(L, (lua_Integer)status);
  lua_pushinteger(L, term_signal);
  lc_pcall(L, 2, 0);
}

static char **string_list(lua_State *L, int idx, const char *field) {
  lua_getfield(L, idx, field); // [list]
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_istable(L, -1)) luaL_error(L, "spawn: %s must be a table", field);
  size_t n = lua_objlen(L, -1);
  char **out = calloc(n + 1, sizeof(char *));
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    // The strings stay alive: the list table is referenced from the options table.
    out[i] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
    if (out[i] == NULL) {
      free(out);
      luaL_error(L, "spawn: %s[%d] must be a string", field, (int)i + 1);
    }
  }
  lua_pop(L, 1); // []
  return out;
}

static int spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  uv_process_options_t opts;
  uv_stdio_container_t stdio[MAX_STDIO];
  memset(&opts, 0, sizeof(opts));
  memset(stdio, 0, sizeof(stdio));

  lua_getfield(L, 1, "file");
  opts.file = luaL_checkstring(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "cwd");
  opts.cwd = lua_tostring(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "uid");
  if (!lua_isnil(L, -1)) {
    opts.uid = (uv_uid_t)luaL_checkinteger(L, -1);
    opts.flags |= UV_PROCESS_SETUID;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "gid");
  if (!lua_isnil(L, -1)) {
    opts.gid = (uv_gid_t)luaL_checkinteger(L, -1);
    opts.flags |= UV_PROCESS_SETGID;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "detached");
  if (lua_toboolean(L, -1)) opts.flags |= UV_PROCESS_DETACHED;
  lua_pop(L, 1);

  lua_getfield(L, 1, "stdio"); // [stdio]
  int n = 0;
  if (lua_istable(L, -1)) {
    n = (int)lua_objlen(L, -1);
    if (n > MAX_STDIO) luaL_error(L, "spawn: at most %d stdio entries", MAX_STDIO);
    for (int i = 0; i < n; i++) {
      lua_rawgeti(L, -1, i + 1);
      if (lua_type(L, -1) == LUA_TNUMBER) {
        stdio[i].flags = UV_INHERIT_FD;
        stdio[i].data.fd = (int)lua_tointeger(L, -1);
      } else if (lua_type(L, -1) == LUA_TSTRING) {
        const char *mode = lua_tostring(L, -1);
        if (strcmp(mode, "inherit") == 0) {
          stdio[i].flags = UV_INHERIT_FD;
          stdio[i].data.fd = i;
        } else if (strcmp(mode, "ignore") == 0) {
          stdio[i].flags = UV_IGNORE;
        } else {
          luaL_error(L, "spawn: unknown stdio mode '%s'", mode);
        }
      } else if (lua_type(L, -1) == LUA_TUSERDATA) {
        lc_stream_t *s = lc_handle_check(L, -1, "lc.pipe");
        stdio[i].flags = UV_CREATE_PIPE | (i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
        stdio[i].data.stream = &s->u.stream;
      } else {
        stdio[i].flags = UV_IGNORE;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1); // []
  opts.stdio = stdio;
  opts.stdio_count = n;

  char **args = string_list(L, 1, "args");
  char **env = string_list(L, 1, "env");
  opts.args = args;
  opts.env = env;
  opts.exit_cb = proc_exit_cb;

  lc_process_t *self = lc_handle_new(L, sizeof(*self), MT, 2); // [proc]
  self->h.uv = (uv_handle_t *)&self->proc;
  int rc = uv_spawn(lc_loop, &self->proc, &opts);
  free(args);
  free(env);
  self->proc.data = self;
  if (rc < 0) {
    // A failed spawn still initialised the handle; close it so its memory is released.
    lc_handle_close(&self->h);
    return lc_util_push_uverr(L, rc);
  }
  lua_pushinteger(L, self->proc.pid); // [proc, pid]
  return 2;
}

// process:kill(signum)
static int proc_kill(lua_State *L) {
  lc_process_t *self = lc_handle_check(L, 1, MT);
  return lc_util_push_result(L, uv_process_kill(&self->proc, (int)luaL_checkinteger(L, 2)));
}

static int proc_pid(lua_State *L) {
  lc_process_t *self = lc_handle_check_any(L, 1, MT);
  lua_pushinteger(L, self->proc.pid);
  return 1;
}

void lc_process_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"kill", proc_kill}, {"pid", proc_pid}, {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, spawn);
  lua_setfield(L, -2, "spawn");
}
