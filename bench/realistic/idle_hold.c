// idle_hold.c: opens N keep-alive HTTP connections, sends one GET on each, reads its response,
// then holds them all open and idle until stdin closes or SIGTERM. bench/realistic/run and the
// memory spec measure the servers' RSS while it holds them.
//   idle_hold PORT N [FIRST_ADDR NADDR]
// Source addresses are 127.0.0.FIRST_ADDR .. 127.0.0.(FIRST_ADDR+NADDR-1) (default 2, 8), so
// 100k connections do not run out of ephemeral ports on one address. At most 256 connects are
// in flight at once (the server's backlog). Prints "held N" once every connection has its
// response (or "failed K of N: reason" and exits 1), then "closed lost=L" on exit (L: held
// connections the server closed meanwhile).
// Bounded: it gives up after DEADLINE_S, or $IDLE_DEADLINE seconds (connects the server never
// accepts or answers, say a worker out of descriptors, end in "failed ...: timeout", not a
// hang), it fails at once when its own descriptor limit cannot fit N, and it exits when its
// parent dies (PDEATHSIG), so a killed bench leaves no holder, and no connection, behind.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_S 120

typedef struct {
  int fd;
  int state; // 0 connecting, 1 waiting for the response, 2 idle
  int got;   // response bytes seen
  int need;  // head + Content-Length once the head is in, else -1
  char head[512];
} conn_t;

static volatile sig_atomic_t stop;
static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: idle_hold PORT N [FIRST_ADDR NADDR]\n");
    return 2;
  }
  int port = atoi(argv[1]), n = atoi(argv[2]);
  int first = argc > 3 ? atoi(argv[3]) : 2, naddr = argc > 4 ? atoi(argv[4]) : 8;
  if (n < 1 || port < 1 || port > 65535 || first < 1 || naddr < 1 || first + naddr > 255) {
    fprintf(stderr, "idle_hold: bad arguments\n");
    return 2;
  }
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  signal(SIGPIPE, SIG_IGN);
  // The bench's shell is the parent: when it goes, so do we (and our connections).
  pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) return 1;
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)n + 64 && rl.rlim_max > rl.rlim_cur) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur < (rlim_t)n + 64) {
    printf("failed %d of %d: needs %d descriptors, RLIMIT_NOFILE is %llu\n", n, n, n + 64,
           (unsigned long long)rl.rlim_cur);
    return 1;
  }
  char req[128];
  int reqlen = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", port);
  conn_t *cs = calloc((size_t)n, sizeof *cs);
  int ep = epoll_create1(0);
  struct epoll_event evs[256];
  int opened = 0, inflight = 0, done = 0, failed = 0;
  const char *why = "";
  const char *dl = getenv("IDLE_DEADLINE");
  time_t deadline = time(NULL) + (dl != NULL && atoi(dl) > 0 ? atoi(dl) : DEADLINE_S);
  while (done + failed < n && !stop) {
    while (opened < n && inflight < 256) {
      conn_t *c = &cs[opened];
      c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      if (c->fd < 0) {
        why = strerror(errno);
        failed += n - opened;
        opened = n;
        break;
      }
      struct sockaddr_in src = {.sin_family = AF_INET};
      src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(first + opened % naddr));
      int one = 1;
      setsockopt(c->fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
        why = strerror(errno);
        close(c->fd);
        c->fd = -1;
        failed++;
        opened++;
        continue;
      }
      struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
      dst.sin_addr.s_addr = htonl(0x7f000001u);
      c->need = -1;
      if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        why = strerror(errno);
        close(c->fd);
        c->fd = -1;
        failed++;
        opened++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)opened};
      epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
      opened++;
      inflight++;
    }
    if (time(NULL) > deadline) {
      why = "timeout (connect or response)";
      failed = n - done;
      break;
    }
    int k = epoll_wait(ep, evs, 256, 1000);
    for (int i = 0; i < k; i++) {
      conn_t *c = &cs[evs[i].data.u32];
      if (c->state == 0 && (evs[i].events & EPOLLOUT)) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err || write(c->fd, req, (size_t)reqlen) != reqlen) {
          why = strerror(err ? err : errno);
          goto fail;
        }
        c->state = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[i].data.u32};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        continue;
      }
      if (c->state == 1 && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        char buf[4096];
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r <= 0) {
          why = r == 0 ? "closed by the server" : strerror(errno);
          goto fail;
        }
        if (c->need < 0) {
          int keep = (int)sizeof c->head - 1 - c->got;
          memcpy(c->head + c->got, buf, (size_t)(r < keep ? r : keep));
          c->head[c->got + (r < keep ? r : keep)] = 0;
          char *e = strstr(c->head, "\r\n\r\n");
          if (e != NULL) {
            char *cl = strcasestr(c->head, "content-length:");
            c->need = (int)(e + 4 - c->head) + (cl ? atoi(cl + 15) : 0);
          }
        }
        c->got += (int)r;
        if (c->need >= 0 && c->got >= c->need) {
          c->state = 2;
          epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
          inflight--;
          done++;
        }
        continue;
      }
      continue;
    fail:
      epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
      close(c->fd);
      c->fd = -1;
      c->state = 3;
      inflight--;
      failed++;
    }
  }
  if (failed || stop) {
    printf("failed %d of %d: %s\n", failed, n, stop ? "stopped" : why);
    return 1;
  }
  printf("held %d\n", done);
  fflush(stdout);
  // Hold: wait for stdin to close or a signal. A connection the server closes meanwhile is
  // counted and reported at the end (an idle timeout would make the measurement meaningless).
  char b;
  while (!stop && read(0, &b, 1) > 0) {
  }
  int lost = 0;
  for (int i = 0; i < n; i++) {
    char x;
    if (cs[i].fd >= 0 && recv(cs[i].fd, &x, 1, MSG_DONTWAIT | MSG_PEEK) == 0) lost++;
  }
  printf("closed lost=%d\n", lost);
  return 0;
}
