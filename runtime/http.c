// http.c: HTTP/1.x parsing and response formatting for lualib/net/http.lua, on llhttp (Node's
// parser, compiled in from Debian's node-llhttp sources: deps/Dependencies.cmake).
//
// `_core.http_attach(stream, mode, cb, opts)` sets the stream's C read hook so a
// connection's bytes go straight from the read callback into llhttp: nothing is copied
// into Lua but the head (as one table) and body chunks. Events reach Lua as cb(event, ...):
//   "head"(method|status, url|reason, version, headers, keepAlive, upgrade, complete, expect)
//          one call per message; `complete` is true when the message had no body left, so a
//          simple GET costs one Lua call. With opts.lazyHeaders (request mode), `headers` is
//          the raw header block as one string, turned into the table by
//          `_core.http_headers(raw)` only if Lua reads it, and `expect` says whether the
//          head has an Expect header;
//   "body"(chunk); "done"() when a message with a body completes;
//   with opts.lazyHeaders, a Content-Length body's last span is not a "body" event but goes
//          with the call that completes the message: "head"(..., expect, body) when the
//          head and the whole body came in one feed (complete is true), else
//          "done"(chunk). A small POST costs one Lua call, as a GET does;
//   "upgrade"(rest) after an upgrade/CONNECT head: parsing stops, rest is what followed;
//   "error"(status, code, message): 400 (parser error), 431 (head too large) or 413 (body
//          too large); the connection parses nothing more.
// Parsing is strict (llhttp without any lenient flag, as Node runs it): whitespace before a
// header's colon, a bad chunk framing, Content-Length with Transfer-Encoding, and (request
// mode, our own check) an HTTP/1.1 request without exactly one Host header are 400s, so a
// request smuggled behind an ambiguous framing is never parsed as one.
// EOF and read errors still go to the stream's own callback (lc_stream_emit) as "end" and
// "error", so the socket object sees them as it would without the hook.
//
// `_core.http_send(stream, status, reason, headers, names, flags, length, body)` formats a
// response head (status line, headers, a per-second cached Date, Content-Length or chunked)
// and/or a body chunk into one buffer and writes it with one try-write. `headers` is a
// table or the lines `_core.http_head_lines(tbl)` made at writeHead.
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <llhttp.h>

#include "lc.h"
#include "metrics.h"

#define MT "lc.http"

enum { MODE_REQUEST = 0, MODE_RESPONSE = 1 };

typedef struct {
  uint32_t name_off, name_len, val_off, val_len;
} hdr_t;

// The state of the message being parsed, and of the feed (one llhttp_execute) parsing it.
// A connection holds one only while a message is in progress or a read is being parsed:
// between messages it goes back to a process-wide pool (see msg_release), with its buffers.
typedef struct http_msg {
  llhttp_t p; // set up afresh when the block is taken (llhttp_init): between keep-alive
              // messages llhttp's state is its initial one
  // The message's url/status text and headers, copied into buf because the read buffer is
  // reused by the next read. Kept with the block in the pool when of the first size.
  char *buf;
  size_t cap;
  hdr_t *hdrs;
  uint32_t hdrs_cap;
  // Everything from here is zeroed when the block is taken from the pool.
  uint32_t url_len;
  size_t len;
  uint32_t nhdrs;
  uint32_t dropped; // headers over max_headers: counted, not stored
  int in_value;     // the last header callback was a value
  int err_status;   // our own errors: 431 or 413 (limits), 400 (err_code)
  size_t header_bytes;
  uint64_t body_bytes;
  double msg_start; // loop time (ms) when the message's first byte arrived
  // The body's last span (opts.lazyHeaders: http.lua's server), held from on_body to
  // on_message_complete, which llhttp calls next in the same feed (the span points into it):
  // it goes to Lua with the head or with "done", one call instead of two or three.
  const char *last_at;
  size_t last_len;
  const char *err_code, *err_msg; // our own 400s
  // Obsolete line folding (RFC 9112 5.2) is seen from where llhttp's spans start: the bytes
  // it skipped between a header's name and value, or between two spans of one value, are a
  // line break only in a fold. A span that a read boundary cut is told apart by the feed
  // (one llhttp_execute call) it came from.
  const char *feed_start, *feed_end;
  uint32_t feed_gen;       // counts feeds
  uint32_t name_gen;       // the feed of name_end
  const char *name_end;    // where the last header name span ended
  uint32_t val_gen;        // the feed of the last value span
  unsigned val_at_end : 1; // the last value span ended at its feed's end (a cut, not a fold)
  unsigned gap_lf : 1;     // a line break after the name in an earlier feed (a fold)
  // conn:pause(): the bytes after the paused message wait here until conn:resume() (the
  // block is not given back while paused).
  char *pend;
  size_t pend_len, pend_cap;
} http_msg_t;

// A parser: what an idle keep-alive connection holds (the stream, the limits, the
// references), 48 bytes; llhttp's state and the message's are in `m`, NULL between messages.
// Either a userdata of its own, whose environment is http_attach's ctx (a table: http.lua's
// connection), or "embedded": the room of a stream created with it (lc_stream_room: an HTTP
// server's connections), when the ctx is the stream's own (http.lua's connection is its
// socket). An embedded parser has no Lua object (the stream's handle answers its methods),
// no reference of its own (it lives and goes with the stream) and gets its ctx from the
// stream: a userdata (~100 bytes) and a registry slot less per connection.
typedef struct http_conn {
  lc_stream_t *stream; // the attached stream: NULL before, and once detached or closed (the
                       // stream tells its reader when it goes: lc_http_stream_read with nread 0)
  int self_ref;        // keeps this userdata alive while attached
  int cb_ref;          // shared by every parser with a ctx (lc_util_ref_shared)
  // Limits (0 = none).
  uint32_t max_header_size;
  uint32_t max_headers;
  uint64_t max_body_size;
  http_msg_t *m;
  unsigned mode : 1; // MODE_REQUEST or MODE_RESPONSE
  unsigned in_message : 1;
  unsigned headers_done : 1;
  unsigned head_pending : 1; // head parsed but not yet delivered to Lua
  unsigned expect_head : 1;  // response mode: the request was HEAD, so no body follows
  unsigned dead : 1;         // an error was reported or parsing stopped for good
  unsigned lazy : 1;         // opts.lazyHeaders: "head" gets the raw header block (a string)
  unsigned stop : 1;         // Lua detached us (or closed the stream) during a callback
  // conn:pause(): parsing stops after the message in progress (llhttp's HPE_PAUSED), and the
  // bytes after it wait in m->pend until conn:resume() (http.lua: too many responses queued).
  unsigned want_pause : 1;
  unsigned paused : 1;
  unsigned feeding : 1; // inside llhttp_execute: a resume now only cancels the pause request
  unsigned served : 1;  // a head was delivered (http.lua: the connection served a request)
  // llhttp is at the start of a message (taken afresh, or after a keep-alive message), so
  // the block may go back between messages (after a closing one llhttp refuses more data).
  unsigned reusable : 1;
  unsigned has_ctx : 1;  // events go to cb(ctx, event, ...), ctx being the userdata's env
  unsigned embedded : 1; // in its stream's room (see above)
  uint8_t depth;         // conn_feed calls in progress: an embedded parser detached in a
                         // callback gives its message state back once they returned
} http_conn_t;

_Static_assert(sizeof(http_conn_t) <= LC_STREAM_ROOM_SIZE, "a parser fits in a stream's room");

// Pushes the ctx of an attached parser (has_ctx): the environment of its userdata, which
// self_ref anchors while attached, or for an embedded one its stream's (the stream's handle
// is alive while open).
static void push_ctx(lua_State *L, http_conn_t *c) {
  if (c->embedded) {
    lc_handle_push_self(L, &c->stream->h);
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->self_ref);
  }
  lua_getfenv(L, -1);
  lua_remove(L, -2);
}

// Calls cb(event, ...) with nargs values on the stack. Returns nonzero when parsing must stop
// (Lua detached the parser or closed the stream in the callback).
static int conn_emit(lua_State *L, http_conn_t *c, const char *event, int nargs) {
  if (c->cb_ref == LUA_NOREF) {
    lua_pop(L, nargs);
    return c->stop;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->cb_ref);
  lua_insert(L, -1 - nargs); // [cb, args...]
  int has_ctx = c->has_ctx;
  if (has_ctx) {
    push_ctx(L, c);
    lua_insert(L, -1 - nargs); // [cb, ctx, args...]
  }
  lua_pushstring(L, event);
  lua_insert(L, -1 - nargs); // [cb, (ctx,) event, args...]
  lc_pcall(L, nargs + 1 + has_ctx, 0);
  if (c->stream != NULL && c->stream->h.closing) c->stop = 1;
  return c->stop;
}

