// ipc.c: the cluster IPC channel, a raw AF_UNIX stream socketpair driven by a uv_poll (not a
// libuv ipc pipe, whose queue of received fds is not tied to message boundaries). Frames are
// described in ipc_frame.h.
//
// Lua: `_core.ipc_pair()` -> parent_fd, child_fd; `_core.ipc(fd, cb)` -> channel;
// `_core.ipc_closefd(fd)`. Events go to cb as:
//   cb('frames', list, n)  n frames read in one go; list = {kind, body, fds|false, ...};
//                          fds is a number when the kernel dropped that many (MSG_CTRUNC);
//                          a negative kind: body is the frame's JSON already decoded
//   cb('resume')           an error in a 'frames' call went to an uncaughtException listener;
//                          the Lua side goes on with the frames it had not dispatched yet
//   cb('drain')            the queue is empty after ch:want_drain()
//   cb('end')              the peer closed the channel
//   cb('error', msg, code) a socket error or a malformed frame (code 'EPROTO'); reading
//                          stops, the owner closes the channel
// Methods: send(kind, body [, fds [, close_fds]]), pump(), finish(), flush_sync(ms),
// queued(), want_drain(), ref(), unref(), close([fn]) and the shared handle methods.
// `_core.ipc_max_body` is the largest frame body (the message size limit);
// `_core.ipc_decode_depth` the nesting the JSON of frames is decoded to (the channel's
// lua-cjson instance is set to it too: lualib/cluster/_cluster_ipc.lua). A body is a
// string or a blob from an encode set up by `_core.ipc_blobs` (runtime/json_encode.c: a large
// encoded message in a C buffer, queued by a counted reference instead of a Lua string).
// Large messages go through a shared-memory ring per direction when they can ("large messages
// through shared memory" below); `_core.ipc_shm_stats()` returns the process's ring counters.
#include "ipc.h"
#include "json_encode.h"
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MT "lc.ipc"
#define MAX_IOV 64
#define READ_BUDGET (8u * 1024u * 1024u) // bytes read per poll callback before yielding
#define MAX_READS 64
#define RECV_FDS 64 // room for more than a frame may carry, so excess is seen, not lost
// Sends go to the socket at once, except in a burst: after this many sends with no poll
// event on the channel in between, frames are queued (appended into shared chunks) and one
// writev per poll turn sends them all. Round trips keep their latency; floods cost far
// fewer syscalls.
#define BURST_SENDS 8
#define CHUNK (64u * 1024u)
// The users' limit (1000, docs/api.md) and a few levels for the internal messages wrapping
// a user's.
#define DECODE_DEPTH 1008

int lc_json_decode_buf(lua_State *L, const char *buf, size_t len, int max_depth); // json_decode.c
// A frame whose unsent part is at least this large (one chunk) is queued without a copy when
// its body is a Lua string: the request points into the string and holds a reference to it
// until the last byte is written. It is also written at once even in a burst (one syscall is
// nothing next to its bytes), so a sender in a loop overlaps with its reader.
#define BIG_FRAME CHUNK
// The data size of a channel direction's shared-memory ring (ipc_frame.h, "Large messages
// through shared memory"), in MiB: sparse, only the pages messages touched count; messages up
// to this size less one byte can use it. LC_IPC_SHM=n makes it n MiB (1-256), 0 turns the
// rings off. 4 MiB holds three 1 MiB messages in flight; every page of it that is used
// costs a first touch once (~5 ms per MiB on the benchmark VM), so larger is not faster.
#define SHM_MIB 4
// Large messages sent by the socket after a ring could not be made (out of fds or memory)
// before making one is tried again.
#define SHM_RETRY 64

// Process-wide counters for specs and ops (`_core.ipc_shm_stats()`).
static struct {
  uint64_t sent, received; // messages that went through a ring
  uint64_t in_place;       // of those sent, encoded straight into it (ch:send_value)
  uint64_t outgrown;       // encodes into it that outgrew the room offered (moved to a buffer)
  uint64_t full, too_big;  // large messages that went by the socket: ring full, or larger than it
  int64_t maps;            // rings mapped now (either direction)
  uint64_t lost;           // ATTACH frames not taken here: fd dropped (fd limit), mmap failed
  uint64_t peak;           // the most bytes a ring of this process held (pages touched)
} shm_stats;
static size_t shm_size = 1; // the rings' data size; 0: off; 1: LC_IPC_SHM not read yet

typedef struct wreq {
  struct wreq *next;
  size_t len, off, cap; // bytes [off, len) of the frame(s) are unsent; later frames may be
                        // appended to data up to cap (never to a request with `body`)
  int nfds;             // fds still to send with the first byte (0 once sent)
  int fds[LC_IPC_FRAME_MAX_FDS];
  int ref;                 // registry reference to the Lua string `body` points into, or LUA_NOREF
  struct lc_json_buf *buf; // or the encoded message it points into (a counted reference)
  const char *body;        // NULL, or one frame: header in data[0, 8), body bytes here (len - 8)
  char data[];
} wreq_t;

struct lc_ipc {
  lc_handle_t h;
  uv_poll_t poll;
  int fd;
  int events;     // what the poll is started with
  int want_ref;   // the owner wants the loop kept alive by the channel
  int finishing;  // close once the write queue is empty
  int reading;    // 0 after an error or EOF
  int delivering; // inside a Lua callback from do_read
  int torn_down;  // fd closed, buffers freed
  int burst;      // sends since the last poll event
  int blocked;    // the socket said EAGAIN; wait for the poll to say it is writable
  int want_drain; // the owner waits for cb('drain') once the queue is empty
  lc_ipc_frame_decoder_t dec;
  wreq_t *head, *tail;
  size_t queued;
  lc_ipc_hook hook;
  void *hook_data;
  // This side's ring for large messages it sends (made at the first one) and the peer's ring
  // it reads them from (mapped when its ATTACH frame arrives). tx_fd is the memfd, kept until
  // the receiver says it mapped the ring (tx_ready: large messages may use it); tx_resend:
  // an ATTACH is to be sent (the first, or again: the receiver's copy of the fd was dropped);
  // tx_wait: large messages left to send by the socket before trying again to make a ring
  // that could not be made; tx_off: no ring (switched off, or the peer wrote nonsense).
  char *tx_map, *rx_map;             // the mappings (header, then data)
  size_t tx_size, rx_size;           // the data areas' sizes
  uint64_t tx_head;                  // where the next message goes (a position, ipc_frame.h)
  uint64_t tx_skip_from, tx_skip_to; // the last tail skipped (positions)
  uint64_t rx_expect;                // the position after the last message taken
  size_t tx_last;                    // the room the last ring message took (with its spare byte)
  int tx_fd, tx_off, tx_ready, tx_resend, tx_wait;
  int tx_filling; // a message is being encoded into the ring (ch:send_value)
};

