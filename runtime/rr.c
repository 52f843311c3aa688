// rr.c: the master's connection hand-off for a shared TCP (or Unix) port, in C so that no Lua
// runs per connection in the master. `_core.rr_listen(...)` owns one listening socket; on each
// readable event it accepts a batch (up to ACCEPT_BATCH connections), chooses a worker for
// each, and sends each worker its share in one frame carrying several fds (SCM_RIGHTS).
//
// In flight and acks. Node allows one unacknowledged hand-off per worker, which halves its
// connection rate. We keep a window of WINDOW unacknowledged hand-offs per worker. The master
// keeps its copy of each fd it sent until the worker acknowledges the frame (the worker sends
// {"cmd":"rrack","k":K,"n":N} after handling it; that frame is consumed here, in C, through
// the channel's hook). A worker that dies with hand-offs unacknowledged never touched them, so
// the master hands those connections to other workers: nothing queued for a dead worker is
// lost, and nothing is leaked (Node leaks the in-flight handle). When every worker's window is
// full, the master stops accepting and the kernel's backlog holds new connections.
//
// Stalled workers. A worker whose loop is stuck (a handler in `while true do end`, a
// SIGSTOPped process) takes no fds and acks nothing; its window would keep taking new
// connections that hang. So each target keeps one timestamp: the loop time when it last made
// progress (its oldest unacknowledged hand-off was sent, or it last acknowledged). At most
// every SCAN_MS (checked when a connection is being placed), a scan flags the targets with
// hand-offs unacknowledged for more than STALL_MS; a flagged target is not chosen while a
// healthy worker exists (when every worker is stalled, nothing is flagged: the windows and the
// kernel backlog wait as before). Its next ack clears the flag. A newly flagged target is
// reported once with cb('stalled', id) (the built-in master logs it). Hot-path cost: a loop-time
// read and compare per choice, one flag test per candidate, one store per connection handed
// to an empty window and per ack frame.
//
// Policies:
//   rr      fewest in flight, ties rotate (so sequential connections visit every worker);
//           within SLACK of the fewest counts as a tie, so bursts spread evenly
//   least   fewest open connections (workers report them with rr:load), then as rr
//   sticky  rendezvous hash of the client address over the workers' stable keys (their
//           slots), so a client keeps its worker while other workers come and go; when a
//           worker's window is full its clients wait in its own queue (up to WAIT_CAP),
//           so one slow worker does not stop the master from accepting for the others
//
// Lua: `_core.rr_listen(host, port, backlog, flags, cb)` / `_core.rr_listen_path(path,
// backlog, cb)` -> rr | nil, err, code; `rr:id()`, `rr:getsockname()`, `rr:set_body(json)`
// (the newconn message: must contain the rr's id as "k"), `rr:set_policy(name)`,
// `rr:add(id, channel [, key])`, `rr:suspend(id)` (the worker closed its server: send it no
// more), `rr:remove(id)` (its channel is gone: unacknowledged connections go to others),
// `rr:load(id, n)`, `rr:dispatch(fd [, exclude_id])`, `rr:stats()`, close([fn]).
// cb('error', msg, code) when accept fails for a reason other than running dry (at most once
// a second per rr; see pause_accepting).
// `_core.rr_listen_fd(fd, backlog, cb)` takes a socket that is already bound (from systemd).
//
// Running out of descriptors. On EMFILE/ENFILE the kernel backlog would keep the listening
// socket readable forever, so a level-triggered poll would spin. We close a spare descriptor
// kept for this (reserve_fd), accept and close what is waiting (those clients get a prompt
// close, not a hang in a backlog nobody reads), reopen the spare, and stop accepting for
// BACKOFF_MS; a process-wide timer resumes. A hand-off whose send fails (say the channel
// cannot duplicate fds to queue them at EMFILE) makes that worker rest for BACKOFF_MS, never
// suspends it: its connections go to others meanwhile and it gets new ones afterwards.
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ipc.h"

