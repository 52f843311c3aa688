// bigalloc.c: the main Lua state's allocator for large blocks, with a small cache of freed
// ones.
//
// LuaJIT's allocator (lj_alloc.c, after dlmalloc) serves every block of 128 KiB or more
// with an mmap of its own and munmaps it when it is freed. A program that keeps making
// large strings (an IPC message's 1 MiB body, an HTTP body, a file) therefore pays fresh
// pages for each one: 256 first-touch page faults per MiB, about 4.5 ms per MiB on a VM
// with shadow paging, against 0.04 ms for a warm memcpy of a MiB. This wrapper takes the
// blocks at or above that threshold: each is its own mapping with a 16-byte header holding
// the mapped length, and a freed one is kept in a small cache, already touched, for the
// next large allocation it fits. Blocks below the threshold go to LuaJIT's allocator, but
// for small ones (up to 512 bytes) freed and made again: those go through per-size lists
// first (the pool, below).
//
// lua_Alloc passes the exact old size on every free and realloc, so the size tells whose
// block it is: below BIG_MIN LuaJIT's, at or above it ours.
//
// The cache holds at most CACHE_BYTES (32 MiB) of mappings: that is the most this costs in
// resident memory per process beyond what the program itself holds live (a block larger
// than that is never kept). Why that much: large strings die in batches, a GC cycle sweeps
// all that died since the last one at once, and the next cycle's allocations can reuse
// only what the cache kept of the batch. Encoding a table holding a 1 MiB string 100 times
// in a loop (lua-cjson's own rate in bench/ipc): 254 page faults per encode without the
// cache, 160 with 8 MiB cached, 49 with 32 MiB, 31 with 64 MiB. CACHE_BLOCKS (32) only
// bounds the scan of the cache, so that blocks of 1 MiB can fill it too. The cache is not
// dropped when idle: it is bounded, and a process that once handled large blocks is likely
// to again. The JSON encoder's output buffer, which becomes an IPC message's blob, comes
// from here too (lc_bigalloc_realloc).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE // mremap (the fuzz harnesses build this file without the project's flags)
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bigalloc.h"

#define BIG_MIN ((size_t)128 * 1024) // LuaJIT's own mmap threshold (lj_alloc.c)
#define BIG_HDR ((size_t)16)         // keeps LuaJIT's 16-byte alignment after the header
#define CACHE_BLOCKS 32
#define CACHE_BYTES ((size_t)32 * 1024 * 1024)

static lua_Alloc orig_f; // LuaJIT's allocator and its state (the mspace)
static void *orig_ud;
static size_t page_size;

// Freed blocks, oldest first: the base of each mapping (its header holds the length).
static char *cache[CACHE_BLOCKS];
static int cache_n;
static size_t cache_bytes;

static size_t block_cap(const char *base) {
  return *(const size_t *)base;
}

static size_t map_len(size_t nsize) {
  return (nsize + BIG_HDR + page_size - 1) & ~(page_size - 1);
}

static void cache_take(int i) {
  cache_bytes -= block_cap(cache[i]);
  memmove(&cache[i], &cache[i + 1], (size_t)(cache_n - i - 1) * sizeof(cache[0]));
  cache_n--;
}

static void *big_alloc(size_t nsize) {
  size_t len = map_len(nsize);
  // Best fit among the cached blocks, but not one more than twice the size: a 16 MiB
  // block kept for a 130 KiB string would pin the difference for the string's life.
  // Failing that, the largest smaller block, extended by mremap: its pages stay warm and
  // only the rest is fresh (the JSON encoder reserves 6 bytes per string byte and writes
  // one, so its buffer is mostly the warm part).
  int best = -1, grow = -1;
  for (int i = 0; i < cache_n; i++) {
    size_t cap = block_cap(cache[i]);
    if (cap >= len) {
      if (cap / 2 <= len && (best < 0 || cap < block_cap(cache[best]))) best = i;
    } else if (grow < 0 || cap > block_cap(cache[grow])) {
      grow = i;
    }
  }
  if (best >= 0) {
    char *base = cache[best];
    cache_take(best);
    return base + BIG_HDR;
  }
  if (grow >= 0) {
    char *base = cache[grow];
    size_t cap = block_cap(base);
    cache_take(grow); // before mremap: it reads the header, which may move
    char *nbase = mremap(base, cap, len, MREMAP_MAYMOVE);
    if (nbase != MAP_FAILED) {
      *(size_t *)nbase = len;
      return nbase + BIG_HDR;
    }
    munmap(base, cap);
  }
  char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  *(size_t *)base = len;
  return base + BIG_HDR;
}

static void big_free(void *ptr) {
  char *base = (char *)ptr - BIG_HDR;
  size_t cap = block_cap(base);
  if (cap > CACHE_BYTES) {
    munmap(base, cap);
    return;
  }
  // Make room by dropping the oldest blocks: the newest is the likeliest to be asked for
  // again (the same message size, the next message).
  while (cache_n == CACHE_BLOCKS || cache_bytes + cap > CACHE_BYTES) {
    char *old = cache[0];
    size_t ocap = block_cap(old);
    cache_take(0);
    munmap(old, ocap);
  }
  cache[cache_n++] = base;
  cache_bytes += cap;
}