// Idle connections hold no message state: a connection between messages gives its
// http_msg_t (with its head buffer and header array) back to a process-wide pool at the end
// of the read that completed the message, and takes one again when the next read comes. A
// keep-alive request costs a pointer move and a clear for that instead of ~1.5 KB held per
// idle connection (the block and its buffers). Only blocks whose buffers have their first
// size are kept (a grown buffer is freed), and the pool is bounded, so a burst leaves at
// most SPARE_MAX blocks behind.
#define BUF_FIRST 1024
#define HDRS_FIRST 16
#define SPARE_MAX 64
static http_msg_t *spare_msgs[SPARE_MAX];
static int nspare_msgs;

static const llhttp_settings_t settings;

// Takes a block for c (c->m is NULL). Returns nonzero when out of memory.
static int msg_acquire(http_conn_t *c) {
  http_msg_t *m;
  if (nspare_msgs > 0) {
    m = spare_msgs[--nspare_msgs];
    memset(&m->url_len, 0, sizeof(*m) - offsetof(http_msg_t, url_len));
  } else {
    m = calloc(1, sizeof(*m));
    if (m == NULL) return -1;
  }
  llhttp_init(&m->p, c->mode == MODE_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
  m->p.data = c;
  c->m = m;
  c->reusable = 1;
  return 0;
}

static void msg_release(http_conn_t *c) {
  http_msg_t *m = c->m;
  c->m = NULL;
  free(m->pend);
  if (m->cap != BUF_FIRST) {
    free(m->buf);
    m->buf = NULL;
    m->cap = 0;
  }
  if (m->hdrs_cap != HDRS_FIRST) {
    free(m->hdrs);
    m->hdrs = NULL;
    m->hdrs_cap = 0;
  }
  if (nspare_msgs < SPARE_MAX) {
    spare_msgs[nspare_msgs++] = m;
  } else {
    free(m->buf);
    free(m->hdrs);
    free(m);
  }
}

// Makes room for n more bytes in c->m->buf (BUF_FIRST at first, then doubling).
// Out of line so that buf_append stays small enough to inline into the span callbacks.
static __attribute__((noinline)) int buf_grow(http_conn_t *c, size_t n) {
  size_t cap = c->m->cap ? c->m->cap : BUF_FIRST;
  while (cap < c->m->len + n)
    cap *= 2;
  char *nb = realloc(c->m->buf, cap);
  if (nb == NULL) return -1;
  c->m->buf = nb;
  c->m->cap = cap;
  return 0;
}

static int buf_append(http_conn_t *c, const char *at, size_t n, int lower) {
  if (c->m->len + n > c->m->cap && buf_grow(c, n)) return -1;
  char *d = c->m->buf + c->m->len;
  if (at == NULL) {
    // reserve: the caller fills the n bytes
  } else if (lower) {
    for (size_t i = 0; i < n; i++) {
      unsigned char ch = (unsigned char)at[i];
      d[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
  } else {
    memcpy(d, at, n);
  }
  c->m->len += n;
  return 0;
}

// Counts head bytes against the limit; on overflow records 431 and stops the parser.
static int count_head(http_conn_t *c, size_t n) {
  c->m->header_bytes += n;
  if (c->max_header_size && c->m->header_bytes > c->max_header_size) {
    c->m->err_status = 431;
    return -1;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  http_conn_t *c = p->data;
  c->reusable = 0;
  c->m->len = 0;
  c->m->url_len = 0;
  c->m->nhdrs = 0;
  c->m->dropped = 0;
  c->m->in_value = 0;
  c->m->header_bytes = 0;
  c->m->body_bytes = 0;
  c->in_message = 1;
  c->headers_done = 0;
  c->head_pending = 0;
  c->m->msg_start = (double)uv_now(lc_loop);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (count_head(c, n) || buf_append(c, at, n, 0)) return HPE_USER;
  c->m->url_len += (uint32_t)n;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (count_head(c, n + (c->m->in_value || c->m->nhdrs + c->m->dropped == 0 ? 4 : 0)))
    return HPE_USER;
  c->m->name_end = at + n;
  c->m->name_gen = c->m->feed_gen;
  if (c->m->in_value || c->m->nhdrs + c->m->dropped == 0) {
    c->m->in_value = 0;
    c->m->gap_lf = 0;
    if (c->max_headers && c->m->nhdrs >= c->max_headers) {
      c->m->dropped++; // Node drops headers over maxHeadersCount rather than failing
      return 0;
    }
    if (c->m->nhdrs == c->m->hdrs_cap) {
      uint32_t cap = c->m->hdrs_cap ? c->m->hdrs_cap * 2 : HDRS_FIRST;
      hdr_t *nh = realloc(c->m->hdrs, cap * sizeof(*nh));
      if (nh == NULL) return HPE_USER;
      c->m->hdrs = nh;
      c->m->hdrs_cap = cap;
    }
    hdr_t *h = &c->m->hdrs[c->m->nhdrs++];
    h->name_off = (uint32_t)c->m->len;
    h->name_len = 0;
    h->val_off = 0;
    h->val_len = 0;
  }
  if (c->m->dropped) return 0;
  hdr_t *h = &c->m->hdrs[c->m->nhdrs - 1];
  if (buf_append(c, at, n, 1)) return HPE_USER;
  h->name_len += (uint32_t)n;
  return 0;
}

// Names whose value decides where a message ends or whom it is for: folded, they would be
// read one way by us and maybe another way by a proxy in front.
static int framing_name(const char *l, size_t n) {
  return (n == 4 && memcmp(l, "host", 4) == 0) ||
         (n == 14 && memcmp(l, "content-length", 14) == 0) ||
         (n == 17 && memcmp(l, "transfer-encoding", 17) == 0);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (count_head(c, n)) return HPE_USER;
  int fold;
  if (!c->m->in_value) {
    c->m->in_value = 1;
    if (!c->m->dropped) c->m->hdrs[c->m->nhdrs - 1].val_off = (uint32_t)c->m->len;
    const char *from = c->m->name_gen == c->m->feed_gen ? c->m->name_end : c->m->feed_start;
    fold = c->m->gap_lf || (at > from && memchr(from, '\n', (size_t)(at - from)) != NULL);
  } else {
    fold = c->m->val_gen == c->m->feed_gen || at != c->m->feed_start || !c->m->val_at_end;
  }
  c->m->val_gen = c->m->feed_gen;
  c->m->val_at_end = at + n == c->m->feed_end;
  if (c->m->dropped) return 0;
  if (fold && c->mode == MODE_REQUEST) {
    const hdr_t *h = &c->m->hdrs[c->m->nhdrs - 1];
    if (framing_name(c->m->buf + h->name_off, h->name_len)) {
      c->m->err_status = 400;
      c->m->err_code = "HPE_OBS_FOLD";
      c->m->err_msg = "obsolete line folding in a framing header";
      return HPE_USER;
    }
  }
  if (buf_append(c, at, n, 0)) return HPE_USER;
  c->m->hdrs[c->m->nhdrs - 1].val_len += (uint32_t)n;
  return 0;
}

// Headers whose duplicates Node discards (the first one wins).
static int discard_dup(const char *n, size_t l) {
  static const char *const names[] = {"age",
                                      "authorization",
                                      "content-length",
                                      "content-type",
                                      "etag",
                                      "expires",
                                      "from",
                                      "host",
                                      "if-modified-since",
                                      "if-unmodified-since",
                                      "last-modified",
                                      "location",
                                      "max-forwards",
                                      "proxy-authorization",
                                      "referer",
                                      "retry-after",
                                      "server",
                                      "user-agent",
                                      NULL};
  for (int i = 0; names[i] != NULL; i++) {
    if (strlen(names[i]) == l && memcmp(names[i], n, l) == 0) return 1;
  }
  return 0;
}

// Pushes the headers table: lower-case names; repeated headers joined with ", " ("; " for
// cookie), set-cookie always a list, duplicates of single-valued headers discarded.
// base: the bytes hdrs' offsets point into.
static void push_headers(lua_State *L, const char *base, const hdr_t *hdrs, uint32_t nhdrs) {
  lua_createtable(L, 0, (int)nhdrs); // [t]
  for (uint32_t i = 0; i < nhdrs; i++) {
    const hdr_t *h = &hdrs[i];
    const char *name = base + h->name_off;
    const char *val = base + h->val_off;
    size_t vl = h->val_len;
    while (vl > 0 && (val[vl - 1] == ' ' || val[vl - 1] == '\t'))
      vl--;
    if (h->val_len == 0) val = "";
    int cookie_set = h->name_len == 10 && memcmp(name, "set-cookie", 10) == 0;
    // Most heads repeat no name: only a name seen earlier in this head needs the lookup.
    // Past the first 16 headers, always look up (no quadratic scan on a huge head).
    int repeated = i >= 16;
    for (uint32_t j = 0; j < i && !repeated; j++) {
      repeated = hdrs[j].name_len == h->name_len &&
                 memcmp(base + hdrs[j].name_off, name, h->name_len) == 0;
    }
    lua_pushlstring(L, name, h->name_len); // [t, k]
    if (repeated) {
      lua_pushvalue(L, -1);
      lua_rawget(L, -3); // [t, k, old]
    } else {
      lua_pushnil(L); // [t, k, nil]
    }
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      if (cookie_set) {
        lua_createtable(L, 1, 0);
        lua_pushlstring(L, val, vl);
        lua_rawseti(L, -2, 1);
      } else {
        lua_pushlstring(L, val, vl);
      }
      lua_rawset(L, -3); // [t]
    } else if (cookie_set) {
      lua_pushlstring(L, val, vl);
      lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
      lua_pop(L, 2); // [t]
    } else if (discard_dup(name, h->name_len)) {
      lua_pop(L, 2);
    } else {
      int cookie = h->name_len == 6 && memcmp(name, "cookie", 6) == 0;
      lua_pushstring(L, cookie ? "; " : ", ");
      lua_pushlstring(L, val, vl);
      lua_concat(L, 3);  // [t, k, joined]
      lua_rawset(L, -3); // [t]
    }
  }
}

// The raw header block of a lazy head: the names and values as parsed (buf after the url),
// then the hdr_t array (offsets from the block's start), then the count (uint32). One Lua
// string, built from buf in place: the table is made only if Lua asks (http_headers).
// Returns nonzero when the head has an Expect header (Lua must look at it at once).
static int push_raw_headers(lua_State *L, http_conn_t *c) {
  size_t start = c->m->url_len, len = c->m->len;
  uint32_t n = c->m->nhdrs;
  int expect = 0;
  if (buf_append(c, NULL, n * sizeof(hdr_t) + sizeof(n), 0)) {
    c->m->len = len;
    lua_pushliteral(L, "");
    return 0;
  }
  char *d = c->m->buf + len;
  for (uint32_t i = 0; i < n; i++) {
    hdr_t h = c->m->hdrs[i];
    if (h.name_len == 6 && memcmp(c->m->buf + h.name_off, "expect", 6) == 0) expect = 1;
    h.name_off -= (uint32_t)start;
    h.val_off = h.val_len ? h.val_off - (uint32_t)start : 0;
    memcpy(d + i * sizeof(hdr_t), &h, sizeof(hdr_t));
  }
  memcpy(d + n * sizeof(hdr_t), &n, sizeof(n));
  lua_pushlstring(L, c->m->buf + start, c->m->len - start);
  c->m->len = len; // trailers (chunked bodies) may append after the head
  return expect;
}

// _core.http_headers(raw) -> headers: the table of a lazy head's raw block (see
// push_raw_headers), built as the eager "head" event builds it.
static int http_headers(lua_State *L) {
  size_t len;
  const char *raw = luaL_checklstring(L, 1, &len);
  uint32_t n;
  if (len < sizeof(n)) return luaL_argerror(L, 1, "not a header block");
  memcpy(&n, raw + len - sizeof(n), sizeof(n));
  size_t arr = (size_t)n * sizeof(hdr_t);
  if (arr > len - sizeof(n)) return luaL_argerror(L, 1, "not a header block");
  size_t data = len - sizeof(n) - arr;
  hdr_t small[16];
  hdr_t *hdrs = n <= 16 ? small : malloc(arr);
  if (hdrs == NULL) return luaL_error(L, "out of memory");
  memcpy(hdrs, raw + data, arr);
  for (uint32_t i = 0; i < n; i++) {
    if ((uint64_t)hdrs[i].name_off + hdrs[i].name_len > data ||
        (uint64_t)hdrs[i].val_off + hdrs[i].val_len > data) {
      if (hdrs != small) free(hdrs);
      return luaL_argerror(L, 1, "not a header block");
    }
  }
  push_headers(L, raw, hdrs, n);
  if (hdrs != small) free(hdrs);
  return 1;
}

// Strings every head pushes ("head", the method, "1.1"), anchored in the registry once:
// lua_rawgeti costs less than interning them again (hashing, string table lookup) on every
// request. A ref of 0 is not made yet (luaL_ref never returns 0).
static int head_ref, v11_ref, method_refs[64];

static void push_cached(lua_State *L, int *ref, const char *s) {
  if (*ref <= 0) {
    lua_pushstring(L, s);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
}

// Delivers the parsed head: cb("head", ...). Returns nonzero to stop parsing.
static int deliver_head(lua_State *L, http_conn_t *c, int complete) {
  c->head_pending = 0;
  c->served = 1;
  if (c->cb_ref == LUA_NOREF) return c->stop;
  // The callback and event go first, so the arguments need no moving (conn_emit's inserts):
  // this runs once per request.
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->cb_ref);
  int has_ctx = c->has_ctx;
  if (has_ctx) push_ctx(L, c);
  push_cached(L, &head_ref, "head");
  if (c->mode == MODE_REQUEST) {
    unsigned m = c->m->p.method;
    if (m < sizeof(method_refs) / sizeof(method_refs[0])) {
      push_cached(L, &method_refs[m], llhttp_method_name((llhttp_method_t)m));
    } else {
      lua_pushstring(L, llhttp_method_name((llhttp_method_t)m));
    }
  } else {
    lua_pushinteger(L, c->m->p.status_code);
  }
  lua_pushlstring(L, c->m->buf, c->m->url_len);
  if (c->m->p.http_major == 1 && c->m->p.http_minor == 1) {
    push_cached(L, &v11_ref, "1.1");
  } else {
    lua_pushfstring(L, "%d.%d", (int)c->m->p.http_major, (int)c->m->p.http_minor);
  }
  int expect = 0;
  if (c->lazy) {
    expect = push_raw_headers(L, c);
  } else {
    push_headers(L, c->m->buf, c->m->hdrs, c->m->nhdrs);
  }
  lua_pushboolean(L, llhttp_should_keep_alive(&c->m->p));
  lua_pushboolean(L, c->m->p.upgrade);
  lua_pushboolean(L, complete);
  lua_pushboolean(L, expect); // [cb, (ctx,) "head", 8 args]
  int nargs = 9 + has_ctx;
  if (c->m->last_len > 0) { // complete, and the whole body came in this feed (on_body)
    lua_pushlstring(L, c->m->last_at, c->m->last_len);
    c->m->last_len = 0;
    nargs++;
  }
  lc_pcall(L, nargs, 0);
  if (c->stream != NULL && c->stream->h.closing) c->stop = 1;
  return c->stop;
}

static int on_headers_complete(llhttp_t *p) {
  http_conn_t *c = p->data;
  c->headers_done = 1;
  c->head_pending = 1;
  if (c->mode == MODE_REQUEST) {
    // One Host header, and an HTTP/1.1 request must have it (RFC 9112 3.2, Node's
    // requireHostHeader): two hosts are two readings of the request for a proxy and us.
    int hosts = 0;
    for (uint32_t i = 0; i < c->m->nhdrs; i++) {
      const hdr_t *h = &c->m->hdrs[i];
      hosts += h->name_len == 4 && memcmp(c->m->buf + h->name_off, "host", 4) == 0;
    }
    if (hosts > 1 || (hosts == 0 && p->http_major == 1 && p->http_minor == 1)) {
      c->m->err_status = 400;
      c->m->err_code = "HPE_INVALID_HOST";
      c->m->err_msg =
          hosts ? "more than one Host header" : "an HTTP/1.1 request needs a Host header";
      return -1;
    }
    if (c->max_body_size && (p->flags & F_CONTENT_LENGTH) && p->content_length > c->max_body_size) {
      c->m->err_status = 413;
      return -1;
    }
  }
  // A response to HEAD has headers describing a body that is not sent.
  if (c->mode == MODE_RESPONSE && c->expect_head) return 1;
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  lua_State *L = lc_L;
  c->m->body_bytes += n;
  if (c->mode == MODE_REQUEST && c->max_body_size && c->m->body_bytes > c->max_body_size) {
    c->m->err_status = 413;
    return HPE_USER;
  }
  // The span that ends a Content-Length body: llhttp set the length left to 0 and calls
  // on_message_complete next, which delivers it (a chunked body's spans end chunks, not
  // the body: F_CHUNKED, whose chunk sizes use the same counter).
  if (c->lazy && p->content_length == 0 && !(p->flags & F_CHUNKED)) {
    c->m->last_at = at;
    c->m->last_len = n;
    return 0;
  }
  if (c->head_pending && deliver_head(L, c, 0)) return HPE_USER;
  lua_pushlstring(L, at, n);
  return conn_emit(L, c, "body", 1) ? HPE_USER : 0;
}

// The value is whole (folds included): the next name starts a new header, even when the
// value was empty and no value span came.
static int on_header_value_complete(llhttp_t *p) {
  ((http_conn_t *)p->data)->m->in_value = 1;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn_t *c = p->data;
  lua_State *L = lc_L;
  lc_metrics.requests++;
  c->in_message = 0;
  c->reusable = llhttp_should_keep_alive(p) && !p->upgrade;
  int stop;
  if (c->head_pending) {
    stop = deliver_head(L, c, 1); // with the whole body, if one came in this feed
  } else if (c->m->last_len > 0) {
    lua_pushlstring(L, c->m->last_at, c->m->last_len);
    c->m->last_len = 0;
    stop = conn_emit(L, c, "done", 1);
  } else {
    stop = conn_emit(L, c, "done", 0);
  }
  if (stop) return HPE_USER;
  return c->want_pause ? HPE_PAUSED : 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void report_error(lua_State *L, http_conn_t *c, llhttp_errno_t e) {
  c->dead = 1;
  if (c->m->err_status == 431) {
    lua_pushinteger(L, 431);
    lua_pushliteral(L, "HPE_HEADER_OVERFLOW");
    lua_pushliteral(L, "request header fields too large");
  } else if (c->m->err_status == 413) {
    lua_pushinteger(L, 413);
    lua_pushliteral(L, "ERR_BODY_TOO_LARGE");
    lua_pushliteral(L, "request body too large");
  } else if (c->m->err_status == 400) {
    lua_pushinteger(L, 400);
    lua_pushstring(L, c->m->err_code);
    lua_pushstring(L, c->m->err_msg);
  } else {
    const char *reason = llhttp_get_error_reason(&c->m->p);
    lua_pushinteger(L, 400);
    lua_pushstring(L, llhttp_errno_name(e));
    lua_pushstring(L, reason != NULL ? reason : "parse error");
  }
  conn_emit(L, c, "error", 3);
}

// Keeps bytes that arrive or remain while parsing is paused.
static void pend_append(http_conn_t *c, const char *data, size_t len) {
  if (len == 0) return;
  if (c->m->pend_len + len > c->m->pend_cap) {
    size_t cap = c->m->pend_cap ? c->m->pend_cap : 4096;
    while (cap < c->m->pend_len + len)
      cap *= 2;
    char *nb = realloc(c->m->pend, cap);
    if (nb == NULL) {
      c->dead = 1; // out of memory: the connection parses nothing more
      return;
    }
    c->m->pend = nb;
    c->m->pend_cap = cap;
  }
  memcpy(c->m->pend + c->m->pend_len, data, len);
  c->m->pend_len += len;
}

static void conn_feed(lua_State *L, http_conn_t *c, const char *data, size_t len);

/// Parses `len` bytes (len 0 signals EOF to the parser) and delivers the events. The conn's
/// userdata must be anchored on the Lua stack by the caller: Lua may drop it in a callback.
/// Between messages the message state goes back to the pool (see msg_release).
static void conn_feed_msgs(lua_State *L, http_conn_t *c, const char *data, size_t len) {
  if (c->dead || c->stop) return;
  if (c->paused) {
    pend_append(c, data, len);
    return;
  }
  if (c->m == NULL && msg_acquire(c)) {
    c->dead = 1; // out of memory: the connection parses nothing more
    return;
  }
  c->m->feed_gen++;
  c->m->feed_start = data;
  c->m->feed_end = len > 0 ? data + len : data; // data is NULL at EOF: no arithmetic on it
  c->feeding = 1;
  llhttp_errno_t e = len > 0 ? llhttp_execute(&c->m->p, data, len) : llhttp_finish(&c->m->p);
  c->feeding = 0;
  if (c->stop) return;
  if (e == HPE_PAUSED) {
    // Paused after a message (conn:pause()): what follows it waits for conn:resume().
    const char *pos = llhttp_get_error_pos(&c->m->p);
    size_t n = pos != NULL && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
    if (c->want_pause) {
      c->paused = 1;
      pend_append(c, data + n, len - n);
      return;
    }
    // The pause was cancelled during the callback: go on at once.
    llhttp_resume(&c->m->p);
    conn_feed(L, c, data + n, len - n);
    return;
  }
  if (e == HPE_PAUSED_UPGRADE) {
    // llhttp stops after the head of an upgrade or CONNECT; what follows is not HTTP.
    c->dead = 1;
    if (c->head_pending && deliver_head(L, c, 1)) return;
    const char *pos = llhttp_get_error_pos(&c->m->p);
    size_t n = pos != NULL && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
    lua_pushlstring(L, data + n, len - n);
    conn_emit(L, c, "upgrade", 1);
    return;
  }
  if (e != HPE_OK) {
    report_error(L, c, e);
    return;
  }
  // The feed ended between a header's name and its value: a line break there is a fold.
  if (!c->headers_done && !c->m->in_value && c->m->nhdrs + c->m->dropped > 0 && len > 0) {
    const char *from = c->m->name_gen == c->m->feed_gen ? c->m->name_end : data;
    if (memchr(from, '\n', (size_t)(c->m->feed_end - from)) != NULL) c->m->gap_lf = 1;
  }
  // A head without a complete body yet is delivered now, so Lua sees it (and can answer
  // Expect: 100-continue) before the body arrives.
  if (c->head_pending) deliver_head(L, c, 0);
}

// Gives the message state back when no message is in progress (nor waiting while paused).
static void msg_release_idle(http_conn_t *c) {
  if (c->m != NULL && c->reusable && !c->in_message && !c->head_pending && !c->paused)
    msg_release(c);
}

static void conn_feed(lua_State *L, http_conn_t *c, const char *data, size_t len) {
  c->depth++;
  conn_feed_msgs(L, c, data, len);
  c->depth--;
  msg_release_idle(c);
  // Detached during the feed: an embedded parser has no __gc to give the block back later.
  if (c->embedded && c->depth == 0 && c->cb_ref == LUA_NOREF && c->m != NULL) msg_release(c);
}

// The stream's read hook: bytes go to the parser; EOF and errors to the stream's callback.
static void conn_detach(lua_State *L, http_conn_t *c);

void lc_http_stream_read(lc_stream_t *s, ssize_t nread, const char *data) {
  http_conn_t *c = s->hook;
  lua_State *L = lc_L;
  if (nread == 0) { // the stream closed and its memory goes: forget it
    conn_detach(L, c);
    return;
  }
  // A parser userdata is anchored for the whole call (Lua may drop it in a callback); an
  // embedded one lives until the stream's close callback, which cannot run during this one.
  int anchor = !c->embedded;
  if (anchor) lua_rawgeti(L, LUA_REGISTRYINDEX, c->self_ref); // [conn]
  if (nread > 0) {
    conn_feed(L, c, data, (size_t)nread);
    if (anchor) lua_pop(L, 1); // []
    return;
  }
  uv_read_stop(&s->u.stream);
  // A response delimited by EOF completes here.
  if (nread == UV_EOF && c->mode == MODE_RESPONSE && c->in_message) conn_feed(L, c, NULL, 0);
  if (anchor) lua_pop(L, 1); // []
  if (s->h.closing) return;
  if (nread == UV_EOF) {
    lc_stream_emit(L, s, "end", 0);
  } else {
    lua_pushfstring(L, "%s: %s", uv_err_name((int)nread), uv_strerror((int)nread));
    lua_pushstring(L, uv_err_name((int)nread));
    lc_stream_emit(L, s, "error", 2);
  }
}

static void read_limits(lua_State *L, int idx, http_conn_t *c) {
  if (!lua_istable(L, idx)) return;
  lua_getfield(L, idx, "maxHeaderSize");
  if (lua_isnumber(L, -1)) c->max_header_size = (uint32_t)lua_tonumber(L, -1);
  lua_getfield(L, idx, "maxHeadersCount");
  if (lua_isnumber(L, -1)) c->max_headers = (uint32_t)lua_tonumber(L, -1);
  lua_getfield(L, idx, "maxBodySize");
  if (lua_isnumber(L, -1)) c->max_body_size = (uint64_t)lua_tonumber(L, -1);
  lua_getfield(L, idx, "lazyHeaders");
  if (!lua_isnil(L, -1)) c->lazy = c->mode == MODE_REQUEST && lua_toboolean(L, -1);
  lua_pop(L, 4);
}

// _core.http_parser(mode, cb [, opts]) -> conn: a parser not attached to a stream, fed
// with conn:feed(data) (tests and the fuzz harness use this path too).
// _core.http_attach(stream, mode, cb [, opts]) -> conn: the stream's reads go to the parser
// until conn:detach(). mode: 'request' (server) or 'response' (client).
// opts: {maxHeaderSize=, maxHeadersCount=, maxBodySize=} (0 or absent: no limit).
// http_attach(stream, mode, cb, opts, ctx): with ctx (a table), events go to
// cb(ctx, event, ...), so one function serves every connection (no closure per connection).
// The parser in the room of the stream at stream_idx, when it has room and ctx_idx is its
// ctx; pushes the stream's handle (the parser's methods are the handle's http_* ones) and
// returns 1, else pushes nothing and returns 0.
static int embed(lua_State *L, int mode, int mode_idx, int stream_idx, int ctx_idx) {
  lc_stream_t *s = lc_stream_check(L, stream_idx);
  http_conn_t *c = lc_stream_room(s);
  // Not over a parser detached during its own feed (depth) that still holds its message
  // state: that feed is still running in it; a userdata parser takes over instead.
  if (c == NULL || s->hook != NULL || !s->has_ctx || c->depth != 0 || c->m != NULL) return 0;
  lua_getfenv(L, stream_idx);
  int same = lua_rawequal(L, -1, ctx_idx);
  lua_pop(L, 1);
  if (!same) return 0;
  memset(c, 0, sizeof(*c));
  c->mode = (unsigned)mode;
  c->embedded = 1;
  c->has_ctx = 1;
  c->self_ref = LUA_NOREF;
  c->cb_ref = lc_util_ref_shared(L, mode_idx + 1);
  read_limits(L, mode_idx + 2, c);
  c->stream = s;
  s->hook = c;
  lua_pushvalue(L, stream_idx);
  return 1;
}

static int new_conn(lua_State *L, int mode_idx, int stream_idx) {
  static const char *const modes[] = {"request", "response", NULL};
  int mode = luaL_checkoption(L, mode_idx, NULL, modes);
  luaL_checktype(L, mode_idx + 1, LUA_TFUNCTION);
  int ctx_idx = stream_idx && !lua_isnoneornil(L, mode_idx + 3) ? mode_idx + 3 : 0;
  if (ctx_idx) luaL_checktype(L, ctx_idx, LUA_TTABLE);
  if (ctx_idx && embed(L, mode, mode_idx, stream_idx, ctx_idx)) return 1; // [.., stream]
  http_conn_t *c = lua_newuserdata(L, sizeof(*c));                        // [.., conn]
  memset(c, 0, sizeof(*c));
  luaL_getmetatable(L, MT);
  lua_setmetatable(L, -2);
  c->mode = (unsigned)mode;
  c->self_ref = LUA_NOREF;
  if (ctx_idx) {
    c->cb_ref = lc_util_ref_shared(L, mode_idx + 1); // one function for every connection
  } else {
    lua_pushvalue(L, mode_idx + 1);
    c->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  read_limits(L, mode_idx + 2, c);
  if (ctx_idx) {
    lua_pushvalue(L, ctx_idx);
    lua_setfenv(L, -2); // [.., conn]
    c->has_ctx = 1;
  }
  if (stream_idx) {
    lc_stream_t *s = lc_stream_check(L, stream_idx);
    if (s->hook != NULL) return luaL_argerror(L, stream_idx, "stream already has a read hook");
    c->stream = s;
    lua_pushvalue(L, -1);
    c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->hook = c;
  }
  return 1; // [conn]
}

static int http_attach(lua_State *L) {
  return new_conn(L, 2, 1);
}

static int http_new(lua_State *L) {
  return new_conn(L, 1, 0);
}

// The parser a method is called on: a parser userdata, or a tcp handle whose room holds one
// (http_attach returned the handle). NULL for a handle that is closed or holds none: the
// methods then do nothing (state() answers "no message").
static http_conn_t *check_conn(lua_State *L) {
  void *p = lua_touserdata(L, 1);
  if (p != NULL && lua_getmetatable(L, 1)) {
    luaL_getmetatable(L, MT);
    int parser = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (parser) return p;
  }
  lc_handle_t **ud = luaL_checkudata(L, 1, "lc.tcp");
  if (*ud == NULL) return NULL;
  http_conn_t *c = lc_stream_room((lc_stream_t *)*ud);
  return c != NULL && c->embedded ? c : NULL;
}

// Unhooks the stream (its reads go to Lua again) and drops our references. Safe to call
// twice and from inside a callback (parsing stops after it returns).
static void conn_detach(lua_State *L, http_conn_t *c) {
  lc_stream_t *s = c->stream; // open or closing: not freed before it told us
  if (s != NULL && s->hook == c) s->hook = NULL;
  c->stop = 1;
  c->stream = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, c->self_ref);
  lc_util_unref(L, c->cb_ref);
  c->self_ref = c->cb_ref = LUA_NOREF;
  c->has_ctx = 0;
  // An embedded parser's memory goes with its stream, with no __gc: the message state goes
  // back now, or once the feeds in progress returned (conn_feed), and what waited behind a
  // pause with it.
  if (c->embedded) {
    c->paused = c->want_pause = 0;
    if (c->depth == 0 && c->m != NULL) msg_release(c);
  }
}

// conn:detach()
static int conn_detach_m(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c != NULL) conn_detach(L, c);
  return 0;
}

// conn:feed(data): parses bytes given from Lua (a stream's bytes that arrived before attach,
// or a test's). An empty string signals EOF.
static int conn_feed_m(lua_State *L) {
  http_conn_t *c = check_conn(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_settop(L, 2); // [conn, data] both stay anchored during the feed
  if (c != NULL) conn_feed(L, c, data, len);
  return 0;
}

// conn:pause(): parsing stops after the message in progress; what follows waits.
static int conn_pause(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c != NULL) c->want_pause = 1;
  return 0;
}

// conn:resume(): parses what waited (which may pause again) and goes on with new reads.
// Inside a parse (a handler answered at once), it only cancels the pause.
static int conn_resume(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c == NULL) return 0;
  c->want_pause = 0;
  if (!c->paused || c->feeding) return 0;
  c->paused = 0;
  llhttp_resume(&c->m->p);
  // Paused means a message just ended with this block held (conn_feed_msgs).
  char *buf = c->m->pend;
  size_t n = c->m->pend_len;
  c->m->pend = NULL;
  c->m->pend_len = c->m->pend_cap = 0;
  lua_settop(L, 1); // [conn] anchored during the feed
  if (n > 0) conn_feed(L, c, buf, n);
  free(buf);
  msg_release_idle(c);
  return 0;
}

// conn:state() -> inMessage, headersDone, msgStartMs (loop time), served (a head was
// delivered)
static int conn_state(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c == NULL) { // an embedded parser's stream is closed
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 0);
    lua_pushnumber(L, 0);
    lua_pushboolean(L, 0);
    return 4;
  }
  lua_pushboolean(L, c->in_message);
  lua_pushboolean(L, c->headers_done);
  lua_pushnumber(L, c->m != NULL ? c->m->msg_start : 0);
  lua_pushboolean(L, c->served);
  return 4;
}

