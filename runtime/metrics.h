// metrics.h: the process's operational counters (docs/architecture.md, "Operations"). Hot
// paths bump a field with a plain increment; Lua reads the struct through the FFI
// (_core.metrics is its address), so neither side pays a call or a lock: the runtime is
// single-threaded, and the master sees the values only in a worker's periodic report.
#ifndef LC_METRICS_H
#define LC_METRICS_H

#include <stdint.h>

typedef struct {
  uint64_t requests;       // HTTP requests parsed to their end (http.c)
  uint64_t conns_accepted; // connections a server of this process took (net.lua, FFI)
  int64_t conns_open;      // of those, still open (net.lua, FFI)
  uint64_t bytes_in;       // bytes read from any stream (stream.c)
  uint64_t bytes_out;      // bytes written to any stream (stream.c, http.c)
  uint64_t handoffs;       // connections received from the master (_cluster_shared.lua, FFI)
  uint64_t ipc_in;         // IPC frames received (ipc.c)
  uint64_t ipc_out;        // IPC frames sent (ipc.c)
} lc_metrics_t;

// The Lua side declares the same layout in lualib/ops/_metrics.lua: keep them in step.
extern lc_metrics_t lc_metrics;

#endif