#define MT "lc.rr"
#define ACCEPT_BATCH 64
#define WINDOW 64 // unacknowledged hand-offs per worker
#define MAX_TARGETS 256
#define MAX_PENDING 4096
#define WAIT_CAP 1024  // sticky: connections queued on one busy worker before accept pauses
#define SLACK 32       // in-flight difference still treated as a tie (rr, least)
#define STALL_MS 1000  // unacknowledged for longer: skip the worker while others can take it
#define SCAN_MS 50     // how often (at most) choose() looks for stalled workers
#define BACKOFF_MS 100 // accept paused after an accept error; a worker rests after a failed send
#define REPORT_MS 1000 // accept errors reported at most this often per rr
#define SHED_MAX 1024  // connections closed per EMFILE before accept pauses

enum { POLICY_RR, POLICY_LEAST, POLICY_STICKY };

typedef struct {
  int id;
  int ch_ref;   // registry reference to the channel's userdata
  lc_ipc_t *ch; // valid while the userdata says it is open (checked on each use)
  uint32_t key; // stable key for sticky hashing (the worker's slot, else its id)
  int suspended;
  int stalled;         // flagged by the last scan: not chosen (see "Stalled workers")
  int reported;        // cb('stalled') was called for this stall
  uint64_t since;      // loop time of the last progress (see "Stalled workers")
  uint64_t rest_until; // loop time (ms) before which a worker whose send failed gets nothing
  long load;           // open connections the worker reported (least)
  uint64_t sent;       // connections handed to this worker
  int ring[WINDOW];    // our copies of unacknowledged hand-offs, oldest first
  int rhead, rcount;
  int batch[LC_IPC_FRAME_MAX_FDS]; // chosen this turn, not sent yet (also in the ring)
  int nbatch;
  int *wait; // sticky: this worker's connections waiting for room in its window
  int whead, nwait;
} target_t;

typedef struct lc_rr {
  lc_handle_t h;
  uv_poll_t poll;
  int fd;
  int k; // process-unique id, carried by newconn and rrack messages
  int polling;
  int paused; // an accept error: wait for the retry timer
  uint64_t last_report;
  unsigned long shed;        // connections closed at EMFILE since the last report
  unsigned long lost_closed; // connections a worker could not receive and nobody could take
  int policy;
  int path_bound; // listen_path: unlink the file on close
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char *body;
  size_t body_len;
  target_t *targets;
  int ntargets;
  unsigned rotate;
  int *pending; // accepted while no worker could take them, oldest first
  int phead, npending;
  int stall_report;   // some target is stalled and not reported yet
  uint64_t now;       // loop time of the last choice
  uint64_t scanned;   // loop time of the last stall scan
  struct lc_rr *next; // every open rr, for the ack hook
} lc_rr_t;

static lc_rr_t *all_rr;
static int next_k = 1;
static int reserve_fd = -1;    // spare descriptor, closed to make room at EMFILE
static uv_timer_t retry_timer; // resumes paused accepts and rested workers (unreferenced)
static int retry_timer_ready;

static void flush_all(lua_State *L, lc_rr_t *self);
static void update_polling(lc_rr_t *self);
static void arm_retry(void);

// Every paused rr accepts again and every rested worker is offered what waits for it.
// While connections still wait (their worker may rest longer than this timer ran) or an rr
// with workers does not accept, it runs again: nothing else would offer them once no
// acknowledgement is due.
static void on_retry(uv_timer_t *timer) {
  (void)timer;
  int again = 0;
  for (lc_rr_t *self = all_rr; self != NULL; self = self->next) {
    self->paused = 0;
    flush_all(lc_L, self);
    if (self->npending > 0 || (!self->polling && self->ntargets > 0)) again = 1;
    for (int i = 0; i < self->ntargets; i++)
      if (self->targets[i].nwait > 0) again = 1;
  }
  if (again) arm_retry();
}

static void arm_retry(void) {
  if (!retry_timer_ready) {
    uv_timer_init(lc_loop, &retry_timer);
    uv_unref((uv_handle_t *)&retry_timer);
    retry_timer_ready = 1;
  }
  if (!uv_is_active((uv_handle_t *)&retry_timer))
    uv_timer_start(&retry_timer, on_retry, BACKOFF_MS, 0);
}

static lc_ipc_t *target_channel(lua_State *L, target_t *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ch_ref);
  lc_handle_t **ud = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (ud == NULL || *ud == NULL || (*ud)->closing) return NULL;
  return (lc_ipc_t *)*ud;
}