// conn:expect_head(bool): response mode; the next response answers a HEAD request.
static int conn_expect_head(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c != NULL) c->expect_head = lua_toboolean(L, 2);
  return 0;
}

// conn:limits(opts)
static int conn_limits(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c != NULL) read_limits(L, 2, c);
  return 0;
}

static int conn_gc(lua_State *L) {
  http_conn_t *c = lua_touserdata(L, 1);
  // Attached conns are anchored by self_ref, so only detached ones are collected.
  if (c->m != NULL) msg_release(c);
  return 0;
}

// ---- response formatting ----

static char *obuf;
static size_t ocap;

static void obuf_reserve(lua_State *L, size_t need) {
  if (need <= ocap) return;
  size_t cap = ocap ? ocap : 4096;
  while (cap < need)
    cap *= 2;
  char *nb = realloc(obuf, cap);
  if (nb == NULL) luaL_error(L, "out of memory");
  obuf = nb;
  ocap = cap;
}

static size_t put(char *d, const char *s, size_t n) {
  memcpy(d, s, n);
  return n;
}

// Writes n in decimal; returns the digit count (at most 20).
static size_t put_uint(char *d, uint64_t n) {
  char tmp[24];
  size_t k = 0;
  do {
    tmp[k++] = (char)('0' + n % 10);
    n /= 10;
  } while (n > 0);
  for (size_t i = 0; i < k; i++)
    d[i] = tmp[k - 1 - i];
  return k;
}

