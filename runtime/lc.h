// lc.h: what the C core's files share. Every exported name starts with its file's name
// (`lc_handle_*` lives in handle.c, `lc_util_*` in util.c) except the few process-wide
// entry points declared here under `lc_`.
#pragma once

#include <stddef.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#define LC_VERSION "0.1.0"

/// The process's one Lua state and one libuv loop. Set once in main.c before any script runs.
extern lua_State *lc_L;
extern uv_loop_t *lc_loop;

/// Calls the function below `nargs` arguments on the stack with the runtime's traceback
/// handler. An error is an uncaught error: it goes to `process.on('uncaughtException')` when
/// a listener is set, else its traceback is printed and the process exits with status 1.
/// Returns 0 when the call succeeded (results are left on the stack), -1 when it raised
/// and the error was handled (nothing is left on the stack).
int lc_pcall(lua_State *L, int nargs, int nresults);

/// _core.set_uncaught(fn): the Lua function every uncaught error is given to, as
/// fn(err, traceback) -> handled.
int lc_set_uncaught(lua_State *L);
/// _core.call(fn, ...): calls fn through lc_pcall; returns true on success, false when the
/// error went to the uncaught handler (which chose to continue).
int lc_call(lua_State *L);

/// Flushes stdio and ends the process with `code`, running nothing else.
void lc_exit(int code) __attribute__((noreturn));

// ---- util.c: error conventions (STYLE.md habit 2) ----

/// Pushes `nil, "ECODE: message", "ECODE"` for a libuv error and returns 3.
int lc_util_push_uverr(lua_State *L, int err);
/// Pushes `true` when err == 0, else the three error values. Returns the count pushed.
int lc_util_push_result(lua_State *L, int err);
/// Pushes a sockaddr as a table {address=, family=, port=}; pushes nil when sa is NULL.
void lc_util_push_addr(lua_State *L, const struct sockaddr *sa);
/// Fills `ss` from host/port (numeric addresses only). Returns 0 or a libuv error.
int lc_util_parse_addr(const char *host, int port, struct sockaddr_storage *ss);
/// A registry reference to the function at `idx` that handles share: one reference per
/// function, counted, rather than one per handle (net's dispatch, http's parser events: the
/// "ctx" mode, where one function serves every connection). Release with lc_util_unref.
int lc_util_ref_shared(lua_State *L, int idx);
/// Releases a reference from lc_util_ref_shared or luaL_ref (LUA_NOREF is ignored).
void lc_util_unref(lua_State *L, int ref);

// ---- handle.c: handle lifetime shared by every handle type ----

/// The head of every handle binding. The userdata holds a pointer to this block (which is
/// malloc'd and freed only in the close callback). While the handle is open, `self_ref`
/// keeps the userdata alive from the registry and `cb_ref` is the Lua function events go to.
typedef struct lc_handle {
  uv_handle_t *uv; // points into the enclosing type-specific struct
  int self_ref;
  int cb_ref;
  int close_ref; // the function given to handle:close(fn), called after the free
  int closing;
} lc_handle_t;

/// Allocates `size` bytes (the enclosing struct, whose first member is an lc_handle_t),
/// pushes a new userdata with metatable `mt` and records a reference to the callback at
/// stack index `cb_idx` (may be 0 for none). The caller initialises the uv handle and sets
/// `h->uv` before returning.
void *lc_handle_new(lua_State *L, size_t size, const char *mt, int cb_idx);
/// lc_handle_new with a userdata of `ud_size` bytes (at least a pointer): streams use an
/// lc_stream_ud_t.
void *lc_handle_new_ud(lua_State *L, size_t size, size_t ud_size, const char *mt, int cb_idx);
/// Checks that argument `idx` is a handle of metatable `mt` that is not closing.
void *lc_handle_check(lua_State *L, int idx, const char *mt);
/// Like lc_handle_check but accepts closing handles.
void *lc_handle_check_any(lua_State *L, int idx, const char *mt);
/// Pushes the handle's callback function; returns 0 when it has none (nothing pushed).
int lc_handle_push_cb(lua_State *L, lc_handle_t *h);
/// Pushes the handle's userdata (valid while open).
void lc_handle_push_self(lua_State *L, lc_handle_t *h);
/// Starts closing; the memory is freed in the close callback. Safe to call twice.
void lc_handle_close(lc_handle_t *h);
/// Registers the methods shared by every handle (close, ref, unref, has_ref, is_closing,
/// fileno) into the table on top of the stack.
void lc_handle_add_methods(lua_State *L);
/// Creates metatable `name` with the shared methods, then those `extra` registers (may be
/// NULL; stream types pass lc_stream_add_methods), then `methods`, and a __gc.
void lc_handle_meta(lua_State *L, const char *name, const luaL_Reg *methods,
                    void (*extra)(lua_State *L));