static void close_fd(int fd) {
  if (fd >= 0) close(fd);
}

static void set_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl >= 0 && !(fdfl & FD_CLOEXEC)) fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC);
}

// Starts the poll with the events the channel needs now and sets whether it holds the loop:
// it does while the owner asks, and always while bytes wait to be written (so a process
// whose last act was a send does not exit before the bytes are out).
static void update_poll(lc_ipc_t *ch);
static void on_poll(uv_poll_t *p, int status, int events);
static __attribute__((noinline)) int shm_send(lc_ipc_t *ch, int kind, const char *body, size_t len);

// Frees a written or dropped request; its Lua string may be collected from now on. (No Lua
// state at exit: lua_close drops the references itself.)
static void free_wreq(wreq_t *w) {
  if (w->ref != LUA_NOREF && lc_L != NULL) luaL_unref(lc_L, LUA_REGISTRYINDEX, w->ref);
  if (w->buf != NULL) lc_json_buf_unref(w->buf);
  free(w);
}

static void drop_queue(lc_ipc_t *ch) {
  wreq_t *w = ch->head;
  while (w != NULL) {
    wreq_t *next = w->next;
    for (int i = 0; i < w->nfds; i++)
      close_fd(w->fds[i]);
    free_wreq(w);
    w = next;
  }
  ch->head = ch->tail = NULL;
  ch->queued = 0;
}

static void shm_unmap(char **map, size_t size) {
  if (*map == NULL) return;
  munmap(*map, LC_IPC_SHM_HEADER + size);
  *map = NULL;
  shm_stats.maps--;
}

static void teardown(lc_ipc_t *ch) {
  if (ch->torn_down) return;
  ch->torn_down = 1;
  drop_queue(ch);
  lc_ipc_frame_free(&ch->dec, close_fd);
  close_fd(ch->fd);
  ch->fd = -1;
  // The rings go with the channel: the memory is freed once neither process maps it. (Not
  // under an encode writing into it; ch:send_value unmaps it when the encode is over.)
  if (!ch->tx_filling) shm_unmap(&ch->tx_map, ch->tx_size);
  shm_unmap(&ch->rx_map, ch->rx_size);
  close_fd(ch->tx_fd);
  ch->tx_fd = -1;
}

// Closes the handle now; its fd and buffers go at once unless a read callback is running
// (it tears down when it returns). The struct itself is freed by the close callback.
static void close_channel(lc_ipc_t *ch) {
  if (ch->h.closing) return;
  lc_handle_close(&ch->h); // stops the poll synchronously, before the fd is closed
  if (!ch->delivering) teardown(ch);
}

static void emit_error(lc_ipc_t *ch, const char *code, const char *msg) {
  lua_State *L = lc_L;
  ch->reading = 0;
  update_poll(ch);
  if (!lc_handle_push_cb(L, &ch->h)) return;
  lua_pushliteral(L, "error");
  lua_pushfstring(L, "%s: %s", code, msg);
  lua_pushstring(L, code);
  lc_pcall(L, 3, 0);
}

static void emit_uverr(lc_ipc_t *ch, int err) {
  emit_error(ch, uv_err_name(err), uv_strerror(err));
}

// The peer closed: 'end', or an error when it left part of a frame behind.
static void emit_end(lc_ipc_t *ch) {
  lua_State *L = lc_L;
  int rc = lc_ipc_frame_finish(&ch->dec);
  if (rc != 0) {
    emit_error(ch, "EPROTO", lc_ipc_frame_strerror(rc));
    return;
  }
  ch->reading = 0;
  update_poll(ch);
  if (lc_handle_push_cb(L, &ch->h)) {
    lua_pushliteral(L, "end");
    lc_pcall(L, 1, 0);
  }
}

// ---- writing ----