static const char *reason_phrase(int status) {
  switch (status) {
  case 100:
    return "Continue";
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 206:
    return "Partial Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 303:
    return "See Other";
  case 304:
    return "Not Modified";
  case 307:
    return "Temporary Redirect";
  case 308:
    return "Permanent Redirect";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 411:
    return "Length Required";
  case 413:
    return "Payload Too Large";
  case 414:
    return "URI Too Long";
  case 415:
    return "Unsupported Media Type";
  case 417:
    return "Expectation Failed";
  case 422:
    return "Unprocessable Entity";
  case 426:
    return "Upgrade Required";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "unknown";
  }
}

// "Date: <IMF-fixdate>\r\n", formatted at most once per second.
static const char *date_line(size_t *len) {
  static char line[64];
  static size_t line_len;
  static time_t last = -1;
  time_t now = time(NULL);
  if (now != last) {
    struct tm tm;
    gmtime_r(&now, &tm);
    line_len = strftime(line, sizeof(line), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    last = now;
  }
  *len = line_len;
  return line;
}

static void check_field(lua_State *L, const char *s, size_t n, const char *what) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
      luaL_error(L, "ERR_INVALID_CHAR: invalid character in header %s", what);
  }
}

// Appends "Name: value\r\n" for one header (a list value gives one line per item).
static size_t put_header(lua_State *L, size_t o, const char *name, size_t nl, int vidx) {
  if (vidx < 0) vidx = lua_gettop(L) + vidx + 1;
  if (lua_istable(L, vidx)) {
    int n = (int)lua_objlen(L, vidx);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, vidx, i);
      o = put_header(L, o, name, nl, lua_gettop(L));
      lua_pop(L, 1);
    }
    return o;
  }
  size_t vl;
  const char *v = lua_tolstring(L, vidx, &vl);
  if (v == NULL)
    luaL_error(L, "ERR_HTTP_INVALID_HEADER_VALUE: invalid value for header '%s'", name);
  check_field(L, name, nl, "name");
  check_field(L, v, vl, "value");
  obuf_reserve(L, o + nl + vl + 4 + 256);
  o += put(obuf + o, name, nl);
  obuf[o++] = ':';
  obuf[o++] = ' ';
  o += put(obuf + o, v, vl);
  obuf[o++] = '\r';
  obuf[o++] = '\n';
  return o;
}

