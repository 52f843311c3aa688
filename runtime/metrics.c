// metrics.c: the counters of metrics.h and their address for Lua (_core.metrics).
#include "metrics.h"
#include "lc.h"

lc_metrics_t lc_metrics;

void lc_metrics_open(lua_State *L) {
  lua_pushlightuserdata(L, &lc_metrics);
  lua_setfield(L, -2, "metrics");
}