static int resting(const target_t *t) {
  return t->rest_until != 0 && t->rest_until > uv_now(lc_loop);
}

static int usable(lua_State *L, target_t *t) {
  return !t->suspended && !t->stalled && t->rcount < WINDOW && !resting(t) &&
         target_channel(L, t) != NULL;
}

// Flags the targets whose hand-offs stayed unacknowledged for more than STALL_MS, unless no
// healthy (live, unflagged) target would be left.
static void scan_stalls(lc_rr_t *self, uint64_t now) {
  self->scanned = now;
  int healthy = 0, any = 0;
  for (int i = 0; i < self->ntargets; i++) {
    const target_t *t = &self->targets[i];
    if (t->rcount > 0 && now - t->since > STALL_MS)
      any = 1;
    else if (!t->suspended)
      healthy = 1;
  }
  if (!any && self->stall_report == 0) {
    // The common case: nothing stalled. Clear flags left by an all-stalled state.
    for (int i = 0; i < self->ntargets; i++)
      self->targets[i].stalled = 0;
    return;
  }
  for (int i = 0; i < self->ntargets; i++) {
    target_t *t = &self->targets[i];
    t->stalled = healthy && t->rcount > 0 && now - t->since > STALL_MS;
    if (t->stalled && !t->reported) self->stall_report = 1;
  }
}

// Sticky: a 32-bit mix of the client's address and the worker's key (rendezvous hashing).
static uint32_t mix(uint32_t a, uint32_t b) {
  uint32_t h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u + (a << 6) + (a >> 2));
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