// Characters of an HTTP token (header names): alnum and !#$%&'*+-.^_`|~.
static int is_tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

// The wire case a header name gets when its response has no names[lname] entry: each letter
// at the start or after '-' upper-cased (content-type -> Content-Type).
static int canon_upper(const char *l, size_t i) {
  return (i == 0 || l[i - 1] == '-') && l[i] >= 'a' && l[i] <= 'z';
}

static size_t put_canon(char *d, const char *l, size_t n) {
  for (size_t i = 0; i < n; i++)
    d[i] = (char)(canon_upper(l, i) ? l[i] - 32 : l[i]);
  return n;
}

// _core.http_set_headers(store, names|false, headers) -> ok, names|nil
// The common case of res:writeHead(status, {Name = value, ...}) in one C call (a loop in
// the request path starts a trace of its own and splits the handler's, "inner loop in root
// trace"): for each pair,
// store[lower(name)] = value as Headers:setHeader does. The case given is kept in
// names[lower(name)] only when it differs from the canonical one (put_canon), so the usual
// names need no names table at all; one is created (and returned) when needed.
// Returns false, having possibly stored some pairs, at the first pair setHeader would treat
// differently (a name that is not a valid token, a value that is not a string or number, a
// value with CR, LF or NUL): the caller then runs setHeader over every pair, which stores
// the same values again and raises the same errors.
static int http_set_headers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  char low[256];
  int ok = 0, created = 0;
  lua_settop(L, 3);
  if (lua_rawequal(L, 1, 3) || lua_rawequal(L, 2, 3)) goto done;
  int has_names = lua_istable(L, 2);
  lua_pushnil(L);               // [store, names, headers, k]
  while (lua_next(L, 3) != 0) { // [.., k, v]
    if (lua_type(L, -2) != LUA_TSTRING) goto done;
    int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER) goto done;
    size_t nl, vl;
    const char *name = lua_tolstring(L, -2, &nl);
    if (nl == 0 || nl > sizeof(low)) goto done;
    int canonical = 1;
    for (size_t i = 0; i < nl; i++) {
      unsigned char ch = (unsigned char)name[i];
      if (!is_tchar(ch)) goto done;
      low[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
      if ((unsigned char)(canon_upper(low, i) ? low[i] - 32 : low[i]) != ch) canonical = 0;
    }
    lua_pushvalue(L, -1); // [.., k, v, v'] tolstring converts a number copy, not the key
    const char *v = lua_tolstring(L, -1, &vl);
    if (memchr(v, '\r', vl) != NULL || memchr(v, '\n', vl) != NULL || memchr(v, '\0', vl) != NULL)
      goto done;
    lua_pushlstring(L, low, nl); // [.., k, v, v', lname]
    lua_pushvalue(L, -1);
    lua_pushvalue(L, -3);
    lua_rawset(L, 1); // store[lname] = v'
    if (!canonical && !has_names) {
      lua_createtable(L, 0, 4);
      lua_replace(L, 2);
      has_names = created = 1;
    }
    if (has_names) {
      if (canonical) {
        lua_pushnil(L);
      } else {
        lua_pushvalue(L, -4);
      }
      lua_rawset(L, 2); // names[lname] = k | nil (the canonical case)
    } else {
      lua_pop(L, 1);
    }
    lua_pop(L, 2); // [.., k]
  }
  ok = 1;
