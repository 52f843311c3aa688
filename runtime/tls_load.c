// tls_load.c: TLS on demand. runtime/tlsmod/tls.c and a static OpenSSL are built as a shared
// object of their own (CMake target lctls) whose bytes this file embeds (.incbin). The first
// _core.tls_load() copies them to a memfd and dlopens it, so the binary still runs with no
// file beside it, and a process that never requires tls (most masters and workers) maps,
// relocates and pages in none of OpenSSL: linked into the binary itself, OpenSSL cost every
// process ~1 MB of RSS and its start-up relocations.
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lc.h"

#ifndef LC_TLSMOD_PATH
#error "LC_TLSMOD_PATH must name the built TLS module (CMakeLists.txt sets it)"
#endif

__asm__(".section .rodata\n"
        ".balign 16\n"
        "lc_tlsmod_start:\n"
        ".incbin \"" LC_TLSMOD_PATH "\"\n"
        "lc_tlsmod_end:\n"
        ".previous\n");
extern const char lc_tlsmod_start[] __asm__("lc_tlsmod_start");
extern const char lc_tlsmod_end[] __asm__("lc_tlsmod_end");

#define TLSMOD_KEY "lc.tlsmod"

static int load_error(lua_State *L, const char *what, const char *detail) {
  lua_pushnil(L);
  lua_pushfstring(L, "ERR_TLS_UNAVAILABLE: cannot load the TLS module (%s: %s)", what, detail);
  lua_pushstring(L, "ERR_TLS_UNAVAILABLE");
  return 3;
}

// _core.tls_load() -> the TLS module's table (cached) | nil, err, code
static int tls_load(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, TLSMOD_KEY); // [mod?]
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1); // []
  int fd = memfd_create("lcluster-tls", MFD_CLOEXEC);
  if (fd < 0) return load_error(L, "memfd_create", strerror(errno));
  const char *p = lc_tlsmod_start;
  size_t left = (size_t)(lc_tlsmod_end - lc_tlsmod_start);
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      close(fd);
      return load_error(L, "write", strerror(e));
    }
    p += n;
    left -= (size_t)n;
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  // The module stays loaded for the life of the process: its metatables' __gc live in it.
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  close(fd);
  if (h == NULL) return load_error(L, "dlopen", dlerror());
  int (*open_fn)(lua_State *) = (int (*)(lua_State *))dlsym(h, "lc_tls_module_open");
  if (open_fn == NULL) return load_error(L, "dlsym", dlerror());
  open_fn(L); // [mod]
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, TLSMOD_KEY); // [mod]
  return 1;
}

void lc_tls_load_open(lua_State *L) {
  lua_pushcfunction(L, tls_load);  // [core, fn]
  lua_setfield(L, -2, "tls_load"); // [core]
}
