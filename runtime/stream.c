// stream.c: reading and writing for every stream kind (tcp, pipe, tty). Events go to the
// handle's Lua callback as cb(event, ...): "data"(string), "end", "error"(msg, code),
// "drain". Reads use one static buffer because each chunk is copied into a Lua string (or
// consumed by a C hook) before the next read.
#include <stdlib.h>
#include <string.h>

#include "lc.h"
#include "metrics.h"

static char read_buf[65536];

typedef struct {
  uv_write_t req;
  lc_stream_t *s;
  int data_ref;
  int cb_ref;
  uv_buf_t buf;
} write_req_t;

lc_stream_t *lc_stream_check(lua_State *L, int idx) {
  lc_handle_t **ud = lua_touserdata(L, idx);
  if (ud == NULL || *ud == NULL || (*ud)->closing) luaL_argerror(L, idx, "expected an open stream");
  lc_stream_t *s = (lc_stream_t *)*ud;
  int t = s->h.uv->type;
  if (t != UV_TCP && t != UV_NAMED_PIPE && t != UV_TTY) luaL_argerror(L, idx, "expected a stream");
  return s;
}

void lc_stream_init(lc_stream_t *s, int kind, lc_stream_ud_t *ud) {
  s->ud = ud;
  s->kind = (uint8_t)kind;
  s->hwm = 16 * 1024;
  s->h.uv = (uv_handle_t *)&s->u.stream;
  s->u.stream.data = s;
}

void lc_stream_set_ctx(lua_State *L, lc_stream_t *s, int ud_idx, int idx) {
  if (ud_idx < 0) ud_idx = lua_gettop(L) + ud_idx + 1;
  if (lua_isnoneornil(L, idx)) {
    s->has_ctx = 0;
    return;
  }
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushvalue(L, idx);
  lua_setfenv(L, ud_idx);
  s->has_ctx = 1;
}

void lc_stream_emit(lua_State *L, lc_stream_t *s, const char *event, int nargs) {
  if (!lc_handle_push_cb(L, &s->h)) {
    lua_pop(L, nargs);
    return;
  }
  lua_insert(L, -1 - nargs); // [cb, args...]
  if (s->has_ctx) {
    lc_handle_push_self(L, &s->h);
    lua_getfenv(L, -1);
    lua_remove(L, -2);
    lua_insert(L, -1 - nargs); // [cb, ctx, args...]
  }
  lua_pushstring(L, event);
  lua_insert(L, -1 - nargs); // [cb, (ctx,) event, args...]
  lc_pcall(L, nargs + 1 + s->has_ctx, 0);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = read_buf;
  buf->len = sizeof(read_buf);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  lc_stream_t *s = st->data;
  lua_State *L = lc_L;
  if (nread == 0) return;
  if (nread > 0) {
    s->ud->bytes_read += (uint64_t)nread;
    lc_metrics.bytes_in += (uint64_t)nread;
  }
  if (s->hook != NULL) {
    lc_http_stream_read(s, nread, buf->base);
    return;
  }
  if (nread > 0) {
    lua_pushlstring(L, buf->base, (size_t)nread);
    lc_stream_emit(L, s, "data", 1);
  } else if (nread == UV_EOF) {
    uv_read_stop(st);
    lc_stream_emit(L, s, "end", 0);
  } else {
    uv_read_stop(st);
    lua_pushfstring(L, "%s: %s", uv_err_name((int)nread), uv_strerror((int)nread));
    lua_pushstring(L, uv_err_name((int)nread));
    lc_stream_emit(L, s, "error", 2);
  }
}

static int s_read_start(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  return lc_util_push_result(L, uv_read_start(&s->u.stream, alloc_cb, read_cb));
}

static int s_read_stop(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  return lc_util_push_result(L, uv_read_stop(&s->u.stream));
}

static void write_cb(uv_write_t *req, int status) {
  write_req_t *w = (write_req_t *)req;
  lc_stream_t *s = w->s;
  lua_State *L = lc_L;
  luaL_unref(L, LUA_REGISTRYINDEX, w->data_ref);
  int cb_ref = w->cb_ref;
  free(w);
  if (cb_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, cb_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, cb_ref);
    if (status < 0) {
      lua_pushfstring(L, "%s: %s", uv_err_name(status), uv_strerror(status));
    } else {
      lua_pushnil(L);
    }
    lc_pcall(L, 1, 0);
  }
  if (status == UV_ECANCELED) return; // closing: the stream may already be gone
  if (status < 0) {
    if (!s->h.closing) {
      lua_pushfstring(L, "%s: %s", uv_err_name(status), uv_strerror(status));
      lua_pushstring(L, uv_err_name(status));
      lc_stream_emit(L, s, "error", 2);
    }
    return;
  }
  if (s->want_drain && s->u.stream.write_queue_size == 0 && !s->h.closing) {
    s->want_drain = 0;
    lc_stream_emit(L, s, "drain", 0);
  }
}