done:
  lua_pushboolean(L, ok);
  if (!created) return 1;
  lua_pushvalue(L, 2);
  return 2;
}

// Names http_head_lines leaves to the header store: _sendHead looks at their values.
// Content-Length is not one of them: _sendHead only needs to know that the user gave one,
// which http_head_lines answers along with the lines.
static int special_name(const char *l, size_t n) {
  return (n == 4 && memcmp(l, "date", 4) == 0) || (n == 10 && memcmp(l, "connection", 10) == 0) ||
         (n == 17 && memcmp(l, "transfer-encoding", 17) == 0);
}

// _core.http_head_lines(headers) -> lines | false, hasLength
// The common case of res:writeHead(status, {Name = value, ...}) on a response with no header
// set before: the pairs formatted once as the head's "Name: value\r\n" lines (the name as
// given, which is what the header store would put on the wire), so the response keeps one
// string (interned: the same headers on every request make the same string, no allocation)
// instead of a header table, and http_send copies it. False (nothing done) for anything
// http_set_headers would treat differently or that _sendHead must look at: a pair that is
// not a valid token name with a string or number value free of CR, LF and NUL, a name given
// twice in different cases, Date, Connection, Transfer-Encoding, more than 16 pairs or more
// than 2 KB: the caller then takes the header-store path. hasLength is true when the lines
// hold a Content-Length (in any case): the response then adds neither its own length nor
// chunked framing, as with a Content-Length in the header store. (A JSON handler's
// {['Content-Type'] = ..., ['Content-Length'] = #out} took the store's path before: a table,
// a names check and a lookup per special name, ~10,000 instructions per response.)
static int head_lines_format(lua_State *L, int *has_length) {
  char out[2048];
  size_t o = 0;
  struct {
    uint32_t off, len; // of the lower-case name in low
  } seen[16];
  char low[16 * 64];
  size_t lo = 0;
  int n = 0;
  lua_settop(L, 1);
  lua_pushnil(L);               // [headers, k]
  while (lua_next(L, 1) != 0) { // [headers, k, v]
    if (lua_type(L, -2) != LUA_TSTRING || n == 16) goto fail;
    int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER) goto fail;
    size_t nl, vl;
    const char *name = lua_tolstring(L, -2, &nl);
    if (nl == 0 || nl > 64) goto fail;
    char *l = low + lo;
    for (size_t i = 0; i < nl; i++) {
      unsigned char ch = (unsigned char)name[i];
      if (!is_tchar(ch)) goto fail;
      l[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    if (special_name(l, nl)) goto fail;
    if (nl == 14 && memcmp(l, "content-length", 14) == 0) *has_length = 1;
    for (int j = 0; j < n; j++) {
      if (seen[j].len == nl && memcmp(low + seen[j].off, l, nl) == 0) goto fail;
    }
    seen[n].off = (uint32_t)lo;
    seen[n].len = (uint32_t)nl;
    lo += nl;
    n++;
    lua_pushvalue(L, -1); // [headers, k, v, v'] tolstring converts a number copy, not the key
    const char *v = lua_tolstring(L, -1, &vl);
    if (memchr(v, '\r', vl) != NULL || memchr(v, '\n', vl) != NULL || memchr(v, '\0', vl) != NULL)
      goto fail;
    if (o + nl + vl + 4 > sizeof(out)) goto fail;
    o += put(out + o, name, nl);
    out[o++] = ':';
    out[o++] = ' ';
    o += put(out + o, v, vl);
    out[o++] = '\r';
    out[o++] = '\n';
    lua_pop(L, 2); // [headers, k]
  }
  lua_pushlstring(L, out, o);
  return 1;
fail:
  *has_length = 0;
  lua_pushboolean(L, 0);
  return 1;
}

// http_head_lines' cache: a handler usually writes the same header table on every request
// ({['Content-Type'] = 'text/plain'} built from the same constant strings), so the last few
// sets of all-string pairs are kept with their lines, compared by the strings' identity
// (the pointers lua_tolstring gives: strings are interned and immutable, and the cached
// ones are anchored in the registry, so an equal pointer is the same string). A hit skips
// the validation, the formatting and the interning of the lines. A false answer (a table
// the header store must take) is kept as well: it depends on nothing but the strings.
#define HL_ENTRIES 4
#define HL_PAIRS 8
static struct {
  int n;          // pairs; 0 = empty entry
  int has_length; // the pairs hold a Content-Length
  const char *kv[2 * HL_PAIRS];
} hl_cache[HL_ENTRIES];
static int hl_next;            // the entry the next miss replaces
static int hl_ref = LUA_NOREF; // registry: { [e] = { lines|false, k1, v1, k2, v2, ... } }

static int http_head_lines(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  const char *kv[2 * HL_PAIRS];
  int n = 0, cacheable = 1;
  lua_pushnil(L);               // [headers, k]
  while (lua_next(L, 1) != 0) { // [headers, k, v]
    if (n == HL_PAIRS || lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
      cacheable = 0;
      lua_pop(L, 2);
      break;
    }
    kv[2 * n] = lua_tostring(L, -2);
    kv[2 * n + 1] = lua_tostring(L, -1);
    n++;
    lua_pop(L, 1); // [headers, k]
  }
  lua_settop(L, 1); // [headers]
  if (cacheable && n > 0) {
    for (int e = 0; e < HL_ENTRIES; e++) {
      if (hl_cache[e].n == n && memcmp(hl_cache[e].kv, kv, 2 * (size_t)n * sizeof(kv[0])) == 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, hl_ref);
        lua_rawgeti(L, -1, e + 1);
        lua_rawgeti(L, -1, 1); // [headers, cache, entry, lines]
        lua_pushboolean(L, hl_cache[e].has_length);
        return 2;
      }
    }
  }
  int has_length = 0;
  head_lines_format(L, &has_length); // [headers, .., lines|false] (a failure leaves the pair)
  lua_insert(L, 2);
  lua_settop(L, 2); // [headers, lines|false]
  lua_pushboolean(L, has_length);
  if (!cacheable || n == 0) return 2;
  lua_pop(L, 1); // [headers, lines|false]
  // Anchor the pairs and the lines in a new entry table, then record their pointers.
  int e = hl_next;
  hl_next = (hl_next + 1) % HL_ENTRIES;
  if (hl_ref == LUA_NOREF) {
    lua_createtable(L, HL_ENTRIES, 0);
    hl_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, hl_ref); // [headers, lines, cache]
  lua_createtable(L, 2 * n + 1, 0);          // [headers, lines, cache, entry]
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, 1) != 0 && i < n) { // [.., entry, k, v] the same pairs, in the same order
    lua_rawseti(L, -3, 2 * i + 3);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 2 * i + 2); // [.., entry, k]
    i++;
  }
  lua_settop(L, 4);         // [headers, lines, cache, entry]
  lua_rawseti(L, 3, e + 1); // [headers, lines, cache]
  hl_cache[e].n = n;
  hl_cache[e].has_length = has_length;
  memcpy(hl_cache[e].kv, kv, 2 * (size_t)n * sizeof(kv[0]));
  lua_settop(L, 2); // [headers, lines]
  lua_pushboolean(L, has_length);
  return 2;
}

