// lualib.c: the modules of lualib/, compiled into the binary as LuaJIT bytecode by
// deps/embed.lua. Each is registered in package.preload under its file's basename (folders
// under lualib/ group files by role and are not part of the name). When LCLUSTER_LUALIB
// names a folder, the sources there are loaded instead, at the same relative path
// (lualib/io/fs.lua from $LCLUSTER_LUALIB/io/fs.lua), so a Lua edit needs no rebuild.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lc.h"

struct lc_lualib_entry {
  const char *name;
  const char *path; // relative to lualib/, e.g. "io/fs.lua"
  const unsigned char *data;
  size_t len;
};
extern const struct lc_lualib_entry lc_lualib_entries[];

static int load_embedded(lua_State *L) {
  const struct lc_lualib_entry *e = lua_touserdata(L, lua_upvalueindex(1));
  const char *dir = getenv("LCLUSTER_LUALIB");
  int rc;
  if (dir != NULL && *dir != '\0') {
    lua_pushfstring(L, "%s/%s", dir, e->path);
    rc = luaL_loadfile(L, lua_tostring(L, -1));
    lua_remove(L, -2);
  } else {
    char chunk[256];
    snprintf(chunk, sizeof(chunk), "=lualib/%s", e->path);
    rc = luaL_loadbuffer(L, (const char *)e->data, e->len, chunk);
  }
  if (rc != 0) return lua_error(L);
  lua_pushvalue(L, 1); // the module name, as require passes it
  lua_call(L, 1, 1);
  return 1;
}

void lc_lualib_register(lua_State *L) {
  lua_getglobal(L, "package");    // [package]
  lua_getfield(L, -1, "preload"); // [package, preload]
  for (const struct lc_lualib_entry *e = lc_lualib_entries; e->name != NULL; e++) {
    lua_pushlightuserdata(L, (void *)e);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, e->name);
  }
  lua_pop(L, 2); // []
}
