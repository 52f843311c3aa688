// bigalloc.h: the main Lua state's allocator for blocks of 128 KiB or more (bigalloc.c).
#ifndef LC_BIGALLOC_H
#define LC_BIGALLOC_H

#include <stddef.h>

#include <lua.h>

/// Wraps the state's allocator: large blocks are mmap'd and a few freed ones are cached.
void lc_bigalloc_install(lua_State *L);
/// The same allocator for C buffers of the main thread that become or replace large Lua
/// values (the JSON encoder's output): lua_Alloc's contract (exact old size; nsize 0 frees).
void *lc_bigalloc_realloc(void *ptr, size_t osize, size_t nsize);
/// Unmaps the cached blocks; called after lua_close.
void lc_bigalloc_release(void);

#endif