static uint32_t addr_hash(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ((struct sockaddr_in *)&ss)->sin_addr.s_addr;
  if (ss.ss_family == AF_INET6) {
    const uint32_t *w = (const uint32_t *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    return mix(mix(w[0], w[1]), mix(w[2], w[3]));
  }
  return 0;
}

// rr: hand-offs in flight. least: open connections first (a worker with one more open
// connection never ties), then hand-offs in flight.
static long target_load(const lc_rr_t *self, const target_t *t) {
  return t->rcount + (self->policy == POLICY_LEAST ? t->load * (WINDOW + 1) : 0);
}

// Chooses the target for connection fd: its index, or -1 when no worker can take it now.
// For sticky the client's worker is chosen even when its window is full (see give).
static int choose(lua_State *L, lc_rr_t *self, int fd, int exclude_id) {
  int best = -1;
  uint64_t now = uv_now(lc_loop);
  self->now = now;
  if (now - self->scanned >= SCAN_MS) scan_stalls(self, now);
  if (self->policy == POLICY_STICKY) {
    // A stalled worker's clients go to their next worker by the hash until it recovers.
    uint32_t a = addr_hash(fd), best_h = 0;
    for (int i = 0; i < self->ntargets; i++) {
      target_t *t = &self->targets[i];
      if (t->id == exclude_id || t->suspended || t->stalled || target_channel(L, t) == NULL)
        continue;
      uint32_t h = mix(a, t->key);
      if (best < 0 || h > best_h) {
        best = i;
        best_h = h;
      }
    }
    return best; // may be full: the caller queues on the worker (sticky never re-routes)
  }
  // The least loaded usable worker; workers within SLACK hand-offs in flight of it count as
  // ties and take turns from the rotation point, so a burst spreads evenly while a worker
  // that falls behind (its acks lag) is skipped until it catches up.
  int n = self->ntargets;
  long min_load = -1;
  for (int i = 0; i < n; i++) {
    target_t *t = &self->targets[i];
    if (t->id == exclude_id || !usable(L, t)) continue;
    long load = target_load(self, t);
    if (min_load < 0 || load < min_load) min_load = load;
  }
  if (min_load < 0) return -1;
  for (int j = 0; j < n; j++) {
    int i = (int)((self->rotate + (unsigned)j) % (unsigned)n);
    target_t *t = &self->targets[i];
    if (t->id == exclude_id || !usable(L, t)) continue;
    if (target_load(self, t) <= min_load + SLACK) {
      best = i;
      break;
    }
  }
  if (best >= 0) self->rotate = (unsigned)best + 1;
  return best;
}

static void push_pending(lc_rr_t *self, int fd) {
  if (self->npending == MAX_PENDING) {
    close(fd);
    return;
  }
  self->pending[(self->phead + self->npending++) % MAX_PENDING] = fd;
}

// Records fd as handed to t: in its ring (until acknowledged) and in this turn's batch.
static void assign(lc_rr_t *self, target_t *t, int fd) {
  if (t->rcount == 0) t->since = self->now; // its oldest unacknowledged hand-off (choose set now)
  t->ring[(t->rhead + t->rcount++) % WINDOW] = fd;
  t->batch[t->nbatch++] = fd;
  if (self->policy == POLICY_LEAST) t->load++;
}

// Sticky: a connection whose worker's window is full waits in that worker's own queue, so
// one slow worker does not stop the master from accepting for the others. Returns 0 when
// that queue is full too.
static int wait_push(target_t *t, int fd) {
  if (t->wait == NULL) t->wait = malloc(WAIT_CAP * sizeof(int));
  if (t->wait == NULL || t->nwait == WAIT_CAP) return 0;
  t->wait[(t->whead + t->nwait++) % WAIT_CAP] = fd;
  return 1;
}

static int wait_pop(target_t *t) {
  int fd = t->wait[t->whead];
  t->whead = (t->whead + 1) % WAIT_CAP;
  t->nwait--;
  return fd;
}

// Hands fd to target i now, or (sticky, window full) queues it on the worker. Returns 0
// when it could do neither.
static int give(lc_rr_t *self, int i, int fd) {
  target_t *t = &self->targets[i];
  if (t->rcount < WINDOW && t->nwait == 0 && !resting(t)) {
    assign(self, t, fd);
    return 1;
  }
  return self->policy == POLICY_STICKY && wait_push(t, fd);
}

// Gives fd to a worker (batched until flush_all) or queues it until one can take it.
static void place(lua_State *L, lc_rr_t *self, int fd, int exclude_id) {
  int i = choose(L, self, fd, exclude_id);
  if (i < 0 || !give(self, i, fd)) {
    push_pending(self, fd);
    return;
  }
  if (self->targets[i].nbatch == LC_IPC_FRAME_MAX_FDS) flush_all(L, self);
}

// Takes the n newest ring entries back out (a send that failed) and re-places them later.
static void unsend(lc_rr_t *self, target_t *t, int n) {
  for (int i = 0; i < n; i++) {
    int fd = t->ring[(t->rhead + t->rcount - n + i) % WINDOW];
    push_pending(self, fd);
  }
  t->rcount -= n;
}

static void flush_target(lua_State *L, lc_rr_t *self, target_t *t) {
  if (t->nbatch == 0) return;
  lc_ipc_t *ch = target_channel(L, t);
  int n = t->nbatch;
  t->nbatch = 0;
  // The channel gets copies (close_fds = 0): ours stay in the ring until acknowledged.
  int rc = ch == NULL
               ? UV_EPIPE
               : lc_ipc_send(ch, LC_IPC_KIND_INTERNAL, self->body, self->body_len, t->batch, n, 0);
  if (rc < 0) {
    // Its connections go back to the queue for others; the worker itself only rests (a
    // closed channel is skipped anyway until rr:remove), so a passing shortage of fds or
    // memory never stops it from getting connections for good.
    unsend(self, t, n);
    t->rest_until = uv_now(lc_loop) + BACKOFF_MS;
    arm_retry();
    return;
  }
  t->sent += (uint64_t)n;
}

// Sends every batch, then hands queued connections to workers with room, repeatedly.
static void flush_all(lua_State *L, lc_rr_t *self) {
  for (;;) {
    for (int i = 0; i < self->ntargets; i++)
      flush_target(L, self, &self->targets[i]);
    int moved = 0;
    for (int i = 0; i < self->ntargets; i++) {
      target_t *t = &self->targets[i];
      if (t->nwait > 0) self->now = uv_now(lc_loop); // for assign's timestamp
      while (t->nwait > 0 && t->rcount < WINDOW && t->nbatch < LC_IPC_FRAME_MAX_FDS &&
             !resting(t)) {
        assign(self, t, wait_pop(t));
        moved = 1;
      }
    }
    while (self->npending > 0) {
      int fd = self->pending[self->phead];
      int i = choose(L, self, fd, -1);
      if (i < 0 || !give(self, i, fd)) break;
      self->phead = (self->phead + 1) % MAX_PENDING;
      self->npending--;
      moved = 1;
      if (self->targets[i].nbatch == LC_IPC_FRAME_MAX_FDS) break;
    }
    if (!moved) break;
  }
  update_polling(self);
}

// cb('stalled', id) once per stall (the flag resets when the worker acknowledges again).
static void report_stalls(lua_State *L, lc_rr_t *self) {
  self->stall_report = 0;
  for (int i = 0; i < self->ntargets; i++) {
    target_t *t = &self->targets[i];
    if (!t->stalled || t->reported) continue;
    t->reported = 1;
    if (lc_handle_push_cb(L, &self->h)) {
      lua_pushliteral(L, "stalled");
      lua_pushinteger(L, t->id);
      lc_pcall(L, 2, 0);
    }
    if (self->h.closing) return; // the callback closed this rr
  }
}

// An accept error other than running dry. At EMFILE/ENFILE: frees the spare descriptor,
// accepts and closes what waits in the backlog, takes the spare back. Then accepting pauses
// for BACKOFF_MS, and the error goes to Lua at most once per REPORT_MS.
static void pause_accepting(lua_State *L, lc_rr_t *self, int sys_errno) {
  if (sys_errno == EMFILE || sys_errno == ENFILE) {
    if (reserve_fd >= 0) {
      close(reserve_fd);
      reserve_fd = -1;
    }
    for (int n = 0; n < SHED_MAX; n++) {
      int fd = accept4(self->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        break;
      }
      close(fd);
      self->shed++;
    }
    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  self->paused = 1;
  arm_retry();
  uint64_t now = uv_now(lc_loop);
  if (self->last_report != 0 && now - self->last_report < REPORT_MS) return;
  self->last_report = now;
  unsigned long shed = self->shed;
  self->shed = 0;
  int err = uv_translate_sys_error(sys_errno);
  if (lc_handle_push_cb(L, &self->h)) {
    lua_pushliteral(L, "error");
    if (shed > 0) {
      lua_pushfstring(L,
                      "%s: accept failed: %s (closed %d waiting connections; retrying every %d ms)",
                      uv_err_name(err), uv_strerror(err), (int)shed, BACKOFF_MS);
    } else {
      lua_pushfstring(L, "%s: accept failed: %s (retrying every %d ms)", uv_err_name(err),
                      uv_strerror(err), BACKOFF_MS);
    }
    lua_pushstring(L, uv_err_name(err));
    lc_pcall(L, 3, 0);
  }
}

static void on_readable(uv_poll_t *p, int status, int events) {
  lc_rr_t *self = p->data;
  lua_State *L = lc_L;
  (void)events;
  if (status < 0) return;
  for (int n = 0; n < ACCEPT_BATCH && self->npending == 0; n++) {
    int fd = accept4(self->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        int e = errno;
        flush_all(L, self);
        if (!self->h.closing) pause_accepting(L, self, e);
        if (!self->h.closing) update_polling(self);
        return;
      }
      break;
    }
    place(L, self, fd, -1);
  }
  flush_all(L, self);
  if (self->stall_report) report_stalls(L, self);
}

// Accepts while some worker can take a connection; otherwise the kernel backlog waits.
static void update_polling(lc_rr_t *self) {
  if (self->h.closing || self->fd < 0) return;
  int want = self->npending == 0 && self->ntargets > 0 && !self->paused;
  if (want && !self->polling) {
    uv_poll_start(&self->poll, UV_READABLE, on_readable);
  } else if (!want && self->polling) {
    uv_poll_stop(&self->poll);
    // Whatever stopped accepting (a pause, connections queued for busy or resting workers),
    // the retry timer looks again until accepting resumes, so nothing depends on one event.
    // (Seen: a connection accepted just after the timer ran, while every worker rested,
    // waited in `pending` with nothing left to wake it.)
    arm_retry();
  }
  self->polling = want;
}

// Reads the integer after `"name":` in a NUL-terminated JSON object; -1 when absent.
static int json_int(const char *buf, const char *name) {
  const char *p = strstr(buf, name);
  if (p == NULL) return -1;
  p += strlen(name);
  int v = 0, digits = 0;
  while (*p >= '0' && *p <= '9' && digits < 9) {
    v = v * 10 + (*p++ - '0');
    digits++;
  }
  return digits > 0 ? v : -1;
}

// The channel hook: consumes acknowledgements, internal frames {"cmd":"rrack","k":K,"n":N}
// (in any key order), in C. Everything else goes on to Lua.
static int ack_hook(lc_ipc_t *ch, const lc_ipc_frame_t *f, void *data) {
  (void)data;
  if (f->kind != LC_IPC_KIND_INTERNAL || f->nfds != 0 || f->len >= 64) return 0;
  char buf[64];
  memcpy(buf, f->body, f->len);
  buf[f->len] = '\0';
  if (strstr(buf, "\"cmd\":\"rrack\"") == NULL) return 0;
  int k = json_int(buf, "\"k\":"), n = json_int(buf, "\"n\":");
  if (k < 0 || n <= 0) return 0;
  lc_rr_t *self = all_rr;
  while (self != NULL && self->k != k)
    self = self->next;
  if (self == NULL) return 1; // the rr closed meanwhile: nothing to release
  // "lost": the worker is at its fd limit and the kernel dropped these fds on their way in.
  int lost = strstr(buf, "\"lost\":") != NULL;
  for (int i = 0; i < self->ntargets; i++) {
    target_t *t = &self->targets[i];
    if (t->ch != ch) continue;
    if (n > t->rcount) n = t->rcount;
    int back[WINDOW];
    for (int j = 0; j < n; j++) {
      back[j] = t->ring[t->rhead];
      if (!lost) close(back[j]);
      t->rhead = (t->rhead + 1) % WINDOW;
    }
    t->rcount -= n;
    // Progress: the worker's loop turns again.
    t->since = uv_now(lc_loop);
    t->stalled = t->reported = 0;
    if (lost) {
      // Our copies go to another worker while this one rests; with nobody able to take
      // them now they are closed (the client sees a prompt close, not a hang).
      t->rest_until = uv_now(lc_loop) + BACKOFF_MS;
      arm_retry();
      for (int j = 0; j < n; j++) {
        int to = choose(lc_L, self, back[j], t->id);
        if (to < 0 || !give(self, to, back[j])) {
          close(back[j]);
          self->lost_closed++;
        } else if (self->targets[to].nbatch == LC_IPC_FRAME_MAX_FDS) {
          flush_all(lc_L, self);
        }
      }
    }
    flush_all(lc_L, self);
    break;
  }
  return 1;
}

static void free_parts(lc_rr_t *self) {
  lua_State *L = lc_L;
  for (lc_rr_t **pp = &all_rr; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == self) {
      *pp = self->next;
      break;
    }
  }
  while (self->npending > 0) {
    close(self->pending[self->phead]);
    self->phead = (self->phead + 1) % MAX_PENDING;
    self->npending--;
  }
  for (int i = 0; i < self->ntargets; i++) {
    target_t *t = &self->targets[i];
    for (int j = 0; j < t->rcount; j++)
      close(t->ring[(t->rhead + j) % WINDOW]);
    while (t->nwait > 0)
      close(wait_pop(t));
    free(t->wait);
    luaL_unref(L, LUA_REGISTRYINDEX, t->ch_ref);
  }
  free(self->pending);
  free(self->targets);
  free(self->body);
  self->pending = NULL;
  self->targets = NULL;
  self->body = NULL;
  self->ntargets = 0;
  if (self->fd >= 0) close(self->fd);
  if (self->path_bound) unlink(self->path);
  self->fd = -1;
}