// One sendmsg of up to MAX_IOV queued requests starting at the head. A request carrying fds
// always starts its own sendmsg, so its fds ride with its frame's first byte.
static ssize_t send_queue(lc_ipc_t *ch) {
  struct iovec iov[MAX_IOV];
  int n = 0;
  for (wreq_t *w = ch->head; w != NULL && n < MAX_IOV - 1; w = w->next) {
    if (n > 0 && w->nfds > 0) break;
    if (w->body == NULL) {
      iov[n].iov_base = w->data + w->off;
      iov[n].iov_len = w->len - w->off;
      n++;
      continue;
    }
    // Header from data, body straight from the Lua string.
    if (w->off < LC_IPC_FRAME_HEADER) {
      iov[n].iov_base = w->data + w->off;
      iov[n].iov_len = LC_IPC_FRAME_HEADER - w->off;
      n++;
    }
    size_t from = w->off > LC_IPC_FRAME_HEADER ? w->off - LC_IPC_FRAME_HEADER : 0;
    iov[n].iov_base = (void *)(w->body + from);
    iov[n].iov_len = w->len - LC_IPC_FRAME_HEADER - from;
    n++;
  }
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = iov;
  msg.msg_iovlen = (size_t)n;
  char cbuf[CMSG_SPACE(sizeof(int) * LC_IPC_FRAME_MAX_FDS)];
  if (ch->head->nfds > 0) {
    memset(cbuf, 0, sizeof(cbuf));
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)ch->head->nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)ch->head->nfds);
    memcpy(CMSG_DATA(c), ch->head->fds, sizeof(int) * (size_t)ch->head->nfds);
  }
  ssize_t r;
  do {
    r = sendmsg(ch->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

// Writes as much of the queue as the socket takes. Returns 0 or a libuv error.
static int flush_writes(lc_ipc_t *ch) {
  while (ch->head != NULL) {
    ssize_t r = send_queue(ch);
    if (r == -EAGAIN || r == -EWOULDBLOCK) {
      ch->blocked = 1;
      break;
    }
    if (r < 0) return uv_translate_sys_error((int)-r);
    ch->blocked = 0; // the socket took bytes: not full now, whatever an earlier try found
    size_t n = (size_t)r;
    // The head's fds went out with this call: they are the peer's now.
    for (int i = 0; i < ch->head->nfds; i++)
      close_fd(ch->head->fds[i]);
    ch->head->nfds = 0;
    ch->queued -= n;
    while (n > 0) {
      wreq_t *w = ch->head;
      size_t rem = w->len - w->off;
      if (n < rem) {
        w->off += n;
        break;
      }
      n -= rem;
      ch->head = w->next;
      if (ch->head == NULL) ch->tail = NULL;
      free_wreq(w);
    }
  }
  return 0;
}

static void update_poll(lc_ipc_t *ch) {
  if (ch->h.closing) return;
  // A drain the owner waits for is announced from the poll, even when a send emptied the
  // queue itself (a socket with room is writable at once).
  int ev = (ch->reading ? UV_READABLE | UV_DISCONNECT : 0) |
           (ch->head != NULL || ch->want_drain ? UV_WRITABLE : 0);
  if (ev != ch->events) {
    if (ev == 0) {
      uv_poll_stop(&ch->poll);
    } else {
      uv_poll_start(&ch->poll, ev, on_poll);
    }
    ch->events = ev;
  }
  if (ch->want_ref || ch->head != NULL) {
    uv_ref((uv_handle_t *)&ch->poll);
  } else {
    uv_unref((uv_handle_t *)&ch->poll);
  }
}

// lc_ipc_send, and for Lua: when L is not NULL, body is the Lua string at index idx of L,
// or the encoded message buf (a blob: runtime/json_encode.c), and a large unsent rest is queued
// by reference to it instead of copied.
static int send_frame(lc_ipc_t *ch, int kind, const char *body, size_t len, const int *fds,
                      int nfds, int close_fds, lua_State *L, int idx, struct lc_json_buf *buf) {
  int rc = 0;
  size_t sent = 0;
  unsigned char hdr[LC_IPC_FRAME_HEADER];
  if (ch->h.closing || ch->finishing || ch->torn_down) {
    rc = UV_EPIPE;
    goto fail;
  }
  if (len > LC_IPC_FRAME_MAX_BODY) {
    rc = UV_E2BIG;
    goto fail;
  }
  if (nfds < 0 || nfds > LC_IPC_FRAME_MAX_FDS || kind < LC_IPC_KIND_USER ||
      kind > LC_IPC_KIND_MAX) {
    rc = UV_EINVAL;
    goto fail;
  }
  // A large message without fds goes through the shared-memory ring when it can.
  if (__builtin_expect(len >= BIG_FRAME, 0) && nfds == 0 && kind != LC_IPC_KIND_HANDLE &&
      kind != LC_IPC_KIND_SHM) {
    rc = shm_send(ch, kind, body, len);
    if (rc != 0) return rc < 0 ? rc : 0;
  }
  lc_ipc_frame_header(hdr, (uint32_t)len, kind, nfds);
  lc_metrics.ipc_out++;
  size_t total = len + LC_IPC_FRAME_HEADER;
  // A ring message's reference counts as large: the receiver must see it at once to take
  // the message and free its room, and one syscall is nothing next to the message.
  int big = len >= BIG_FRAME || kind == LC_IPC_KIND_SHM;
  // A large frame behind a queue first tries to move the queue along (the reader may have
  // made room since the socket was last full), so a sender that never yields to the loop
  // still overlaps with its reader. Errors surface at the poll, as for any queued write.
  if (big && ch->head != NULL) flush_writes(ch);
  if (ch->head == NULL && (ch->burst < BURST_SENDS || big)) {
    ch->burst++;
    // Nothing queued: try the write now, with no copy and no loop turn.
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)body, len}};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = len > 0 ? 2 : 1;
    char cbuf[CMSG_SPACE(sizeof(int) * LC_IPC_FRAME_MAX_FDS)];
    if (nfds > 0) {
      memset(cbuf, 0, sizeof(cbuf));
      msg.msg_control = cbuf;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
      memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t r;
    do {
      r = sendmsg(ch->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      rc = uv_translate_sys_error(errno);
      goto fail;
    }
    if (r > 0) {
      sent = (size_t)r;
      if (close_fds)
        for (int i = 0; i < nfds; i++)
          close_fd(fds[i]);
      nfds = 0; // the fds went with the first byte
      if (sent == total) return 0;
    }
  }
  size_t rem = total - sent;
  wreq_t *w = ch->tail;
  int fresh = 0;
  if (L != NULL && rem >= BIG_FRAME) {
    // A large rest stays in the Lua string or the encoded buffer, kept alive by a
    // reference: no copy.
    w = malloc(sizeof(*w) + LC_IPC_FRAME_HEADER);
    if (w == NULL) {
      rc = UV_ENOMEM;
      goto fail;
    }
    memcpy(w->data, hdr, LC_IPC_FRAME_HEADER);
    w->next = NULL;
    w->len = total;
    w->off = sent;
    w->cap = LC_IPC_FRAME_HEADER;
    w->nfds = 0;
    w->body = body;
    w->buf = buf;
    if (buf != NULL) {
      lc_json_buf_ref(buf);
      w->ref = LUA_NOREF;
    } else {
      lua_pushvalue(L, idx);
      w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    fresh = 1;
  } else {
    // Queue what is left: a copy, so the caller's buffer may go at once. A frame without fds
    // joins the tail chunk when it fits (its bytes follow the tail's in the stream anyway).
    if (nfds > 0 || w == NULL || w->body != NULL || w->cap - w->len < rem) {
      size_t cap = rem < CHUNK && nfds == 0 ? CHUNK : rem;
      w = malloc(sizeof(*w) + cap);
      if (w == NULL) {
        rc = UV_ENOMEM;
        goto fail;
      }
      w->next = NULL;
      w->len = 0;
      w->off = 0;
      w->cap = cap;
      w->nfds = 0;
      w->ref = LUA_NOREF;
      w->buf = NULL;
      w->body = NULL;
      fresh = 1;
    }
    char *dst = w->data + w->len;
    if (sent < LC_IPC_FRAME_HEADER) {
      memcpy(dst, hdr + sent, LC_IPC_FRAME_HEADER - sent);
      if (len > 0) memcpy(dst + LC_IPC_FRAME_HEADER - sent, body, len);
    } else {
      memcpy(dst, body + (sent - LC_IPC_FRAME_HEADER), rem);
    }
    w->len += rem;
  }
  for (int i = 0; i < nfds; i++) {
    // Queued fds must survive the caller closing its own: keep a duplicate unless we own them.
    int fd = close_fds ? fds[i] : fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      rc = uv_translate_sys_error(errno);
      for (int j = 0; j < w->nfds; j++)
        close_fd(w->fds[j]);
      free_wreq(w); // fresh: a frame with fds always gets its own request
      goto fail;
    }
    w->fds[w->nfds++] = fd;
  }
  if (fresh) {
    if (ch->tail != NULL) {
      ch->tail->next = w;
    } else {
      ch->head = w;
    }
    ch->tail = w;
  }
  ch->queued += rem;
  // A burst that filled a chunk writes it now rather than when the loop polls, so the peer
  // starts reading while this process is still sending. Errors surface at the poll.
  if (fresh && ch->head != w && !ch->blocked) flush_writes(ch);
  update_poll(ch);
  return 0;
fail:
  if (close_fds)
    for (int i = 0; i < nfds; i++)
      close_fd(fds[i]);
  return rc;
}

// ---- large messages through shared memory ----

// The position consumed so far, stored by the receiver (ipc_frame.h).
static uint64_t *shm_consumed(char *map) {
  return (uint64_t *)(void *)map;
}

// Nonzero once the receiver has mapped the ring, stored by the receiver (ipc_frame.h).
static uint32_t *shm_mapped(char *map) {
  return (uint32_t *)(void *)(map + 8);
}

// Makes this side's ring: a sealed memfd (the receiver then knows its size cannot change
// under its mapping, which would fault) mapped shared. Returns 0, -1 (it could not be made:
// out of fds or memory) or -2 (rings are off: LC_IPC_SHM=0).
static int shm_tx_open(lc_ipc_t *ch) {
  if (shm_size == 1) {
    const char *e = getenv("LC_IPC_SHM");
    long mib = e != NULL && *e != '\0' ? strtol(e, NULL, 10) : SHM_MIB;
    shm_size = mib >= 1 && mib <= 256 ? (size_t)mib << 20 : 0;
  }
  if (shm_size == 0) return -2;
  size_t total = LC_IPC_SHM_HEADER + shm_size;
  int fd = memfd_create("lcluster-ipc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  if (ftruncate(fd, (off_t)total) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    close(fd);
    return -1;
  }
  void *map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    close(fd);
    return -1;
  }
  ch->tx_map = map;
  ch->tx_size = shm_size;
  ch->tx_head = 0;
  ch->tx_fd = fd;
  shm_stats.maps++;
  return 0;
}

