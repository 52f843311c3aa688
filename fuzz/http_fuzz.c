// http_fuzz.c: libFuzzer harness over the request path: llhttp plus our glue in
// runtime/http.c (header accumulation, limits, the Lua events). The input is fed to a
// parser from _core.http_parser in pieces whose size the first byte picks (byte by byte up
// to whole), then EOF; a Lua callback checks what the glue promises (lower-case header
// names, string or list values, events in order) and raises on a broken promise, which
// aborts the run. Heads whose url length is a multiple of 3 pause the parser (as http.lua
// does at its pipeline limit); it is resumed after each piece, so the held bytes are parsed.
#include <stdio.h>
#include <stdlib.h>

#include "lc.h"
#include "metrics.h"

lua_State *lc_L;
uv_loop_t *lc_loop;

int lc_pcall(lua_State *L, int nargs, int nresults) {
  if (lua_pcall(L, nargs, nresults, 0) != 0) {
    fprintf(stderr, "http_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}

void lc_exit(int code) {
  exit(code);
}

static const char *const checker =
    "local core, data, step, mode = ...\n"
    "local inBody, paused = false, false\n"
    "local p\n"
    "p = core.http_parser(mode, function(ev, a, b, c, h, ka, up, complete)\n"
    "  if ev == 'head' then\n"
    "    assert(not inBody, 'head inside a body')\n"
    "    assert(type(b) == 'string' and (c == '1.1' or c:match('^%d+%.%d+$')))\n"
    "    for k, v in pairs(h) do\n"
    "      assert(type(k) == 'string' and not k:find('%u'), 'header name not lower-case')\n"
    "      if k == 'set-cookie' then assert(type(v) == 'table') else\n"
    "        assert(type(v) == 'string', 'header value') end\n"
    "    end\n"
    "    inBody = not complete\n"
    "    if #b % 3 == 0 then p:pause(); paused = true end\n"
    "  elseif ev == 'body' then\n"
    "    assert(inBody, 'body outside a message'); assert(#a > 0)\n"
    "  elseif ev == 'done' then\n"
    "    assert(inBody, 'done outside a message'); inBody = false\n"
    "  elseif ev == 'error' then\n"
    "    assert(a == 400 or a == 413 or a == 431, 'status ' .. tostring(a))\n"
    "  end\n"
    "end, { maxHeaderSize = 2048, maxHeadersCount = 16, maxBodySize = 8192 })\n"
    // A request parser is checked against a lazy one (http.lua's server: raw header blocks,
    // and a Content-Length body's last span delivered with the head or "done"): each
    // message's url, headers and whole body must be the same.
    "local logs, lazy, lpaused = { {}, {} }, nil, false\n"
    "local function logger(log, isLazy)\n"
    "  local body, open = nil, false\n"
    "  return function(ev, a, b, c, h, ka, up, complete, expect, whole)\n"
    "    if ev == 'head' then\n"
    "      assert(not open, 'head inside a body')\n"
    "      if isLazy then h = core.http_headers(h) else assert(whole == nil) end\n"
    "      local names = {}\n"
    "      for k in pairs(h) do names[#names + 1] = k end\n"
    "      table.sort(names)\n"
    "      log[#log + 1] = 'H' .. b .. ' ' .. table.concat(names, ',')\n"
    "      if whole ~= nil then assert(complete and #whole > 0, 'body with an incomplete head') "
    "end\n"
    "      if complete then log[#log + 1] = 'E' .. (whole or '') else body, open = '', true end\n"
    "      if isLazy and #b % 3 == 0 then lazy:pause(); lpaused = true end\n"
    "    elseif ev == 'body' then\n"
    "      assert(open, 'body outside a message'); body = body .. a\n"
    "    elseif ev == 'done' then\n"
    "      assert(open, 'done outside a message')\n"
    "      if a ~= nil then assert(isLazy and #a > 0); body = body .. a end\n"
    "      log[#log + 1] = 'E' .. body; open = false\n"
    "    else\n"
    "      log[#log + 1] = ev .. tostring(a)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local eager\n"
    "if mode == 'request' then\n"
    "  eager = core.http_parser(mode, logger(logs[1], false), { maxHeaderSize = 2048, "
    "maxHeadersCount = 16, maxBodySize = 8192 })\n"
    "  lazy = core.http_parser(mode, logger(logs[2], true), { maxHeaderSize = 2048, "
    "maxHeadersCount = 16, maxBodySize = 8192, lazyHeaders = true })\n"
    "end\n"
    "local function unpause()\n"
    "  while paused do paused = false; p:resume() end\n"
    "  while lpaused do lpaused = false; lazy:resume() end\n"
    "end\n"
    "for i = 1, #data, step do\n"
    "  local piece = data:sub(i, i + step - 1)\n"
    "  p:feed(piece)\n"
    "  if eager then eager:feed(piece); lazy:feed(piece) end\n"
    "  unpause()\n"
    "end\n"
    "p:feed('')\n"
    "p:detach()\n"
    "if eager then\n"
    "  eager:detach(); lazy:detach()\n"
    "  assert(#logs[1] == #logs[2], 'lazy and eager parsers disagree on the messages')\n"
    "  for i = 1, #logs[1] do assert(logs[1][i] == logs[2][i], 'lazy and eager parsers disagree') "
    "end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static lua_State *L;
  static int chunk_ref, core_ref;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    lc_L = L;
    lc_loop = uv_default_loop();
    if (luaL_loadstring(L, checker) != 0) abort();
    chunk_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    lc_http_open(L); // [core]
    core_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (size < 1) return 0;
  int sel = data[0];
  size_t step = (size_t)(sel & 0x3f);
  if (step == 0) step = size;
  lua_rawgeti(L, LUA_REGISTRYINDEX, chunk_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, core_ref); // [chunk, core]
  lua_pushlstring(L, (const char *)data + 1, size - 1);
  lua_pushinteger(L, (lua_Integer)step);
  lua_pushstring(L, (sel & 0x40) ? "response" : "request");
  lc_pcall(L, 4, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