// Stops accepting and releases everything. libuv stops watching the fd inside uv_close
// (uv__poll_close removes it from epoll), so closing the fd right after is safe.
static void rr_close_handle(lc_rr_t *self) {
  if (self->h.closing) return;
  if (self->polling) uv_poll_stop(&self->poll);
  self->polling = 0;
  lc_handle_close(&self->h);
  free_parts(self);
}

// Wraps a bound socket in a new rr handle (pushed) and listens; on failure closes fd and
// pushes the error values instead.
static int new_listening(lua_State *L, int fd, int backlog, int cb_idx, const char *path) {
  if (listen(fd, backlog) != 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    if (path != NULL) unlink(path);
    return lc_util_push_uverr(L, err);
  }
  // The spare descriptor for EMFILE (see pause_accepting), taken while fds are plentiful.
  if (reserve_fd < 0) reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  lc_rr_t *self = lc_handle_new(L, sizeof(*self), MT, cb_idx); // [rr]
  self->targets = calloc(MAX_TARGETS, sizeof(target_t));
  self->pending = malloc(MAX_PENDING * sizeof(int));
  self->h.uv = (uv_handle_t *)&self->poll;
  uv_poll_init(lc_loop, &self->poll, fd);
  self->poll.data = self;
  self->fd = fd;
  self->k = next_k++;
  self->next = all_rr;
  all_rr = self;
  if (path != NULL) {
    snprintf(self->path, sizeof(self->path), "%s", path);
    self->path_bound = 1;
  }
  if (self->targets == NULL || self->pending == NULL) {
    rr_close_handle(self);
    return luaL_error(L, "out of memory");
  }
  return 1;
}