enum {
  SEND_DATE = 1,       // add a Date header
  SEND_CHUNKED = 2,    // add Transfer-Encoding: chunked (with a head) and frame the body
  SEND_LAST = 4,       // chunked: append the last chunk
  SEND_CLOSE = 8,      // Connection: close
  SEND_KEEPALIVE = 16, // Connection: keep-alive
  SEND_CONTINUE = 32,  // the head is "HTTP/1.1 100 Continue" only
};

// Writes the parts (already formatted in obuf, plus the body by reference) to the stream:
// one try-write for the common case, queued writes for what remains.
static int send_parts(lua_State *L, lc_stream_t *s, uv_buf_t *bufs, int nbufs, int body_idx) {
  size_t total = 0;
  for (int i = 0; i < nbufs; i++)
    total += bufs[i].len;
  size_t done = 0;
  if (s->u.stream.write_queue_size == 0 && total > 0) {
    int n = uv_try_write(&s->u.stream, bufs, (unsigned)nbufs);
    if (n > 0) {
      done = (size_t)n;
      s->ud->bytes_written += (uint64_t)n;
      lc_metrics.bytes_out += (uint64_t)n;
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      return n;
    }
  }
  for (int i = 0; i < nbufs && done < total; i++) {
    size_t skip = 0;
    if (done > 0) {
      if (done >= bufs[i].len) {
        done -= bufs[i].len;
        total -= bufs[i].len;
        continue;
      }
      skip = done;
      done = 0;
    }
    const char *p = bufs[i].base + skip;
    size_t n = bufs[i].len - skip;
    total -= bufs[i].len;
    int rc;
    if (i == 1 && body_idx) {
      rc = lc_stream_write(L, s, p, n, body_idx, 0);
    } else {
      lua_pushlstring(L, p, n); // [copy] obuf is reused by the next call
      rc = lc_stream_write(L, s, p == NULL ? "" : lua_tostring(L, -1), n, -1, 0);
      lua_pop(L, 1);
    }
    if (rc < 0) return rc;
  }
  return 0;
}

// handle:write(bytes) for a Lua handle (TLS): one string, so it becomes one run of records.
static int send_lua(lua_State *L, uv_buf_t *bufs, int nbufs) {
  lua_getfield(L, 1, "write"); // [.., write]
  lua_pushvalue(L, 1);         // [.., write, handle]
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 0; i < nbufs; i++)
    luaL_addlstring(&b, bufs[i].base, bufs[i].len);
  luaL_pushresult(&b); // [.., write, handle, bytes]
  lua_call(L, 2, 3);   // [.., below|nil, err, code]
  return 3;
}