// The ring's room for the next message: where it would go at the start of the area
// (*start_room bytes from position *start) and after the last message (*head_room bytes from
// the head), its spare byte included. Returns -1 when the consumed counter makes no sense.
static int shm_room(lc_ipc_t *ch, uint64_t *start, size_t *start_room, size_t *head_room) {
  size_t size = ch->tx_size;
  uint64_t head = ch->tx_head;
  uint64_t consumed = __atomic_load_n(shm_consumed(ch->tx_map), __ATOMIC_ACQUIRE);
  // The receiver stores the end of each message it takes; a skipped tail is free as soon as
  // everything before it is taken (it is not waiting for the message after it).
  if (consumed == ch->tx_skip_from) consumed = ch->tx_skip_to;
  if (consumed > head || head - consumed > size) {
    ch->tx_off = 1; // the peer wrote nonsense: stop using the ring (the socket keeps order)
    return -1;
  }
  size_t off = (size_t)(head % size), used = (size_t)(head - consumed);
  *start = off != 0 ? head + (size - off) : head;
  *head_room = off != 0 ? (size - off < size - used ? size - off : size - used) : 0;
  if (used == 0) {
    *start_room = size; // empty: the tail skipped is free at once
  } else {
    uint64_t span = *start - consumed; // what the start's region must not overlap
    *start_room = span <= size ? size - (size_t)span : 0;
  }
  return 0;
}

// Sends the reference to the message of len bytes the ring holds at position pos (its bytes
// written there) after whatever the socket has queued, and advances the head. Returns 1, or
// a libuv error from sending the reference.
static int shm_commit(lc_ipc_t *ch, int kind, uint64_t pos, size_t len) {
  size_t need = len + 1;
  lc_ipc_shm_ref_t ref = {pos, (uint32_t)len, (uint8_t)kind, LC_IPC_SHM_REF, 0};
  unsigned char b[LC_IPC_SHM_BODY];
  lc_ipc_shm_ref_encode(b, &ref);
  int rc = send_frame(ch, LC_IPC_KIND_SHM, (const char *)b, sizeof(b), NULL, 0, 0, NULL, 0, NULL);
  if (rc < 0) return rc;
  uint64_t head = ch->tx_head;
  if (pos != head) {
    ch->tx_skip_from = head;
    ch->tx_skip_to = pos;
  }
  ch->tx_head = pos + need;
  ch->tx_last = need;
  size_t end = (size_t)(pos % ch->tx_size) + need;
  if (end > shm_stats.peak) shm_stats.peak = end;
  shm_stats.sent++;
  return 1;
}

// Sends an LC_IPC_KIND_SHM control frame (ATTACH with this side's memfd, or RESEND).
static int shm_control(lc_ipc_t *ch, int op) {
  lc_ipc_shm_ref_t ref = {0, 0, 0, (uint8_t)op, 0};
  unsigned char b[LC_IPC_SHM_BODY];
  lc_ipc_shm_ref_encode(b, &ref);
  int n = op == LC_IPC_SHM_ATTACH ? 1 : 0;
  return send_frame(ch, LC_IPC_KIND_SHM, (const char *)b, sizeof(b), &ch->tx_fd, n, 0, NULL, 0,
                    NULL);
}

// Whether an ATTACH waits in the write queue with its fd (a frame with fds has a request of
// its own, whose fds go with its first byte: nfds is 0 once that is written).
static int shm_attach_queued(const lc_ipc_t *ch) {
  for (const wreq_t *w = ch->head; w != NULL; w = w->next)
    if (w->nfds > 0 && w->body == NULL && (unsigned char)w->data[4] == LC_IPC_KIND_SHM) return 1;
  return 0;
}

// Whether the receiver has mapped this side's ring (it says so in the header): from then on
// large messages may use it, and the memfd is not needed any more.
static int shm_tx_confirmed(lc_ipc_t *ch) {
  if (ch->tx_map == NULL || __atomic_load_n(shm_mapped(ch->tx_map), __ATOMIC_ACQUIRE) == 0)
    return 0;
  close_fd(ch->tx_fd);
  ch->tx_fd = -1;
  ch->tx_ready = 1;
  return 1;
}

// Whether the ring may carry a large message now (shm_send's first step while it may not).
// The first large message makes the ring and sends its ATTACH ahead of itself, and it and
// those after it go by the socket until the receiver has mapped the ring. So a receiver
// whose copy of the fd the kernel dropped (at its fd limit) loses nothing: it asks for the
// fd again (RESEND) and gets it with a later large message. A ring that could not be made
// (EMFILE, ENOMEM) is tried again after SHM_RETRY large messages.
static int shm_tx_ready(lc_ipc_t *ch) {
  if (ch->tx_map == NULL) {
    if (ch->tx_wait > 0) {
      ch->tx_wait--;
      return 0;
    }
    int rc = shm_tx_open(ch);
    if (rc != 0) {
      if (rc == -2) {
        ch->tx_off = 1;
      } else {
        ch->tx_wait = SHM_RETRY;
      }
      return 0;
    }
    ch->tx_resend = 1;
  }
  if (shm_tx_confirmed(ch)) return 1;
  // An ATTACH that could not be queued (out of fds to duplicate the memfd) is tried again.
  if (ch->tx_resend && shm_control(ch, LC_IPC_SHM_ATTACH) == 0) ch->tx_resend = 0;
  return 0;
}