// _core.rr_listen(host, port, backlog, flags|nil, cb) -> rr | nil, err, code
static int rr_listen(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  int port = (int)luaL_checkinteger(L, 2);
  int backlog = (int)luaL_optinteger(L, 3, 511);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  struct sockaddr_storage ss;
  int rc = lc_util_parse_addr(host, port, &ss);
  if (rc < 0) return lc_util_push_uverr(L, rc);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (lua_istable(L, 4)) {
    lua_getfield(L, 4, "ipv6only");
    if (lua_toboolean(L, -1) && ss.ss_family == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    lua_pop(L, 1);
  }
  socklen_t len =
      ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    return lc_util_push_uverr(L, err);
  }
  return new_listening(L, fd, backlog, 5, NULL);
}

// _core.rr_listen_path(path, backlog, cb) -> rr | nil, err, code. The socket file is removed
// when the rr closes.
static int rr_listen_path(lua_State *L) {
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  int backlog = (int)luaL_optinteger(L, 2, 511);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  struct sockaddr_un sun;
  if (plen >= sizeof(sun.sun_path)) return lc_util_push_uverr(L, UV_ENAMETOOLONG);
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path, plen);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    return lc_util_push_uverr(L, err);
  }
  return new_listening(L, fd, backlog, 3, path);
}

