// lj_layout.h: LuaJIT's object layouts, for the JSON encoder and decoder that read and write
// tables in place (runtime/json_encode.c, runtime/json_decode.c).
//
// These are lj_obj.h's layouts for GC64 (x64's default in LuaJIT 2.1), as of the LuaJIT v2.1
// commit Debian packages (2.1.0~beta3+git20220320: 43ebb949). The binary links that LuaJIT
// statically. Each user verifies them on probe values before the first use (check_direct())
// and keeps to the Lua C API if anything differs, so a LuaJIT with other layouts is slower,
// never wrong.
#pragma once

#include <stdint.h>

typedef union {
  uint64_t u64;
  int64_t it64;
  double n;
} lj_tv; // TValue

typedef struct {
  lj_tv val, key;
  uint64_t next;
} lj_node; // Node

typedef struct {
  uint64_t nextgc;
  uint8_t marked, gct, nomm;
  int8_t colo;
  lj_tv *array; // slots 0..asize-1
  uint64_t gclist, metatable;
  lj_node *node; // hmask + 1 nodes
  uint32_t asize, hmask;
  uint64_t freetop;
} lj_tab; // GCtab

typedef struct {
  uint64_t nextgc;
  uint8_t marked, gct, reserved, hashalg;
  uint32_t sid, hash, len;
} lj_str; // GCstr; the bytes follow it, then a NUL

// itype(): the type tag in a TValue's top 17 bits. Numbers are doubles, any tag below
// LJ_TNUMX (LuaJIT canonicalises NaNs so that none collides with a tag).
#define LJ_ITYPE(tv) ((uint32_t)((tv)->it64 >> 47))
#define LJ_GCV(tv) ((void *)(uintptr_t)((tv)->u64 & (((uint64_t)1 << 47) - 1)))
#define LJ_TNIL (~0u)
#define LJ_TFALSE (~1u)
#define LJ_TTRUE (~2u)
#define LJ_TLIGHTUD (~3u)
#define LJ_TSTR (~4u)
#define LJ_TTAB (~11u)
#define LJ_TNUMX (~13u)
