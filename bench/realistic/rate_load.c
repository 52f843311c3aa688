// rate_load.c: a constant-rate HTTP load generator (wrk has no -R): latency at a fixed
// request rate, measured from when each request was due, so a stalled server is charged for
// the requests that queued behind the stall (no coordinated omission).
//   rate_load PORT RATE SECONDS [CONNS [PATH]]
// CONNS keep-alive connections (default 32) to 127.0.0.1:PORT; request i is due at
// start + i/RATE and goes out on the first connection with nothing in flight (or waits for
// one). Prints "rate R sent S done D errors E p50 X p99 Y p999 Z" (milliseconds).
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int fd;
  int busy;
  double due; // when its request in flight was due (s)
  int got, need;
  char head[1024];
} conn_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: rate_load PORT RATE SECONDS [CONNS [PATH]]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  double rate = atof(argv[2]), secs = atof(argv[3]);
  int nc = argc > 4 ? atoi(argv[4]) : 32;
  const char *path = argc > 5 ? argv[5] : "/";
  char req[256];
  int reqlen =
      snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", path, port);
  long total = (long)(rate * secs);
  double *lat = malloc(sizeof(double) * (size_t)(total + 1));
  conn_t *cs = calloc((size_t)nc, sizeof *cs);
  int ep = epoll_create1(0);
  for (int i = 0; i < nc; i++) {
    cs[i].fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(0x7f000001u);
    if (connect(cs[i].fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
      fprintf(stderr, "rate_load: connect: %s\n", strerror(errno));
      return 1;
    }
    int one = 1;
    setsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
  }
  long sent = 0, done = 0, errors = 0;
  double start = now_s(), end = start + secs;
  struct epoll_event evs[64];
  while (done + errors < total) {
    double t = now_s();
    if (t > end + 10) break; // the server fell far behind: report what completed
    // Send every request that is due, on idle connections.
    for (int i = 0; i < nc && sent < total; i++) {
      double due = start + (double)sent / rate;
      if (due > t) break;
      if (cs[i].busy || cs[i].fd < 0) continue;
      if (write(cs[i].fd, req, (size_t)reqlen) != reqlen) {
        errors++;
        close(cs[i].fd);
        cs[i].fd = -1;
        continue;
      }
      cs[i].busy = 1;
      cs[i].due = due;
      cs[i].got = 0;
      cs[i].need = -1;
      sent++;
    }
    double next = start + (double)sent / rate;
    int wait_ms = sent < total ? (int)((next - now_s()) * 1000) : 100;
    if (wait_ms < 0) wait_ms = 0;
    int k = epoll_wait(ep, evs, 64, wait_ms);
    for (int e = 0; e < k; e++) {
      conn_t *c = &cs[evs[e].data.u32];
      char buf[65536];
      ssize_t r = read(c->fd, buf, sizeof buf);
      if (r <= 0) {
        errors++;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        continue;
      }
      if (c->need < 0) {
        int keep = (int)sizeof c->head - 1 - c->got;
        if (keep > r) keep = (int)r;
        memcpy(c->head + c->got, buf, (size_t)keep);
        c->head[c->got + keep] = 0;
        char *h = strstr(c->head, "\r\n\r\n");
        if (h != NULL) {
          char *cl = strcasestr(c->head, "content-length:");
          c->need = (int)(h + 4 - c->head) + (cl ? atoi(cl + 15) : 0);
        }
      }
      c->got += (int)r;
      if (c->need >= 0 && c->got >= c->need) {
        lat[done++] = (now_s() - c->due) * 1000;
        c->busy = 0;
      }
    }
  }
  double took = now_s() - start;
  if (done == 0) {
    printf("rate 0 sent %ld done 0 errors %ld p50 0 p99 0 p999 0\n", sent, errors);
    return 1;
  }
  qsort(lat, (size_t)done, sizeof(double), cmp);
  printf("rate %.0f sent %ld done %ld errors %ld p50 %.3f p99 %.3f p999 %.3f\n",
         (double)done / took, sent, done, errors, lat[(long)(done * 0.50)],
         lat[(long)(done * 0.99)], lat[(long)(done * 0.999)]);
  return 0;
}
