// ipc_frame_fuzz.c: drives the IPC frame decoder (runtime/ipc_frame.c) as the channel does:
// bytes arrive in reads of varying sizes, some reads bring fds, and complete frames are taken
// after each read; some reads lose their fds (MSG_CTRUNC, lc_ipc_frame_lose_fds). The first
// two input bytes choose the read sizes and fd arrivals; the rest is the stream. Checks that every
// frame lies inside the bytes received, that fds are handed out exactly once and in order, and that
// the decoder never reads past what it was given. Shared-memory references (LC_IPC_KIND_SHM) go
// through lc_ipc_shm_parse and lc_ipc_shm_locate as the channel's receiver takes them, against a
// fake ring (a heap buffer the size the seed picks, "mapped" at an ATTACH whose fd arrived):
// every region they accept is read whole, so one outside the ring is a heap overflow.
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int open_fds; // fake fds handed to the decoder and not yet taken or closed

static void fake_close(int fd) {
  assert(fd >= 1000);
  open_fds--;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  unsigned seed = (unsigned)data[0] | (unsigned)data[1] << 8;
  data += 2;
  size -= 2;
  lc_ipc_frame_decoder_t d;
  lc_ipc_frame_init(&d);
  open_fds = 0;
  int next_fd = 1000, expect_fd = 1000;
  size_t off = 0, consumed = 0;
  int err = 0;
  // The receiver's ring state (runtime/ipc.c, shm_recv).
  char *ring = NULL;
  size_t ring_size = 0;
  uint64_t expect = 0;
  while (off < size && err == 0) {
    char *p;
    size_t room;
    if (lc_ipc_frame_space(&d, &p, &room) != 0) break;
    assert(room >= 4096);
    seed = seed * 1103515245u + 12345u;
    size_t n = 1 + (seed >> 8) % 9000; // reads from 1 byte to a few pages
    if (n > room) n = room;
    if (n > size - off) n = size - off;
    memcpy(p, data + off, n);
    off += n;
    int fds[3];
    int nfds = (int)((seed >> 20) % 4 == 0 ? (seed >> 24) % 3 : 0);
    // Some reads that bring fds are truncated (MSG_CTRUNC): none are committed and the
    // decoder is told which frame lost them.
    int truncated = nfds > 0 && (seed >> 28) % 4 == 0;
    if (truncated) nfds = 0;
    for (int i = 0; i < nfds; i++)
      fds[i] = next_fd++;
    open_fds += nfds;
    err = lc_ipc_frame_commit(&d, n, fds, nfds, fake_close);
    if (err == 0 && truncated) err = lc_ipc_frame_lose_fds(&d, n);
    lc_ipc_frame_t f;
    int rc;
    while (err == 0 && (rc = lc_ipc_frame_next(&d, &f)) == LC_IPC_FRAME_OK) {
      assert(f.kind >= LC_IPC_KIND_USER && f.kind <= LC_IPC_KIND_MAX);
      assert(f.nfds <= LC_IPC_FRAME_MAX_FDS);
      assert(f.lost_fds == 0 || f.nfds == 0);
      assert(f.len <= LC_IPC_FRAME_MAX_BODY);
      consumed += LC_IPC_FRAME_HEADER + f.len;
      assert(consumed <= off);
      // The body is the stream's bytes at that place.
      assert(memcmp(f.body, data + consumed - f.len, f.len) == 0);
      for (int i = 0; i < f.nfds; i++) {
        assert(f.fds[i] == expect_fd);
        expect_fd++;
        open_fds--;
      }
      if (f.kind == LC_IPC_KIND_SHM) {
        lc_ipc_shm_ref_t r;
        err = lc_ipc_shm_parse(&f, ring != NULL, &r);
        if (err == 0 && r.op != LC_IPC_SHM_REF) {
          assert(r.kind == 0 && r.len == 0 && r.pos == 0);
          assert(r.op == LC_IPC_SHM_ATTACH || r.op == LC_IPC_SHM_RESEND);
          if (r.op == LC_IPC_SHM_ATTACH && !r.lost) {
            // "Maps" the ring the fd names: 64 KiB to 512 KiB of data.
            assert(ring == NULL && f.nfds == 1);
            ring_size = (size_t)LC_IPC_SHM_MIN_SIZE << (seed >> 12) % 4;
            ring = malloc(ring_size);
            assert(ring != NULL);
            memset(ring, 'x', ring_size);
          } else {
            assert(f.nfds == 0);
          }
          continue;
        }
        size_t at;
        if (err == 0) {
          assert(ring != NULL && f.nfds == 0 && f.lost_fds == 0);
          err = lc_ipc_shm_locate(&r, ring_size, expect, &at);
        }
        if (err != 0) {
          assert(err == LC_IPC_FRAME_ESHMBODY || err == LC_IPC_FRAME_ESHMFD ||
                 err == LC_IPC_FRAME_ESHMRANGE);
          break;
        }
        assert(r.kind == LC_IPC_KIND_USER || r.kind == LC_IPC_KIND_INTERNAL ||
               r.kind == LC_IPC_KIND_STRING);
        assert(r.pos >= expect && at + r.len + 1 <= ring_size);
        // The message and its spare byte, read whole (ASan: inside the buffer).
        assert(memchr(ring + at, 0, r.len + 1) == NULL);
        expect = r.pos + r.len + 1;
      }
    }
    if (err == 0 && rc < 0) err = rc;
  }
  if (err == 0) {
    int rc = lc_ipc_frame_finish(&d);
    assert(rc == 0 || rc == LC_IPC_FRAME_ETRUNCATED || rc == LC_IPC_FRAME_ESTRAYFDS);
    assert((rc == 0) == (lc_ipc_frame_pending(&d) == 0 && open_fds == 0));
  }
  assert(lc_ipc_frame_strerror(err) != NULL);
  lc_ipc_frame_free(&d, fake_close);
  free(ring);
  assert(open_fds == 0);
  return 0;
}
