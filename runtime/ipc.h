// ipc.h: the cluster IPC channel for C code (the master's round-robin hand-off sends accepted
// fds to workers with it). Lua reaches the same channel through `_core.ipc` (see ipc.c).
#pragma once

#include "ipc_frame.h"
#include "lc.h"

typedef struct lc_ipc lc_ipc_t;

/// A C consumer of received frames, called before Lua sees a frame. Returns 1 when it took
/// the frame (and its fds), 0 to let the frame go to Lua as usual.
typedef int (*lc_ipc_hook)(lc_ipc_t *ch, const lc_ipc_frame_t *f, void *data);

/// Checks that argument idx is an open IPC channel (`_core.ipc` handle); raises otherwise.
lc_ipc_t *lc_ipc_check(lua_State *L, int idx);

/// Sends one frame of `kind` (LC_IPC_KIND_*) with `len` bytes of body and `nfds` fds (at most
/// LC_IPC_FRAME_MAX_FDS; fds may be NULL when nfds is 0). The bytes are written at once when
/// nothing is queued, else queued (copied) and written when the socket is writable, in order.
/// The caller keeps ownership of `fds` unless close_fds is set, in which case the channel
/// closes them once they are sent (or when the send fails or the channel closes first).
/// Returns 0 or a libuv error (UV_EPIPE when the channel is closed or closing).
int lc_ipc_send(lc_ipc_t *ch, int kind, const char *body, size_t len, const int *fds, int nfds,
                int close_fds);

/// Installs (or with NULL removes) the C consumer of this channel's frames.
void lc_ipc_set_hook(lc_ipc_t *ch, lc_ipc_hook hook, void *data);

/// Bytes accepted by lc_ipc_send that the kernel has not taken yet.
size_t lc_ipc_queued(const lc_ipc_t *ch);