// ---- stream.c: what tcp, pipe and tty handles share ----

/// A stream's userdata: the handle (NULL once closed), then the byte counts, which the
/// stream keeps there (lc_stream_t.ud) so that bytes() still answers once it closed (net's
/// bytesRead after a close).
typedef struct {
  lc_handle_t *h;
  uint64_t bytes_read;
  uint64_t bytes_written;
} lc_stream_ud_t;

/// The head of every stream binding. `u` is the libuv handle; `hook` when set is the HTTP
/// parser reading the stream (lc_http_stream_read gets the reads before, instead of, Lua).
/// Every idle connection holds one, so it is kept small: `u` comes last so that a stream
/// allocates only its own kind's libuv handle (LC_STREAM_SIZE: a TCP stream is 296 bytes
/// instead of the union's 360), the byte counts are in the userdata (alive as long as the
/// stream: its self reference) and the one reader there is is called directly rather than
/// through a function pointer. With the parser's room a connection's stream is 344 bytes,
/// which glibc's malloc serves from a 352-byte chunk (360 bytes took 368).
typedef struct lc_stream {
  lc_handle_t h;
  void *hook;         // the HTTP parser (http_conn_t) reading this stream, or NULL
  lc_stream_ud_t *ud; // the userdata, which holds the byte counts
  uint32_t hwm;       // write-queue size over which write() returns false
  uint8_t want_drain; // write() returned false; emit "drain" when the queue empties
  uint8_t kind;       // LC_STREAM_TCP, LC_STREAM_PIPE or LC_STREAM_TTY
  uint8_t has_ctx;    // events go to cb(ctx, event, ...), ctx being the userdata's env table
  uint8_t room;       // a TCP stream allocated with LC_STREAM_ROOM_SIZE bytes after its handle
  union {
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } u;
} lc_stream_t;

/// Bytes to allocate for a stream whose handle is `u.member` (tcp, pipe, tty).
#define LC_STREAM_SIZE(member) (offsetof(lc_stream_t, u) + sizeof(((lc_stream_t *)0)->u.member))

/// A TCP stream created with room (`_core.tcp(cb, true)`, `tcp:accept(cb, ctx, true)`: an
/// HTTP server's connections) has this many zeroed bytes after its handle, freed with it,
/// for its reader's state: http.c keeps the parser of the stream there instead of in a
/// userdata of its own (one Lua object and one registry reference less per connection).
#define LC_STREAM_ROOM_SIZE 48
/// The room of a TCP stream created with it, else NULL.
static inline void *lc_stream_room(lc_stream_t *s) {
  return s->room ? (char *)s + LC_STREAM_SIZE(tcp) : NULL;
}

enum { LC_STREAM_TCP = 1, LC_STREAM_PIPE = 2, LC_STREAM_TTY = 3 };

