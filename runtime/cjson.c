// cjson.c: sizes the tables lua-cjson's decoder creates like the last complete table at the
// same depth and place (the next item of an array of similar objects is sized like the
// previous one, the "items" field of this request like that of the last one).
//
// lua_cjson.o creates every decoded object and array with lua_newtable and fills it one
// lua_rawset / lua_rawseti at a time, so LuaJIT rehashes it at 1, 2, 3, 5, 9, ... entries:
// ~35k of the ~195k instructions of a JSON API request (bench/realistic/ir). The build
// (deps/Dependencies.cmake) renames, in a copy of Debian's lua_cjson.o only, its calls to
// lua_createtable, lua_rawset, lua_rawseti and strbuf_new to the wrappers below; everything
// else in the binary calls LuaJIT's own functions, and every wrapper calls the real one.
//
// How sizes are learnt: strbuf_new is called once per cjson.decode, at its start (nowhere
// else in lua_cjson.o), and resets the tracking. Every table cjson creates is pushed on a
// small stack of open tables; at its first insert its kind is known (a rawseti: an array; a
// rawset: an object); it is complete when cjson inserts into its parent (storing it; the
// root, at the next decode), and its kind and entry count are kept
// for its depth and place in its parent (entry number modulo SLOTS). Once two tables in a
// row there agreed, a new one is created with that many slots of that kind (at most
// LEARN_MAX) instead of none. A wrong
// guess costs about what no guess costs: LuaJIT's first rehash gives the table the parts its
// keys need and frees the other. Anything that does not fit this pattern (a nesting deeper
// than the stack, a decode aborted by an error) stops the learning until the next decode.
// Only the tables' initial sizes differ, never what is stored in them; with the sizes,
// pairs() order may differ, which LuaJIT's per-process string hash seed already varies from
// run to run. The state is the process's: only the main Lua state has the built-in cjson (a
// luv thread's state that requires cjson loads Debian's cjson.so, whose calls are its own).
// spec/json_tables_spec.lua compares decoded documents, and the memory they use,
// with Debian's own cjson.so.
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "json_encode.h"

struct strbuf;

// strbuf.o's, which the renamed call stands for.
struct strbuf *strbuf_new(int len);

void lc_cjson_createtable(lua_State *L, int narr, int nrec);
void lc_cjson_rawset(lua_State *L, int idx);
void lc_cjson_rawseti(lua_State *L, int idx, int n);
struct strbuf *lc_cjson_strbuf_new(int len);

#define DEPTH_MAX 32 // open tables followed; deeper documents are not sized
#define LEARN_MAX 64 // a size learnt from a big table is not given to the next one
#define SLOTS 8      // places in a parent told apart

enum { KIND_NONE, KIND_ARRAY, KIND_OBJECT };

static struct {
  int pos;    // its absolute stack index: cjson keeps it there until it is complete
  uint32_t n; // entries inserted so far
  int kind;
  int slot; // its place among its parent's entries, modulo SLOTS
} open_tabs[DEPTH_MAX];
static int depth; // open tables
static int lost;  // stop learning until the next decode
// The last complete tables at each depth and place: the fields of a fixed schema
// ({"user": {...}, "items": [...]}) are told apart, the items of an array share the slots.
// A size is used only once two tables in a row agreed on it (same kind, same power of two):
// a document whose shapes change from place to place gets no guesses, so no wasted slots.
static struct {
  int kind;
  uint32_t n;
  int agreed;
} last[DEPTH_MAX][SLOTS];

static uint32_t pow2_ceil(uint32_t n) {
  uint32_t p = 1;
  while (p < n)
    p <<= 1;
  return p;
}

static void remember(int d) {
  int kind = open_tabs[d].kind; // KIND_NONE: an empty table, which gets no guess either
  uint32_t n = open_tabs[d].n;
  int slot = open_tabs[d].slot;
  last[d][slot].agreed = last[d][slot].kind == kind && pow2_ceil(last[d][slot].n) == pow2_ceil(n);
  last[d][slot].kind = kind;
  last[d][slot].n = n;
}

struct strbuf *lc_cjson_strbuf_new(int len) {
  // The previous decode's root, if that decode ended normally, is the one table still open.
  if (!lost && depth == 1) remember(0);
  depth = 0;
  lost = 0;
  return strbuf_new(len);
}

void lc_cjson_createtable(lua_State *L, int narr, int nrec) {
  if (lost || depth == DEPTH_MAX || narr != 0 || nrec != 0) {
    lost = 1;
    lua_createtable(L, narr, nrec);
    return;
  }
  int slot = depth > 0 ? (int)(open_tabs[depth - 1].n % SLOTS) : 0;
  uint32_t n = last[depth][slot].n > LEARN_MAX ? LEARN_MAX : last[depth][slot].n;
  if (n <= 1 || !last[depth][slot].agreed) {
    lua_createtable(L, 0, 0);
  } else if (last[depth][slot].kind == KIND_ARRAY) {
    lua_createtable(L, (int)n, 0);
  } else {
    lua_createtable(L, 0, (int)n);
  }
  open_tabs[depth].pos = lua_gettop(L);
  open_tabs[depth].n = 0;
  open_tabs[depth].kind = KIND_NONE;
  open_tabs[depth].slot = slot;
  depth++;
}

// Before an insert into the table at `idx` as an entry of `kind`: an insert into the parent
// of the innermost open table stores that table (it is complete); then the target must be the
// innermost open table, whose entry is counted. Tables are told apart by their stack index
// (lua_gettop: cheaper than lua_type and lua_topointer per entry): cjson keeps each table in
// one slot until it is complete, and a slot is reused only by a table created after that.
static void before_insert(lua_State *L, int idx, int kind) {
  int target = lua_gettop(L) + idx + 1;
  if (depth > 1 && target == open_tabs[depth - 2].pos) {
    depth--;
    remember(depth);
  }
  if (depth == 0 || target != open_tabs[depth - 1].pos) {
    lost = 1;
    return;
  }
  int d = depth - 1;
  if (open_tabs[d].n++ == 0) open_tabs[d].kind = kind;
}

void lc_cjson_rawset(lua_State *L, int idx) {
  if (!lost) before_insert(L, idx, KIND_OBJECT);
  lua_rawset(L, idx);
}

void lc_cjson_rawseti(lua_State *L, int idx, int n) {
  if (!lost) before_insert(L, idx, KIND_ARRAY);
  lua_rawseti(L, idx, n);
}

// The modules `cjson` and `cjson.safe` as the binary preloads them: lua-cjson's own, then
// each fast path installed on the module table (it wraps the functions it speeds up and
// keeps the originals for everything it does not handle). An install that wraps `new` makes
// the instances it returns get the same treatment. runtime/json_decode.c's decoder takes
// every valid document first (the learning above now serves the documents it leaves to
// lua-cjson); runtime/json_encode.c: cjson.encode.
int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);
int lc_cjson_luaopen(lua_State *L);
int lc_cjson_safe_luaopen(lua_State *L);
void lc_json_decode_install(lua_State *L, int safe); // runtime/json_decode.c

static void install_fast_paths(lua_State *L, int safe) {
  lc_json_encode_install(L, safe);
  lc_json_decode_install(L, safe);
}

int lc_cjson_luaopen(lua_State *L) {
  luaopen_cjson(L); // [module]
  install_fast_paths(L, 0);
  return 1;
}

int lc_cjson_safe_luaopen(lua_State *L) {
  luaopen_cjson_safe(L); // [module]
  install_fast_paths(L, 1);
  return 1;
}