int lc_stream_write(lua_State *L, lc_stream_t *s, const char *data, size_t len, int ref_idx,
                    int cb_idx) {
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned int)len);
  // Try the write at once when nothing is queued: most writes complete here without a
  // request, a registry reference or a loop turn.
  if (s->u.stream.write_queue_size == 0 && cb_idx == 0) {
    int n = uv_try_write(&s->u.stream, &buf, 1);
    if (n == (int)len) {
      s->ud->bytes_written += len;
      lc_metrics.bytes_out += len;
      return 0;
    }
    if (n > 0) {
      buf.base += n;
      buf.len -= (unsigned int)n;
      s->ud->bytes_written += (uint64_t)n;
      lc_metrics.bytes_out += (uint64_t)n;
      len -= (size_t)n;
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      return n;
    }
  }
  write_req_t *w = malloc(sizeof(*w));
  if (w == NULL) return UV_ENOMEM;
  w->s = s;
  w->buf = buf;
  lua_pushvalue(L, ref_idx);
  w->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  w->cb_ref = LUA_NOREF;
  if (cb_idx != 0) {
    lua_pushvalue(L, cb_idx);
    w->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  int rc = uv_write(&w->req, &s->u.stream, &w->buf, 1, write_cb);
  if (rc < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, w->data_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, w->cb_ref);
    free(w);
    return rc;
  }
  s->ud->bytes_written += len;
  lc_metrics.bytes_out += len;
  return 0;
}

// stream:write(data [, fn]) -> below_hwm | nil, err, code. `below_hwm` is false when the
// queue passed the high-water mark: a "drain" event follows once it empties.
static int s_write(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int cb_idx = lua_isfunction(L, 3) ? 3 : 0;
  int rc = lc_stream_write(L, s, data, len, 2, cb_idx);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  int below = s->u.stream.write_queue_size < s->hwm;
  if (!below) s->want_drain = 1;
  lua_pushboolean(L, below);
  return 1;
}

typedef struct {
  uv_shutdown_t req;
  lc_stream_t *s;
  int cb_ref;
  int emit; // shutdown(true): the stream's callback gets "shutdown"(err?)
} shutdown_req_t;

static void shutdown_cb(uv_shutdown_t *req, int status) {
  shutdown_req_t *r = (shutdown_req_t *)req;
  lua_State *L = lc_L;
  int cb_ref = r->cb_ref;
  lc_stream_t *s = r->s;
  int emit = r->emit;
  free(r);
  if (emit) {
    // Cancelled means closing: the owner destroyed the stream and expects nothing more.
    if (status == UV_ECANCELED || s->h.closing) return;
    lc_stream_emit(L, s, "shutdown", lc_stream_push_status(L, status));
    return;
  }
  if (cb_ref == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, cb_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, cb_ref);
  if (status < 0 && status != UV_ECANCELED) {
    lua_pushfstring(L, "%s: %s", uv_err_name(status), uv_strerror(status));
  } else {
    lua_pushnil(L);
  }
  lc_pcall(L, 1, 0);
}