// _core.rr_listen_fd(fd, backlog, cb) -> rr | nil, err, code: an already bound socket (one
// inherited from systemd, see _systemd.lua). The rr owns fd from now on; listen() on a
// socket that listens already only updates its backlog.
static int rr_listen_fd(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  int backlog = (int)luaL_optinteger(L, 2, 511);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    return lc_util_push_uverr(L, err);
  }
  return new_listening(L, fd, backlog, 3, NULL);
}

static int rr_id(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  lua_pushinteger(L, self->k);
  return 1;
}

static int rr_getsockname(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(self->fd, (struct sockaddr *)&ss, &len) != 0)
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  lc_util_push_addr(L, (struct sockaddr *)&ss);
  return 1;
}

// rr:set_body(json): the internal message each hand-off frame carries.
static int rr_set_body(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  char *copy = malloc(len + 1);
  if (copy == NULL) return luaL_error(L, "out of memory");
  memcpy(copy, s, len + 1);
  free(self->body);
  self->body = copy;
  self->body_len = len;
  return 0;
}

static int rr_set_policy(lua_State *L) {
  static const char *const names[] = {"rr", "least", "sticky", NULL};
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  self->policy = luaL_checkoption(L, 2, "rr", names);
  return 0;
}

static target_t *find(lc_rr_t *self, int id) {
  for (int i = 0; i < self->ntargets; i++)
    if (self->targets[i].id == id) return &self->targets[i];
  return NULL;
}

// rr:add(id, channel [, key]): the worker takes connections from now on.
static int rr_add(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  int id = (int)luaL_checkinteger(L, 2);
  lc_ipc_t *ch = lc_ipc_check(L, 3);
  target_t *t = find(self, id);
  if (t != NULL) {
    t->suspended = 0;
  } else {
    if (self->ntargets == MAX_TARGETS) return luaL_error(L, "rr: too many workers");
    t = &self->targets[self->ntargets++];
    memset(t, 0, sizeof(*t));
    t->id = id;
    t->ch = ch;
    t->key = (uint32_t)luaL_optinteger(L, 4, id);
    lua_pushvalue(L, 3);
    t->ch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lc_ipc_set_hook(ch, ack_hook, NULL);
  }
  flush_all(L, self);
  return 0;
}