// Sends a large message through the ring: copies it in and sends its reference on the socket
// (after whatever is queued there, so the order of messages is the socket's). Returns 1 when
// sent, 0 when the socket must carry it (no ring, no room, or too large: never waits), or a
// libuv error from sending the reference.
// (Out of line, as shm_take: small frames' paths stay as they were, instruction for instruction.)
static __attribute__((noinline)) int shm_send(lc_ipc_t *ch, int kind, const char *body,
                                              size_t len) {
  if (ch->tx_off || ch->tx_filling || (!ch->tx_ready && !shm_tx_ready(ch))) return 0;
  size_t size = ch->tx_size, need = len + 1; // a spare byte for the receiver's NUL
  if (need > size) {
    shm_stats.too_big++;
    return 0;
  }
  // A message goes to the start of the area whenever the ring has room for it there (in one
  // piece; the tail it skips counts as consumed), else after the last one. The ring thus keeps
  // to the lowest pages it can: a page's first touch is the costly part (~5 ms per MiB on the
  // benchmark VM against 0.05-0.1 ms for a warm copy), and the touched pages are what the
  // ring costs in memory. While the receiver keeps up, a stream of 1 MiB messages uses two.
  uint64_t start, pos;
  size_t start_room, head_room;
  if (shm_room(ch, &start, &start_room, &head_room) != 0) return 0;
  if (need <= start_room) {
    pos = start;
  } else if (need <= head_room) {
    pos = ch->tx_head;
  } else {
    shm_stats.full++; // the receiver is behind: this one goes by the socket, in order
    return 0;
  }
  memcpy(ch->tx_map + LC_IPC_SHM_HEADER + pos % size, body, len);
  return shm_commit(ch, kind, pos, len);
}

// The region of the ring a message of unknown size is encoded into (ch:send_value), guessing
// it is about the size of the last ring message: at the start of the area when that would
// fit there with an eighth to spare (keeping to the low pages, as shm_send does), else the
// larger of the two if that would fit it. NULL when there is no ring, or the guess does not
// fit, or the room is not that of a large frame: the message is encoded into the encoder's
// buffer (and shm_send copies it into the ring if it turns out to fit after all). A message
// that outgrows the region offered moves to that buffer, its prefix copied once.
static char *shm_region(lc_ipc_t *ch, size_t *room, uint64_t *pos) {
  if (ch->tx_off || ch->tx_filling || (!ch->tx_ready && !shm_tx_confirmed(ch))) return NULL;
  uint64_t start;
  size_t start_room, head_room, last = ch->tx_last;
  if (shm_room(ch, &start, &start_room, &head_room) != 0) return NULL;
  if (start_room >= last + last / 8 || start_room >= head_room) {
    *pos = start;
    *room = start_room;
  } else {
    *pos = ch->tx_head;
    *room = head_room;
  }
  if (*room <= BIG_FRAME || *room < last) return NULL;
  return ch->tx_map + LC_IPC_SHM_HEADER + *pos % ch->tx_size;
}

// Maps the peer's ring from the memfd an ATTACH brought, and says so in its header. Returns
// 0, 1 when mmap failed (out of memory or mappings: the peer is asked again later, as for a
// dropped fd) or LC_IPC_FRAME_ESHMMAP (not a ring).
static int shm_attach(lc_ipc_t *ch, int fd) {
  struct stat st;
  int seals = fcntl(fd, F_GET_SEALS);
  // A memfd sealed against shrinking (pages cut from under the mapping would fault), of a
  // size the receiver accepts.
  if (seals < 0 || !(seals & F_SEAL_SHRINK) || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      st.st_size < (off_t)(LC_IPC_SHM_HEADER + LC_IPC_SHM_MIN_SIZE) ||
      st.st_size > (off_t)(LC_IPC_SHM_HEADER + LC_IPC_SHM_MAX_SIZE) ||
      st.st_size % LC_IPC_SHM_HEADER != 0)
    return LC_IPC_FRAME_ESHMMAP;
  void *map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return 1;
  ch->rx_map = map;
  ch->rx_size = (size_t)st.st_size - LC_IPC_SHM_HEADER;
  ch->rx_expect = 0;
  shm_stats.maps++;
  __atomic_store_n(shm_mapped(ch->rx_map), 1, __ATOMIC_RELEASE); // the sender may use it now
  return 0;
}

// Reads the LC_IPC_KIND_SHM frame *f. A REF is rewritten as the message it names, whose body
// lies in the peer's ring, and *end set to the position to store as consumed once the
// message is taken; an ATTACH or a RESEND is acted on and leaves f->kind LC_IPC_KIND_SHM (no
// message). Returns 0 or a decoder error (the stream is then malformed). Any fd the frame
// carried is closed (the mapping stays).
static int shm_recv(lc_ipc_t *ch, lc_ipc_frame_t *f, uint64_t *end) {
  lc_ipc_shm_ref_t ref;
  int rc = lc_ipc_shm_parse(f, ch->rx_map != NULL, &ref);
  if (rc == 0 && ref.op == LC_IPC_SHM_ATTACH) {
    // The fd dropped at the fd limit, or a ring that could not be mapped: ask for it again.
    // The sender uses the ring only once it is mapped, so nothing is lost. (A failure to
    // queue the RESEND is the channel's own failure.)
    if (ref.lost || (rc = shm_attach(ch, f->fds[0])) == 1) {
      rc = 0;
      shm_stats.lost++;
      shm_control(ch, LC_IPC_SHM_RESEND);
    }
  } else if (rc == 0 && ref.op == LC_IPC_SHM_RESEND) {
    // Only while this side's ring waits to be mapped (it then has its fd), and only for an
    // ATTACH the peer has read: none is still in the queue (the peer asks again only for one
    // it has read, and one is sent again only when it asks). Else a peer that asked without
    // reading would have each large message queue another duplicate of the fd.
    if (ch->tx_map == NULL || ch->tx_ready || ch->tx_fd < 0 || shm_attach_queued(ch)) {
      rc = LC_IPC_FRAME_ESHMFD;
    } else {
      ch->tx_resend = 1;
    }
  }
  for (int i = 0; i < f->nfds; i++)
    close_fd(f->fds[i]);
  f->nfds = 0;
  if (rc != 0 || ref.op != LC_IPC_SHM_REF) return rc;
  size_t off;
  rc = lc_ipc_shm_locate(&ref, ch->rx_size, ch->rx_expect, &off);
  if (rc != 0) return rc;
  f->body = ch->rx_map + LC_IPC_SHM_HEADER + off;
  f->len = ref.len;
  f->kind = ref.kind;
  *end = ref.pos + ref.len + 1;
  shm_stats.received++;
  return 0;
}

// Releases the region of the message taken last: the sender may reuse it.
static void shm_release(lc_ipc_t *ch, uint64_t end) {
  ch->rx_expect = end;
  __atomic_store_n(shm_consumed(ch->rx_map), end, __ATOMIC_RELEASE);
}