static void *big_realloc(void *ptr, size_t nsize) {
  char *base = (char *)ptr - BIG_HDR;
  size_t cap = block_cap(base);
  size_t len = map_len(nsize);
  // In place while it fits and no more than half of the mapping would be idle.
  if (len <= cap && cap / 2 <= len) return ptr;
  // Otherwise let the kernel move or resize the mapping: page tables, not bytes, move.
  char *nbase = mremap(base, cap, len, MREMAP_MAYMOVE);
  if (nbase == MAP_FAILED) return NULL;
  *(size_t *)nbase = len;
  return nbase + BIG_HDR;
}

// A large block made, freed, or resized (either size at or above BIG_MIN).
// (The same arguments as lc_alloc, so that the call from there moves no register.)
static __attribute__((noinline)) void *big_path(void *ud, void *ptr, size_t osize, size_t nsize) {
  if (nsize == 0) { // free of a large block
    big_free(ptr);
    return NULL;
  }
  if (ptr == NULL) return big_alloc(nsize); // osize is 0 for a new block
  if (osize >= BIG_MIN && nsize >= BIG_MIN) return big_realloc(ptr, nsize);
  // Across the threshold: copy between the two allocators. On failure the old block is
  // left as it was, as lua_Alloc requires.
  void *np = nsize >= BIG_MIN ? big_alloc(nsize) : orig_f(ud, NULL, 0, nsize);
  if (np == NULL) return NULL;
  memcpy(np, ptr, osize < nsize ? osize : nsize);
  if (osize >= BIG_MIN) {
    big_free(ptr);
  } else {
    orig_f(ud, ptr, osize, 0);
  }
  return np;
}

// Small freed blocks, by size class: LIFO lists threaded through the blocks' first word.
// Class c holds blocks freed with a size of 8c-7 .. 8c bytes. LuaJIT's allocator (dlmalloc)
// makes chunks a multiple of its 8- or 16-byte alignment with 8 bytes of overhead, so a block
// asked for n bytes has at least n rounded up to 8 usable: any block of class c holds any
// request of class c, whoever asked for it first (blocks made before the wrapper was
// installed included). lua_Alloc frees pass the exact size (LuaJIT's GC accounting depends
// on it: g->gc.total must come back to the state's own size at close).
#define POOL_CLASSES 65                  // 8 .. 512 bytes
#define POOL_BYTES ((size_t)1024 * 1024) // at most this much kept out of LuaJIT's allocator
static void *pool[POOL_CLASSES];
static size_t pool_bytes;

// The state's allocator; ud is LuaJIT's own (its mspace). The large path is out of line so
// that this one saves no registers. (BIG_MIN is a power of two, so the or is below it when
// both sizes are.)
// Small blocks freed and made go through the pool first: a request allocates ~60 small
// objects and the GC frees them in batches, where dlmalloc's free (coalescing with the free
// neighbours, binning) cost ~110 instructions a block and its malloc ~50, the pool ~10 each.
static void *lc_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  if ((osize | nsize) < BIG_MIN) {
    if (nsize == 0) {
      size_t c = (osize + 7) >> 3;
      if (c - 1 < POOL_CLASSES - 1 && pool_bytes + 8 * c <= POOL_BYTES) {
        *(void **)ptr = pool[c];
        pool[c] = ptr;
        pool_bytes += 8 * c;
        return NULL;
      }
    } else if (ptr == NULL) {
      size_t c = (nsize + 7) >> 3;
      void *p;
      if (c < POOL_CLASSES && (p = pool[c]) != NULL) {
        pool[c] = *(void **)p;
        pool_bytes -= 8 * c;
        return p;
      }
    }
    return orig_f(ud, ptr, osize, nsize);
  }
  return big_path(ud, ptr, osize, nsize);
}

void *lc_bigalloc_realloc(void *ptr, size_t osize, size_t nsize) {
  if (orig_f != NULL) return lc_alloc(orig_ud, ptr, osize, nsize);
  // Not installed (the fuzz harnesses link the JSON code without main.c): the C heap.
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

void lc_bigalloc_install(lua_State *L) {
  page_size = (size_t)sysconf(_SC_PAGESIZE);
  orig_f = lua_getallocf(L, &orig_ud);
  lua_setallocf(L, lc_alloc, orig_ud);
}

// After lua_close: every large block has come back (to the cache or unmapped); unmap the
// cache. (LuaJIT's close frees its state through the wrapper rather than destroying its
// mspace, whose segments, mmap'd, not malloc'd, go with the process at the exit that
// follows; neither ASan nor valgrind count mappings as leaks.)
void lc_bigalloc_release(void) {
  while (cache_n > 0) {
    char *base = cache[cache_n - 1];
    size_t cap = block_cap(base);
    cache_take(cache_n - 1);
    munmap(base, cap);
  }
}