// rr:suspend(id): send this worker no more connections (it closed its server); what it has
// in flight it will handle or refuse, and acknowledge.
static int rr_suspend(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  target_t *t = find(self, (int)luaL_checkinteger(L, 2));
  if (t != NULL) t->suspended = 1;
  return 0;
}

// rr:remove(id) -> true when the worker was a target. Its channel is gone: connections it
// never acknowledged go to the other workers.
static int rr_remove(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  int id = (int)luaL_checkinteger(L, 2);
  for (int i = 0; i < self->ntargets; i++) {
    target_t *t = &self->targets[i];
    if (t->id != id) continue;
    t->nbatch = 0; // batched fds are in the ring too
    while (t->rcount > 0) {
      push_pending(self, t->ring[t->rhead]);
      t->rhead = (t->rhead + 1) % WINDOW;
      t->rcount--;
    }
    while (t->nwait > 0)
      push_pending(self, wait_pop(t));
    free(t->wait);
    luaL_unref(L, LUA_REGISTRYINDEX, t->ch_ref);
    self->targets[i] = self->targets[--self->ntargets];
    flush_all(L, self);
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  return 1;
}

static int rr_load(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  target_t *t = find(self, (int)luaL_checkinteger(L, 2));
  if (t != NULL) t->load = (long)luaL_checkinteger(L, 3);
  return 0;
}

// rr:dispatch(fd [, exclude_id]): hands out a connection a worker refused (it had closed its
// server); takes ownership of fd.
static int rr_dispatch(lua_State *L) {
  lc_rr_t *self = lc_handle_check(L, 1, MT);
  int fd = (int)luaL_checkinteger(L, 2);
  place(L, self, fd, (int)luaL_optinteger(L, 3, -1));
  flush_all(L, self);
  return 0;
}

// rr:stats() -> {[id] = connections handed to it}, {[id] = unacknowledged}, {[id] = open
// connections as the master counts them for 'least' (reported, plus handed out since)
static int rr_stats(lua_State *L) {
  lc_rr_t *self = lc_handle_check_any(L, 1, MT);
  lua_createtable(L, 0, self->ntargets); // [sent]
  lua_createtable(L, 0, self->ntargets); // [sent, inflight]
  lua_createtable(L, 0, self->ntargets); // [sent, inflight, load]
  for (int i = 0; i < self->ntargets; i++) {
    const target_t *t = &self->targets[i];
    lua_pushnumber(L, (lua_Number)t->sent);
    lua_rawseti(L, -4, t->id);
    lua_pushinteger(L, t->rcount);
    lua_rawseti(L, -3, t->id);
    lua_pushinteger(L, (lua_Integer)t->load);
    lua_rawseti(L, -2, t->id);
  }
  return 3;
}

// rr:close([fn]): stops accepting, closes queued connections and the socket.
static int rr_close(lua_State *L) {
  lc_handle_t **ud = luaL_checkudata(L, 1, MT);
  if (*ud == NULL || (*ud)->closing) return 0;
  lc_rr_t *self = (lc_rr_t *)*ud;
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    self->h.close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rr_close_handle(self);
  return 0;
}

void lc_rr_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"id", rr_id},
                                     {"getsockname", rr_getsockname},
                                     {"set_body", rr_set_body},
                                     {"set_policy", rr_set_policy},
                                     {"add", rr_add},
                                     {"suspend", rr_suspend},
                                     {"remove", rr_remove},
                                     {"load", rr_load},
                                     {"dispatch", rr_dispatch},
                                     {"stats", rr_stats},
                                     {"close", rr_close},
                                     {NULL, NULL}};
  lc_handle_meta(L, MT, methods, NULL);
  lua_pushcfunction(L, rr_listen);
  lua_setfield(L, -2, "rr_listen");
  lua_pushcfunction(L, rr_listen_path);
  lua_setfield(L, -2, "rr_listen_path");
  lua_pushcfunction(L, rr_listen_fd);
  lua_setfield(L, -2, "rr_listen_fd");
}