// _core.ipc_shm_stats() -> {sent=, in_place=, outgrown=, received=, full=, too_big=, maps=, peak=,
// lost=}
static int ipc_shm_stats(lua_State *L) {
  const struct {
    const char *name;
    double value;
  } f[] = {
      {"sent", (double)shm_stats.sent},         {"in_place", (double)shm_stats.in_place},
      {"outgrown", (double)shm_stats.outgrown}, {"received", (double)shm_stats.received},
      {"full", (double)shm_stats.full},         {"too_big", (double)shm_stats.too_big},
      {"maps", (double)shm_stats.maps},         {"peak", (double)shm_stats.peak},
      {"lost", (double)shm_stats.lost},
  };
  int n = (int)(sizeof f / sizeof f[0]);
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    lua_pushnumber(L, f[i].value);
    lua_setfield(L, -2, f[i].name);
  }
  return 1;
}

int lc_ipc_send(lc_ipc_t *ch, int kind, const char *body, size_t len, const int *fds, int nfds,
                int close_fds) {
  return send_frame(ch, kind, body, len, fds, nfds, close_fds, NULL, 0, NULL);
}

void lc_ipc_set_hook(lc_ipc_t *ch, lc_ipc_hook hook, void *data) {
  ch->hook = hook;
  ch->hook_data = data;
}

size_t lc_ipc_queued(const lc_ipc_t *ch) {
  return ch->queued;
}

// ---- reading ----

// Pushes one frame as three list entries: kind, body, fds (a list of integers, or the number
// of fds the kernel dropped, see lc_ipc_frame_lose_fds) or false. A JSON body is decoded
// here, straight from the read buffer, by the cjson.decode fast path (runtime/json_decode.c)
// and its kind negated; only when that declines (a malformed frame, or a form only lua-cjson
// accepts) does the body become a Lua string for lua-cjson. A 1 MiB message thus costs no
// 1 MiB string (LuaJIT maps each such block afresh: 256 page faults, ~4.5 ms per MiB here).
// The parser stops on a NUL after the text, put in the byte after the body for the call:
// the next frame's first byte, or the spare byte lc_ipc_frame_space leaves past its buffer.
static void push_frame(lua_State *L, const lc_ipc_frame_t *f, int list, int *n) {
  int kind = f->kind;
  if (kind != LC_IPC_KIND_STRING) {
    char *after = (char *)f->body + f->len, saved = *after;
    *after = '\0';
    int decoded = lc_json_decode_buf(L, f->body, f->len, DECODE_DEPTH);
    *after = saved;
    if (decoded) kind = -kind;
  }
  lua_pushinteger(L, kind);
  lua_rawseti(L, list, ++*n);
  if (kind > 0) lua_pushlstring(L, f->body, f->len);
  lua_rawseti(L, list, ++*n);
  if (f->lost_fds > 0) {
    lua_pushinteger(L, f->lost_fds); // a number, not a list: that many fds were dropped
  } else if (f->nfds > 0) {
    lua_createtable(L, f->nfds, 0);
    for (int i = 0; i < f->nfds; i++) {
      lua_pushinteger(L, f->fds[i]);
      lua_rawseti(L, -2, i + 1);
    }
  } else {
    lua_pushboolean(L, 0);
  }
  lua_rawseti(L, list, ++*n);
}

// do_read's delivery of a ring message: the reference *f is read (shm_recv), the message
// delivered as any frame, then its region released. Returns 0 or a decoder error (sticky).
static __attribute__((noinline)) int shm_take(lc_ipc_t *ch, lua_State *L, lc_ipc_frame_t *f,
                                              int *list, int *n) {
  uint64_t end = 0;
  int rc = shm_recv(ch, f, &end);
  if (rc != 0) return ch->dec.err = rc;     // malformed: sticky, like the decoder's own errors
  if (f->kind == LC_IPC_KIND_SHM) return 0; // a control frame: no message
  lc_metrics.ipc_in++;
  if (ch->hook == NULL || !ch->hook(ch, f, ch->hook_data)) {
    if (*list == 0) {
      lua_createtable(L, 24, 0);
      *list = lua_gettop(L);
    }
    push_frame(L, f, *list, n);
  }
  // The message is a Lua value (or the hook's) now: its region may be reused.
  if (ch->rx_map != NULL) shm_release(ch, end);
  return 0;
}

// Reads what the socket holds (up to a budget, so a flood cannot starve the loop), decodes
// every complete frame and hands them to Lua in one call. Errors and EOF are reported after
// the frames that preceded them.
static void do_read(lc_ipc_t *ch) {
  lua_State *L = lc_L;
  if (ch->delivering || !ch->reading || ch->h.closing) return;
  int top = lua_gettop(L);
  int list = 0, n = 0, eof = 0, frame_err = 0, sys_err = 0;
  size_t budget = READ_BUDGET;
  // Delivering from here, not only around the Lua call: a frame's JSON is decoded in C as it
  // is taken (push_frame, shm_take), and any of the decode's allocations may run the GC,
  // whose finalizers may close the channel. The teardown (the read buffer, the ring) then
  // waits for the end of this read, which stops taking frames.
  ch->delivering = 1;
  for (int reads = 0; reads < MAX_READS && budget > 0 && !ch->h.closing; reads++) {
    char *p;
    size_t len;
    if (lc_ipc_frame_space(&ch->dec, &p, &len) != 0) {
      frame_err = LC_IPC_FRAME_ENOMEM;
      break;
    }
    struct iovec iov = {p, len};
    char cbuf[CMSG_SPACE(sizeof(int) * RECV_FDS)];
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);
    ssize_t r = recvmsg(ch->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == ECONNRESET) {
        eof = 1; // the peer died with bytes unread: as good as EOF for us
      } else {
        sys_err = uv_translate_sys_error(errno);
      }
      break;
    }
    int fds[RECV_FDS];
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int cnt = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < cnt; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + sizeof(int) * (size_t)i, sizeof(int));
        if (nfds < RECV_FDS) {
          fds[nfds++] = fd;
        } else {
          close_fd(fd);
        }
      }
    }
    int truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    if (truncated) {
      // This process is at its fd limit: the kernel dropped some of a frame's fds. The
      // frame is delivered without them (lost_fds), the channel stays in step and open.
      for (int i = 0; i < nfds; i++)
        close_fd(fds[i]);
      nfds = 0;
    }
    if (lc_ipc_frame_commit(&ch->dec, (size_t)r, fds, nfds, close_fd) != 0 ||
        (truncated && lc_ipc_frame_lose_fds(&ch->dec, (size_t)r) != 0)) {
      frame_err = ch->dec.err;
      break;
    }
    if (r == 0) {
      eof = 1;
      break;
    }
    budget -= (size_t)r < budget ? (size_t)r : budget;
    lc_ipc_frame_t f;
    int rc = 0;
    while (!ch->h.closing && (rc = lc_ipc_frame_next(&ch->dec, &f)) == LC_IPC_FRAME_OK) {
      if (f.kind == LC_IPC_KIND_SHM) {
        if ((rc = shm_take(ch, L, &f, &list, &n)) != 0) break;
        continue;
      }
      lc_metrics.ipc_in++;
      if (ch->hook != NULL && ch->hook(ch, &f, ch->hook_data)) continue;
      if (list == 0) {
        lua_createtable(L, 24, 0);
        list = lua_gettop(L);
      }
      push_frame(L, &f, list, &n);
    }
    if (rc < 0) {
      frame_err = rc;
      break;
    }
    // A short read means the socket is (almost surely) drained; the poll says if not.
    if ((size_t)r < len) break;
  }
  // This side's ring, if the peer has mapped it since (it answers after): the memfd kept to send it
  // again is not needed. (Else a channel that sent one large message and then only received would
  // hold it for its life.)
  if (__builtin_expect(ch->tx_fd >= 0, 0)) shm_tx_confirmed(ch);
  if (n > 0 && !ch->h.closing && lc_handle_push_cb(L, &ch->h)) {
    lua_pushliteral(L, "frames");
    lua_pushvalue(L, list);
    lua_pushinteger(L, n / 3);
    int rc = lc_pcall(L, 3, 0);
    // An error that an uncaughtException listener handled must not drop the frames after it.
    while (rc != 0 && !ch->h.closing && lc_handle_push_cb(L, &ch->h)) {
      lua_pushliteral(L, "resume");
      rc = lc_pcall(L, 1, 0);
    }
  }
  ch->delivering = 0;
  lua_settop(L, top);
  if (ch->h.closing) {
    teardown(ch);
    return;
  }
  if (frame_err != 0) {
    emit_error(ch, "EPROTO", lc_ipc_frame_strerror(frame_err));
  } else if (sys_err != 0) {
    emit_uverr(ch, sys_err);
  } else if (eof) {
    emit_end(ch);
  }
}