// _core.http_send(stream, status|nil, reason|nil, headers|lines|nil, names|nil, flags,
//                 length|nil, body|nil) -> belowHwm | nil, err, code | nil (stream closing)
// With a status, writes the head: the status line, every headers[lname] = value (a list
// gives one line per item) named names[lname] or, without one, lname in canonical case
// (Content-Type), or the lines as they are, then what flags ask for (Date, Connection,
// Transfer-Encoding) and Content-Length when length is a number. Then the body,
// framed as a chunk when flags has SEND_CHUNKED, then the last chunk with SEND_LAST.
// Header names or values with CR, LF or NUL raise ERR_INVALID_CHAR (response splitting).
static int http_send(lua_State *L) {
  // A table is a TLS socket's handle (lualib/net/tls.lua): the bytes go to its write method.
  int to_lua = lua_istable(L, 1);
  lc_stream_t *s = NULL;
  if (!to_lua) {
    lc_handle_t **ud = lua_touserdata(L, 1);
    if (ud != NULL && *ud != NULL && (*ud)->closing) {
      lua_pushnil(L); // closing (destroyed): nothing is written, and no error to report
      return 1;
    }
    s = lc_stream_check(L, 1);
  }
  int flags = (int)luaL_optinteger(L, 6, 0);
  size_t blen = 0;
  const char *body = lua_isstring(L, 8) ? lua_tolstring(L, 8, &blen) : NULL;
  size_t o = 0;
  obuf_reserve(L, 1024);
  if (flags & SEND_CONTINUE) {
    o += put(obuf, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  } else if (lua_isnumber(L, 2)) {
    int status = (int)lua_tointeger(L, 2);
    if (status < 100 || status > 999) return luaL_argerror(L, 2, "invalid status code");
    size_t rl;
    const char *reason = lua_isstring(L, 3) ? lua_tolstring(L, 3, &rl) : NULL;
    if (reason == NULL) {
      reason = reason_phrase(status);
      rl = strlen(reason);
    }
    check_field(L, reason, rl, "reason");
    obuf_reserve(L, rl + 64);
    o += put(obuf, "HTTP/1.1 ", 9);
    obuf[o++] = (char)('0' + status / 100);
    obuf[o++] = (char)('0' + status / 10 % 10);
    obuf[o++] = (char)('0' + status % 10);
    obuf[o++] = ' ';
    o += put(obuf + o, reason, rl);
    obuf[o++] = '\r';
    obuf[o++] = '\n';
    if (lua_type(L, 4) == LUA_TSTRING) {
      size_t hl;
      const char *hs = lua_tolstring(L, 4, &hl);
      obuf_reserve(L, o + hl + 256);
      o += put(obuf + o, hs, hl);
    } else if (lua_istable(L, 4)) {
      int has_names = lua_istable(L, 5);
      char canon[257];
      lua_pushnil(L);
      while (lua_next(L, 4) != 0) { // [k, v]
        size_t nl;
        const char *name = NULL;
        int pushed = 0;
        if (has_names) {
          lua_pushvalue(L, -2);
          lua_rawget(L, 5); // [k, v, name]
          name = lua_tolstring(L, -1, &nl);
          if (name == NULL) {
            lua_pop(L, 1);
          } else {
            pushed = 1;
          }
        }
        if (name == NULL) {
          // No names entry: the canonical case of the (lower-case) key.
          if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "ERR_INVALID_HTTP_TOKEN: header names are strings");
          const char *k = lua_tolstring(L, -2, &nl);
          if (nl < sizeof(canon)) {
            put_canon(canon, k, nl);
            canon[nl] = '\0';
            name = canon;
          } else {
            name = k;
          }
        }
        o = put_header(L, o, name, nl, -1 - pushed);
        lua_pop(L, 1 + pushed); // [k]
      }
    }
    obuf_reserve(L, o + 256);
    if (flags & SEND_DATE) {
      size_t dl;
      const char *d = date_line(&dl);
      o += put(obuf + o, d, dl);
    }
    if (flags & SEND_CLOSE) o += put(obuf + o, "Connection: close\r\n", 19);
    if (flags & SEND_KEEPALIVE) o += put(obuf + o, "Connection: keep-alive\r\n", 24);
    if (lua_isnumber(L, 7)) {
      o += put(obuf + o, "Content-Length: ", 16);
      o += put_uint(obuf + o, (uint64_t)lua_tonumber(L, 7));
      obuf[o++] = '\r';
      obuf[o++] = '\n';
    } else if (flags & SEND_CHUNKED) {
      o += put(obuf + o, "Transfer-Encoding: chunked\r\n", 28);
    }
    obuf[o++] = '\r';
    obuf[o++] = '\n';
  }
  if ((flags & SEND_CHUNKED) && blen > 0) o += (size_t)sprintf(obuf + o, "%zx\r\n", blen);
  // Small bodies are copied behind the head (one buffer, one syscall); large ones are written
  // from the Lua string itself.
  uv_buf_t bufs[3];
  int nbufs = 1;
  int body_idx = 0;
  if (blen > 0 && blen <= 16384) {
    obuf_reserve(L, o + blen + 16);
    o += put(obuf + o, body, blen);
    if (flags & SEND_CHUNKED) o += put(obuf + o, "\r\n", 2);
    if (flags & SEND_LAST) o += put(obuf + o, "0\r\n\r\n", 5);
    bufs[0] = uv_buf_init(obuf, (unsigned)o);
  } else if (blen > 0) {
    bufs[0] = uv_buf_init(obuf, (unsigned)o);
    bufs[1] = uv_buf_init((char *)body, (unsigned)blen);
    body_idx = 8;
    size_t t = o;
    if (flags & SEND_CHUNKED) t += put(obuf + t, "\r\n", 2);
    if (flags & SEND_LAST) t += put(obuf + t, "0\r\n\r\n", 5);
    bufs[2] = uv_buf_init(obuf + o, (unsigned)(t - o));
    nbufs = 3;
  } else {
    if (flags & SEND_LAST) o += put(obuf + o, "0\r\n\r\n", 5);
    bufs[0] = uv_buf_init(obuf, (unsigned)o);
  }
  if (to_lua) return send_lua(L, bufs, nbufs);
  int rc = send_parts(L, s, bufs, nbufs, body_idx);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  int below = s->u.stream.write_queue_size < s->hwm;
  if (!below) s->want_drain = 1;
  lua_pushboolean(L, below);
  return 1;
}

// _core.http_call(fn, ...): fn(...), from C. http.lua calls request handlers through it so
// that a handler the JIT cannot compile (one that makes closures: FNEW is not compiled)
// does not abort the trace of the code around it: a call to a C function ends a trace
// cleanly (LuaJIT stitches the trace after it), where inlining the handler aborted it, and
// the request path (the message objects, the body's delivery) then ran interpreted.
static int http_call(lua_State *L) {
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}

// A server connection's parser is its stream's handle when embedded, else a parser
// userdata: both answer these (tls.lua's parser too).
static const luaL_Reg http_methods[] = {{"http_detach", conn_detach_m},
                                        {"http_state", conn_state},
                                        {"http_pause", conn_pause},
                                        {"http_resume", conn_resume},
                                        {NULL, NULL}};

void lc_http_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"detach", conn_detach_m}, {"feed", conn_feed_m},
                                     {"state", conn_state},     {"expect_head", conn_expect_head},
                                     {"limits", conn_limits},   {"pause", conn_pause},
                                     {"resume", conn_resume},   {NULL, NULL}};
  luaL_newmetatable(L, MT); // [core, mt]
  lua_newtable(L);
  luaL_register(L, NULL, methods);
  luaL_register(L, NULL, http_methods); // the names http.lua's server uses (below)
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, conn_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);                  // [core]
  luaL_getmetatable(L, "lc.tcp"); // [core, tcpmt] (tcp.c opens first)
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "__index");
    luaL_register(L, NULL, http_methods);
    lua_pop(L, 1);
  }
  lua_pop(L, 1); // [core]
  static const luaL_Reg fns[] = {{"http_attach", http_attach},
                                 {"http_parser", http_new},
                                 {"http_send", http_send},
                                 {"http_set_headers", http_set_headers},
                                 {"http_head_lines", http_head_lines},
                                 {"http_headers", http_headers},
                                 {"http_call", http_call},
                                 {NULL, NULL}};
  luaL_register(L, NULL, fns);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, SEND_DATE);
  lua_setfield(L, -2, "DATE");
  lua_pushinteger(L, SEND_CHUNKED);
  lua_setfield(L, -2, "CHUNKED");
  lua_pushinteger(L, SEND_LAST);
  lua_setfield(L, -2, "LAST");
  lua_pushinteger(L, SEND_CLOSE);
  lua_setfield(L, -2, "CLOSE");
  lua_pushinteger(L, SEND_KEEPALIVE);
  lua_setfield(L, -2, "KEEPALIVE");
  lua_pushinteger(L, SEND_CONTINUE);
  lua_setfield(L, -2, "CONTINUE");
  lua_setfield(L, -2, "http_flags"); // [core]
}