/// Checks that argument idx is an open stream of any kind.
lc_stream_t *lc_stream_check(lua_State *L, int idx);
/// Registers the stream methods (read_start, read_stop, write, shutdown, ...) into the table
/// on top of the stack; tcp.c and pipe.c add them to their own metatables.
void lc_stream_add_methods(lua_State *L);
/// Makes the table at `idx` the stream's context: its events go to cb(ctx, event, ...), so one
/// function serves every stream of a kind with no closure per stream. The userdata (on top of
/// the stack or at `ud_idx`) keeps the table as its environment.
void lc_stream_set_ctx(lua_State *L, lc_stream_t *s, int ud_idx, int idx);
/// Initialises the shared fields after the uv handle was initialised; `ud` is the stream's
/// userdata (lc_handle_new_ud with sizeof(lc_stream_ud_t)), which keeps its byte counts.
void lc_stream_init(lc_stream_t *s, int kind, lc_stream_ud_t *ud);
/// http.c: the reader of a stream whose `hook` is set (http_attach). Called from the read
/// callback with nread > 0 and the bytes, or nread < 0 (UV_EOF or an error); it owns the
/// event delivery to Lua for that stream while it is set. Called with nread 0 (and no data)
/// when the stream's close completed and its memory is about to be freed: the parser must
/// forget the stream.
void lc_http_stream_read(lc_stream_t *s, ssize_t nread, const char *data);
/// Writes `len` bytes held by the Lua value at stack index `ref_idx` (kept referenced until
/// written). Returns 0 or a libuv error. `cb_idx` (0 for none) is a function called on
/// completion with (err or nil).
int lc_stream_write(lua_State *L, lc_stream_t *s, const char *data, size_t len, int ref_idx,
                    int cb_idx);
/// Delivers a stream event to its Lua callback: cb(event, ...) with nargs values on the stack,
/// or cb(ctx, event, ...) when the stream has a context (stream:set_ctx, tcp:accept(cb, ctx)).
void lc_stream_emit(lua_State *L, lc_stream_t *s, const char *event, int nargs);
/// Pushes "ECODE: message", "ECODE" for a failed status (returns 2), nothing for status >= 0.
int lc_stream_push_status(lua_State *L, int status);
/// Accepts a pending connection of `server` into `client`, whose userdata is on top of the
/// stack. Returns 1 (the client stays pushed), or closes the client, pops it and pushes the
/// error values.
int lc_stream_accept(lua_State *L, lc_stream_t *server, lc_stream_t *client);
/// A connect request for `s` whose completion emits cb('connect', err?, code?) on the stream;
/// *cb receives the callback to pass to libuv. NULL when out of memory. If the libuv call
/// fails synchronously, release it with lc_stream_connect_failed.
uv_connect_t *lc_stream_connect_req(lc_stream_t *s, uv_connect_cb *cb);
void lc_stream_connect_failed(uv_connect_t *req);

// ---- the binding modules: each registers its functions into the `_core` table on top of
// the stack. Declared weak so a module can land in its own commit; core.c skips absent ones.
#define LC_BINDING(name) void name(lua_State *L) __attribute__((weak))
LC_BINDING(lc_timer_open);
LC_BINDING(lc_signal_open);
LC_BINDING(lc_check_open);
LC_BINDING(lc_process_open);
LC_BINDING(lc_stream_open);
LC_BINDING(lc_tcp_open);
LC_BINDING(lc_pipe_open);
LC_BINDING(lc_udp_open);
LC_BINDING(lc_ipc_open);
LC_BINDING(lc_http_open);
LC_BINDING(lc_fs_open);
LC_BINDING(lc_dns_open);
LC_BINDING(lc_rr_open);
LC_BINDING(lc_systemd_open);
LC_BINDING(lc_metrics_open);
LC_BINDING(lc_tls_load_open);
#undef LC_BINDING

/// Opens Debian's luv on lc_loop with its callbacks routed through lc_pcall (runtime/luv.c);
/// main.c preloads it as `_luv`, which lualib's `luv` module returns.
int lc_luv_luaopen(lua_State *L);

/// Opens the `_core` module (the loop and the bindings above) and returns 1.
int lc_core_luaopen(lua_State *L);

/// The embedded lualib: registers every module into package.preload (or, when the
/// LCLUSTER_LUALIB environment variable names a folder, loaders that read the sources).
void lc_lualib_register(lua_State *L);