static void on_poll(uv_poll_t *p, int status, int events) {
  lc_ipc_t *ch = p->data;
  if (ch->h.closing) return;
  ch->burst = 0;
  if (status < 0) {
    // libuv reports POLLERR as UV_EBADF and stops the poll. On a unix socket that is the
    // peer closing with bytes of ours unread (a reset): read what it left, then its EOF.
    ch->events = 0;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(ch->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr != 0 && soerr != ECONNRESET && soerr != EPIPE) {
      emit_uverr(ch, uv_translate_sys_error(soerr));
      return;
    }
    do_read(ch);
    if (!ch->h.closing && ch->reading) emit_end(ch);
    return;
  }
  if (events & UV_WRITABLE) {
    ch->blocked = 0;
    int rc = flush_writes(ch);
    if (rc == 0 && ch->head == NULL && ch->want_drain && !ch->finishing) {
      ch->want_drain = 0;
      update_poll(ch);
      lua_State *L = lc_L;
      if (lc_handle_push_cb(L, &ch->h)) {
        lua_pushliteral(L, "drain");
        lc_pcall(L, 1, 0);
      }
      if (ch->h.closing) return;
    }
    if (rc < 0) {
      // The peer is gone (EPIPE): what is queued can never be delivered.
      drop_queue(ch);
      ch->want_drain = 0;
      if (ch->finishing) {
        close_channel(ch);
        return;
      }
      update_poll(ch);
      // Reading goes on: the EOF that follows tells the owner the peer is gone.
    } else if (ch->head == NULL) {
      if (ch->finishing) {
        close_channel(ch);
        return;
      }
      update_poll(ch);
    }
  }
  if (events & (UV_READABLE | UV_DISCONNECT)) do_read(ch);
}

// ---- Lua bindings ----

lc_ipc_t *lc_ipc_check(lua_State *L, int idx) {
  return lc_handle_check(L, idx, MT);
}

// _core.ipc_pair() -> parent_fd, child_fd | nil, err, code. Both ends are close-on-exec (the
// spawn dup2s the child's end into place, which clears the flag on the copy the child gets);
// the parent closes child_fd once the child is spawned.
static int ipc_pair(lua_State *L) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  // Bigger kernel buffers mean fewer wake-ups for large messages (capped by wmem_max).
  int sz = 4 * 1024 * 1024;
  for (int i = 0; i < 2; i++) {
    setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
  }
  set_flags(sv[0]);
  lua_pushinteger(L, sv[0]);
  lua_pushinteger(L, sv[1]);
  return 2;
}

// _core.ipc_closefd(fd): closes a descriptor received on or made for a channel.
static int ipc_closefd(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  return lc_util_push_result(L, close(fd) == 0 ? 0 : uv_translate_sys_error(errno));
}

// _core.ipc(fd, cb) -> channel | nil, err, code. The channel owns fd from now on (it is made
// non-blocking and close-on-exec). It does not hold the loop until ch:ref().
static int ipc_new(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  set_flags(fd);
  lc_ipc_t *ch = lc_handle_new(L, sizeof(*ch), MT, 2); // [ch]
  ch->h.uv = (uv_handle_t *)&ch->poll;
  ch->fd = fd;
  ch->tx_fd = -1;
  lc_ipc_frame_init(&ch->dec);
  int rc = uv_poll_init_socket(lc_loop, &ch->poll, fd);
  ch->poll.data = ch;
  if (rc < 0) {
    // The handle never started; mark it torn down without closing the caller's fd.
    ch->torn_down = 1;
    ch->fd = -1;
    lc_handle_close(&ch->h);
    return lc_util_push_uverr(L, rc);
  }
  ch->reading = 1;
  ch->events = UV_READABLE | UV_DISCONNECT;
  uv_poll_start(&ch->poll, ch->events, on_poll);
  uv_unref((uv_handle_t *)&ch->poll);
  return 1;
}

// ch:send(kind, body [, fds [, close_fds]]) -> true, bytes queued | nil, err, code
static int ipc_send(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  int kind = (int)luaL_checkinteger(L, 2);
  size_t len;
  const char *body;
  struct lc_json_buf *buf = NULL;
  int is_blob = 0;
  if (lua_type(L, 3) == LUA_TUSERDATA) buf = lc_json_blob(L, 3, &is_blob);
  if (buf != NULL) {
    body = buf->data;
    len = buf->len;
  } else if (is_blob) {
    return luaL_argerror(L, 3, "message already released");
  } else {
    body = luaL_checklstring(L, 3, &len);
  }
  int fds[LC_IPC_FRAME_MAX_FDS];
  int nfds = 0;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    size_t cnt = lua_objlen(L, 4);
    if (cnt > LC_IPC_FRAME_MAX_FDS) luaL_argerror(L, 4, "too many file descriptors");
    for (size_t i = 0; i < cnt; i++) {
      lua_rawgeti(L, 4, (int)i + 1);
      fds[nfds++] = (int)luaL_checkinteger(L, -1);
      lua_pop(L, 1);
    }
  }
  int rc = send_frame(ch, kind, body, len, fds, nfds, lua_toboolean(L, 5), L, 3, buf);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, (lua_Integer)ch->queued);
  return 2;
}