// stream:shutdown([fn | true]): half-close once queued writes are flushed; then fn(err?), or
// with true the stream's own callback gets "shutdown"(err?, code?) (not after a close).
static int s_shutdown(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  shutdown_req_t *r = malloc(sizeof(*r));
  if (r == NULL) return lc_util_push_uverr(L, UV_ENOMEM);
  r->s = s;
  r->cb_ref = LUA_NOREF;
  r->emit = lua_toboolean(L, 2) && !lua_isfunction(L, 2);
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    r->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  int rc = uv_shutdown(&r->req, &s->u.stream, shutdown_cb);
  if (rc < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->cb_ref);
    free(r);
    return lc_util_push_uverr(L, rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int s_write_queue_size(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  lua_pushinteger(L, (lua_Integer)s->u.stream.write_queue_size);
  return 1;
}

static int s_set_hwm(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  lua_Integer hwm = luaL_checkinteger(L, 2);
  s->hwm = hwm < 0 ? 0 : hwm > (lua_Integer)UINT32_MAX ? UINT32_MAX : (uint32_t)hwm;
  return 0;
}

// stream:set_ctx(table|nil): events go to cb(table, event, ...) (see lc_stream_set_ctx).
static int s_set_ctx(lua_State *L) {
  lc_stream_set_ctx(L, lc_stream_check(L, 1), 1, 2);
  return 0;
}

// stream:bytes() -> read, written; a closed stream answers with its counts at the close
// (they are in the userdata: lc_stream_t.ud).
static int s_bytes(lua_State *L) {
  lc_stream_ud_t *ud = lua_touserdata(L, 1);
  if (ud == NULL || lua_objlen(L, 1) < sizeof(*ud)) return luaL_argerror(L, 1, "expected a stream");
  if (ud->h != NULL) { // open or closing
    int t = ud->h->uv->type;
    if (t != UV_TCP && t != UV_NAMED_PIPE && t != UV_TTY)
      return luaL_argerror(L, 1, "expected a stream");
  }
  lua_pushnumber(L, (lua_Number)ud->bytes_read);
  lua_pushnumber(L, (lua_Number)ud->bytes_written);
  return 2;
}

static int s_is_readable(lua_State *L) {
  lua_pushboolean(L, uv_is_readable(&lc_stream_check(L, 1)->u.stream));
  return 1;
}

static int s_is_writable(lua_State *L) {
  lua_pushboolean(L, uv_is_writable(&lc_stream_check(L, 1)->u.stream));
  return 1;
}

int lc_stream_push_status(lua_State *L, int status) {
  if (status >= 0) return 0;
  lua_pushfstring(L, "%s: %s", uv_err_name(status), uv_strerror(status));
  lua_pushstring(L, uv_err_name(status));
  return 2;
}

static void on_connection(uv_stream_t *server, int status) {
  lc_stream_t *s = server->data;
  lua_State *L = lc_L;
  lc_stream_emit(L, s, "connection", lc_stream_push_status(L, status));
}

// stream:listen([backlog]) -> true | nil, err, code; then cb('connection', err?, code?) for
// each pending connection, to be taken with accept() (tcp and Unix sockets).
static int s_listen(lua_State *L) {
  lc_stream_t *s = lc_stream_check(L, 1);
  int backlog = (int)luaL_optinteger(L, 2, 511);
  return lc_util_push_result(L, uv_listen(&s->u.stream, backlog, on_connection));
}

int lc_stream_accept(lua_State *L, lc_stream_t *server, lc_stream_t *client) {
  int rc = uv_accept(&server->u.stream, &client->u.stream);
  if (rc < 0) {
    lc_handle_close(&client->h);
    lua_pop(L, 1); // [..]
    return lc_util_push_uverr(L, rc);
  }
  return 1;
}

typedef struct {
  uv_connect_t req;
  lc_stream_t *s;
} connect_req_t;

static void on_connect(uv_connect_t *req, int status) {
  connect_req_t *r = (connect_req_t *)req;
  lc_stream_t *s = r->s;
  free(r);
  // A handle closed while connecting is called back with ECANCELED before its memory goes.
  if (status == UV_ECANCELED || s->h.closing) return;
  lua_State *L = lc_L;
  lc_stream_emit(L, s, "connect", lc_stream_push_status(L, status));
}

uv_connect_t *lc_stream_connect_req(lc_stream_t *s, uv_connect_cb *cb) {
  connect_req_t *r = malloc(sizeof(*r));
  if (r == NULL) return NULL;
  r->s = s;
  *cb = on_connect;
  return &r->req;
}

void lc_stream_connect_failed(uv_connect_t *req) {
  free((connect_req_t *)req);
}

void lc_stream_add_methods(lua_State *L) {
  static const luaL_Reg methods[] = {{"read_start", s_read_start},
                                     {"read_stop", s_read_stop},
                                     {"write", s_write},
                                     {"shutdown", s_shutdown},
                                     {"write_queue_size", s_write_queue_size},
                                     {"set_hwm", s_set_hwm},
                                     {"bytes", s_bytes},
                                     {"set_ctx", s_set_ctx},
                                     {"is_readable", s_is_readable},
                                     {"is_writable", s_is_writable},
                                     {"listen", s_listen},
                                     {NULL, NULL}};
  luaL_register(L, NULL, methods);
}