// ch:send_value(kind, encode, value) -> true, bytes queued | false [, size] | nil, err, code
// Sends value encoded by `encode` (a cjson instance's fast encode, runtime/json_encode.c) as
// a frame of that kind, without the encoded text ever being a Lua string or a blob: when the
// channel's ring exists the encoder writes straight into its free region, and a large output
// that fits there is sent as a ring reference (no copy at all); otherwise, or when the output
// outgrows the region (its prefix then moves to the encoder's buffer), it is sent the way
// send sends a blob. false: nothing was sent, because the encode was declined (the value is
// one the fast encoder leaves to lua-cjson, which the caller runs to get its result or its
// error) or, with its size, because the output is over the frame body limit.
static int ipc_send_value(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  int kind = (int)luaL_checkinteger(L, 2);
  luaL_checkany(L, 4);
  if (kind < LC_IPC_KIND_USER || kind > LC_IPC_KIND_MAX || kind == LC_IPC_KIND_HANDLE ||
      kind == LC_IPC_KIND_SHM)
    return luaL_argerror(L, 2, "not a kind a value is sent as");
  if (ch->h.closing || ch->finishing || ch->torn_down) return lc_util_push_uverr(L, UV_EPIPE);
  size_t room = 0;
  uint64_t pos = 0;
  char *dst = shm_region(ch, &room, &pos);
  lc_json_out o;
  // The region's last byte is the message's spare byte (the receiver's NUL).
  ch->tx_filling = dst != NULL;
  int r = lc_json_encode_to(L, 3, 4, dst, room > 0 ? room - 1 : 0, &o);
  ch->tx_filling = 0;
  if (ch->torn_down) shm_unmap(&ch->tx_map, ch->tx_size); // closed meanwhile (not reached)
  if (r != 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (dst != NULL && !o.in_dst) shm_stats.outgrown++;
  if (o.len > LC_IPC_FRAME_MAX_BODY) {
    lc_json_out_done();
    lua_pushboolean(L, 0);
    lua_pushinteger(L, (lua_Integer)o.len);
    return 2;
  }
  int rc;
  if (o.in_dst && o.len >= BIG_FRAME && !ch->torn_down) {
    rc = shm_commit(ch, kind, pos, o.len);
    if (rc > 0) shm_stats.in_place++;
    lc_json_out_done();
  } else if (!o.in_dst && o.len >= BIG_FRAME) {
    // Queued by a counted reference to the buffer if the socket does not take it at once.
    struct lc_json_buf *buf = lc_json_out_take();
    rc = send_frame(ch, kind, buf->data, buf->len, NULL, 0, 0, L, 0, buf);
    lc_json_buf_unref(buf);
  } else {
    rc = send_frame(ch, kind, o.data, o.len, NULL, 0, 0, NULL, 0, NULL); // copied
    lc_json_out_done();
  }
  if (rc < 0) return lc_util_push_uverr(L, rc);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, (lua_Integer)ch->queued);
  return 2;
}

// ch:want_drain(): cb('drain') once every queued byte is written (backpressure: the owner
// stops sending above a high-water mark and resumes on the drain).
static int ipc_want_drain(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  ch->want_drain = 1;
  update_poll(ch);
  return 0;
}

// ch:pump(): reads and delivers what the socket holds now (used when the peer is known to
// have exited, to take its last messages and its EOF before reporting the exit).
static int ipc_pump(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  do_read(ch);
  return 0;
}

// ch:finish([fn]): stops reading and closes the channel once every queued byte is written
// (or the peer is gone); fn runs once the handle is closed.
static int ipc_finish(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  if (ch->finishing) return 0;
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    ch->h.close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  ch->finishing = 1;
  ch->reading = 0;
  if (ch->head == NULL) {
    close_channel(ch);
  } else {
    update_poll(ch);
  }
  return 0;
}

// ch:flush_sync(ms) -> true when the queue is empty: writes the queue blocking (up to ms in
// all). For process exit, where queued messages would otherwise be lost.
static int ipc_flush_sync(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  int ms = (int)luaL_optinteger(L, 2, 1000);
  uint64_t deadline = uv_hrtime() + (uint64_t)ms * 1000000u;
  while (ch->head != NULL) {
    if (flush_writes(ch) < 0) break;
    if (ch->head == NULL) break;
    uint64_t now = uv_hrtime();
    if (now >= deadline) break;
    struct pollfd pfd = {ch->fd, POLLOUT, 0};
    int left = (int)((deadline - now) / 1000000u) + 1;
    if (poll(&pfd, 1, left) < 0 && errno != EINTR) break;
  }
  update_poll(ch);
  lua_pushboolean(L, ch->head == NULL);
  return 1;
}

static int ipc_queued(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  lua_pushinteger(L, (lua_Integer)ch->queued);
  return 1;
}

static int ipc_ref(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  ch->want_ref = 1;
  update_poll(ch);
  return 0;
}

static int ipc_unref(lua_State *L) {
  lc_ipc_t *ch = lc_ipc_check(L, 1);
  ch->want_ref = 0;
  update_poll(ch);
  return 0;
}

// ch:close([fn]): closes at once; queued bytes are dropped (see finish for a graceful close).
static int ipc_close(lua_State *L) {
  lc_handle_t **ud = luaL_checkudata(L, 1, MT);
  if (*ud == NULL || (*ud)->closing) return 0;
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    (*ud)->close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  close_channel((lc_ipc_t *)*ud);
  return 0;
}

void lc_ipc_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"send", ipc_send},
                                     {"send_value", ipc_send_value},
                                     {"pump", ipc_pump},
                                     {"finish", ipc_finish},
                                     {"flush_sync", ipc_flush_sync},
                                     {"queued", ipc_queued},
                                     {"want_drain", ipc_want_drain},
                                     {"ref", ipc_ref},
                                     {"unref", ipc_unref},
                                     {"close", ipc_close},
                                     {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, ipc_new);
  lua_setfield(L, -2, "ipc");
  lua_pushcfunction(L, ipc_pair);
  lua_setfield(L, -2, "ipc_pair");
  lua_pushcfunction(L, ipc_closefd);
  lua_setfield(L, -2, "ipc_closefd");
  lua_pushinteger(L, LC_IPC_FRAME_MAX_BODY);
  lua_setfield(L, -2, "ipc_max_body");
  lua_pushcfunction(L, lc_json_ipc_blobs);
  lua_setfield(L, -2, "ipc_blobs");
  lua_pushinteger(L, DECODE_DEPTH);
  lua_setfield(L, -2, "ipc_decode_depth");
  lua_pushcfunction(L, ipc_shm_stats);
  lua_setfield(L, -2, "ipc_shm_stats");
}
