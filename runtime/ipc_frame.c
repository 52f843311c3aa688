// ipc_frame.c: the IPC frame decoder (see ipc_frame.h). Pure: no syscalls besides memory,
// so the fuzz harness exercises exactly the code the channel runs.
#include "ipc_frame.h"

#include <stdlib.h>
#include <string.h>

#define READ_CHUNK (64u * 1024u)      // free space offered for an ordinary read
#define KEEP_CAP (4u * 1024u * 1024u) // an empty buffer larger than this is released
#define FDQ_SIZE (sizeof(((lc_ipc_frame_decoder_t *)0)->fdq) / sizeof(int))

void lc_ipc_frame_header(unsigned char out[LC_IPC_FRAME_HEADER], uint32_t len, int kind, int nfds) {
  out[0] = (unsigned char)(len & 0xff);
  out[1] = (unsigned char)((len >> 8) & 0xff);
  out[2] = (unsigned char)((len >> 16) & 0xff);
  out[3] = (unsigned char)((len >> 24) & 0xff);
  out[4] = (unsigned char)kind;
  out[5] = (unsigned char)nfds;
  out[6] = 0;
  out[7] = 0;
}

void lc_ipc_frame_init(lc_ipc_frame_decoder_t *d) {
  memset(d, 0, sizeof(*d));
}

void lc_ipc_frame_free(lc_ipc_frame_decoder_t *d, void (*close_fd)(int fd)) {
  while (d->fdcount > 0) {
    if (close_fd != NULL) close_fd(d->fdq[d->fdhead]);
    d->fdhead = (d->fdhead + 1) % FDQ_SIZE;
    d->fdcount--;
  }
  free(d->buf);
  d->buf = NULL;
  d->cap = d->start = d->end = 0;
}

// Reads the header at buf[start] (the caller checked 8 bytes are there). Returns 0 or an
// error; *total is the frame's size with its header.
static int parse_header_at(const lc_ipc_frame_decoder_t *d, size_t at, size_t *total, int *kind,
                           int *nfds) {
  const unsigned char *h = (const unsigned char *)d->buf + at;
  uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
  *kind = h[4];
  *nfds = h[5];
  if (*kind < LC_IPC_KIND_USER || *kind > LC_IPC_KIND_MAX) return LC_IPC_FRAME_EKIND;
  if (h[6] != 0 || h[7] != 0) return LC_IPC_FRAME_ERESERVED;
  if (len > LC_IPC_FRAME_MAX_BODY) return LC_IPC_FRAME_ETOOBIG;
  if (*nfds > LC_IPC_FRAME_MAX_FDS) return LC_IPC_FRAME_ETOOMANYFDS;
  *total = (size_t)len + LC_IPC_FRAME_HEADER;
  return 0;
}

static int parse_header(const lc_ipc_frame_decoder_t *d, size_t *total, int *kind, int *nfds) {
  return parse_header_at(d, d->start, total, kind, nfds);
}

int lc_ipc_frame_space(lc_ipc_frame_decoder_t *d, char **p, size_t *len) {
  size_t unread = d->end - d->start;
  if (unread == 0) {
    d->start = d->end = 0;
    if (d->cap > KEEP_CAP) {
      free(d->buf);
      d->buf = NULL;
      d->cap = 0;
    }
  }
  // The capacity wanted from `start`: an ordinary read's worth past what is unread, or, for a
  // frame whose header says it is larger, the whole frame at once (the header was checked
  // against the 256 MiB limit): one allocation of the final size instead of doubling steps,
  // each of which copied what had arrived so far.
  size_t want = unread + READ_CHUNK, big = 0;
  if (unread >= LC_IPC_FRAME_HEADER) {
    size_t total;
    int kind, nfds;
    if (parse_header(d, &total, &kind, &nfds) == 0 && total > want) want = big = total;
  }
  if (d->cap - d->start < want) {
    if (d->start > 0) {
      memmove(d->buf, d->buf + d->start, unread);
      d->start = 0;
      d->end = unread;
    }
    if (d->cap < want) {
      // A large frame's buffer is rounded up, so the next one, a few bytes larger, fits.
      size_t alloc = big != 0 ? (want + READ_CHUNK - 1) / READ_CHUNK * READ_CHUNK : want;
      // One byte more than cap: a consumer may put a NUL after a frame's body (ipc.c).
      char *nb = realloc(d->buf, alloc + 1);
      if (nb == NULL) return LC_IPC_FRAME_ENOMEM;
      d->buf = nb;
      d->cap = alloc;
    }
  }
  *p = d->buf + d->end;
  // A large frame is read up to its last byte and no further (more than READ_CHUNK is left,
  // so the room is never small): the next frame then starts in an empty buffer, and none of
  // its bytes are moved to the front when the large one is done.
  *len = big != 0 ? big - unread : d->cap - d->end;
  return 0;
}

int lc_ipc_frame_commit(lc_ipc_frame_decoder_t *d, size_t n, const int *fds, int nfds,
                        void (*close_fd)(int fd)) {
  d->end += n;
  for (int i = 0; i < nfds; i++) {
    if (d->fdcount == FDQ_SIZE) {
      if (close_fd != NULL) close_fd(fds[i]);
      d->err = LC_IPC_FRAME_ETOOMANYFDS;
      continue;
    }
    d->fdq[(d->fdhead + d->fdcount) % FDQ_SIZE] = fds[i];
    d->fdcount++;
  }
  return d->err;
}

int lc_ipc_frame_lose_fds(lc_ipc_frame_decoder_t *d, size_t n) {
  if (d->err != 0) return d->err;
  size_t from = d->end - n < d->start ? d->start : d->end - n;
  size_t pos = d->start, found = 0;
  int have = 0;
  // Walks the frames in the buffer (start is always at a frame boundary).
  while (pos < d->end) {
    if (d->end - pos < LC_IPC_FRAME_HEADER) {
      // A header cut short by the read: its frame is the only one that can own the fds.
      if (pos >= from) {
        found = pos;
        have = 1;
      }
      break;
    }
    size_t total;
    int kind, nfds;
    if (parse_header_at(d, pos, &total, &kind, &nfds) != 0) break; // next() reports it
    if (pos >= from && nfds > 0) {
      found = pos;
      have = 1;
    }
    pos += total;
  }
  if (!have || d->nlost == (int)(sizeof(d->lost) / sizeof(d->lost[0])) ||
      (d->nlost > 0 && d->lost[d->nlost - 1] >= found - d->start))
    return d->err = LC_IPC_FRAME_ESTRAYFDS;
  d->lost[d->nlost++] = found - d->start;
  return 0;
}

int lc_ipc_frame_next(lc_ipc_frame_decoder_t *d, lc_ipc_frame_t *f) {
  if (d->err != 0) return d->err;
  size_t unread = d->end - d->start;
  if (unread < LC_IPC_FRAME_HEADER) {
    // fds arrive with their frame's first byte: with no byte of a frame there is no owner.
    if (d->fdcount > (unread == 0 ? 0 : LC_IPC_FRAME_MAX_FDS)) d->err = LC_IPC_FRAME_ESTRAYFDS;
    return d->err != 0 ? d->err : LC_IPC_FRAME_MORE;
  }
  size_t total;
  int kind, nfds;
  int rc = parse_header(d, &total, &kind, &nfds);
  if (rc != 0) return d->err = rc;
  int lost = d->nlost > 0 && d->lost[0] == 0;
  if (lost) nfds = 0; // its fds were dropped on the way in: none of the queued ones are its
  if (unread < total) {
    // Every fd queued now came with this frame (the next frame's bytes, and fds, come after
    // all of this one's), so more than it announced is a malformed stream.
    if (d->fdcount > (size_t)nfds) return d->err = LC_IPC_FRAME_ESTRAYFDS;
    return LC_IPC_FRAME_MORE;
  }
  if (d->fdcount < (size_t)nfds) return d->err = LC_IPC_FRAME_EMISSINGFDS;
  for (int i = 0; i < nfds; i++) {
    f->fds[i] = d->fdq[d->fdhead];
    d->fdhead = (d->fdhead + 1) % FDQ_SIZE;
    d->fdcount--;
  }
  f->body = d->buf + d->start + LC_IPC_FRAME_HEADER;
  f->len = (uint32_t)(total - LC_IPC_FRAME_HEADER);
  f->kind = (uint8_t)kind;
  f->nfds = (uint8_t)nfds;
  f->lost_fds = 0;
  if (lost) {
    f->lost_fds = ((const unsigned char *)d->buf)[d->start + 5];
    d->nlost--;
    memmove(d->lost, d->lost + 1, sizeof(d->lost[0]) * (size_t)d->nlost);
  }
  for (int i = 0; i < d->nlost; i++)
    d->lost[i] -= total;
  d->start += total;
  return LC_IPC_FRAME_OK;
}

int lc_ipc_frame_finish(lc_ipc_frame_decoder_t *d) {
  if (d->err != 0) return d->err;
  if (d->end > d->start) return d->err = LC_IPC_FRAME_ETRUNCATED;
  if (d->fdcount > 0) return d->err = LC_IPC_FRAME_ESTRAYFDS;
  return 0;
}

size_t lc_ipc_frame_pending(const lc_ipc_frame_decoder_t *d) {
  return d->end - d->start;
}

const char *lc_ipc_frame_strerror(int err) {
  switch (err) {
  case LC_IPC_FRAME_EKIND:
    return "malformed frame: unknown kind";
  case LC_IPC_FRAME_ERESERVED:
    return "malformed frame: reserved header bytes are not zero";
  case LC_IPC_FRAME_ETOOBIG:
    return "malformed frame: body length over the 256 MiB limit";
  case LC_IPC_FRAME_ETOOMANYFDS:
    return "malformed frame: too many file descriptors";
  case LC_IPC_FRAME_EMISSINGFDS:
    return "malformed frame: fewer file descriptors arrived than the frame announced";
  case LC_IPC_FRAME_ESTRAYFDS:
    return "malformed frame: file descriptors arrived that no frame announced";
  case LC_IPC_FRAME_ETRUNCATED:
    return "truncated frame: the channel closed in the middle of a frame";
  case LC_IPC_FRAME_ENOMEM:
    return "out of memory receiving a frame";
  case LC_IPC_FRAME_ESHMBODY:
    return "malformed frame: a shared-memory frame's body is not a valid reference";
  case LC_IPC_FRAME_ESHMFD:
    return "malformed frame: a shared-memory frame out of place (a reference before its ring, a "
           "second ring, a RESEND not asked for, or file descriptors where none belong)";
  case LC_IPC_FRAME_ESHMRANGE:
    return "malformed frame: a shared-memory frame names a region outside the ring or out of "
           "order";
  case LC_IPC_FRAME_ESHMMAP:
    return "malformed frame: the shared-memory ring is not a sealed memfd of a valid size";
  default:
    return "malformed frame";
  }
}

void lc_ipc_shm_ref_encode(unsigned char out[LC_IPC_SHM_BODY], const lc_ipc_shm_ref_t *r) {
  memset(out, 0, LC_IPC_SHM_BODY);
  out[0] = r->kind;
  out[1] = r->op;
  for (int i = 0; i < 4; i++)
    out[4 + i] = (unsigned char)((r->len >> (8 * i)) & 0xff);
  for (int i = 0; i < 8; i++)
    out[8 + i] = (unsigned char)((r->pos >> (8 * i)) & 0xff);
}

int lc_ipc_shm_parse(const lc_ipc_frame_t *f, int have_ring, lc_ipc_shm_ref_t *r) {
  const unsigned char *b = (const unsigned char *)f->body;
  if (f->len != LC_IPC_SHM_BODY || b[2] != 0 || b[3] != 0) return LC_IPC_FRAME_ESHMBODY;
  r->kind = b[0];
  r->op = b[1];
  r->len = 0;
  for (int i = 3; i >= 0; i--)
    r->len = r->len << 8 | b[4 + i];
  r->pos = 0;
  for (int i = 7; i >= 0; i--)
    r->pos = r->pos << 8 | b[8 + i];
  r->lost = 0;
  if (r->op == LC_IPC_SHM_REF) {
    if (r->kind != LC_IPC_KIND_USER && r->kind != LC_IPC_KIND_INTERNAL &&
        r->kind != LC_IPC_KIND_STRING)
      return LC_IPC_FRAME_ESHMBODY;
    if (r->len > LC_IPC_FRAME_MAX_BODY) return LC_IPC_FRAME_ESHMBODY;
    if (!have_ring || f->nfds != 0 || f->lost_fds != 0) return LC_IPC_FRAME_ESHMFD;
    return 0;
  }
  if ((r->op != LC_IPC_SHM_ATTACH && r->op != LC_IPC_SHM_RESEND) || r->kind != 0 || r->len != 0 ||
      r->pos != 0)
    return LC_IPC_FRAME_ESHMBODY;
  if (r->op == LC_IPC_SHM_RESEND) return f->nfds != 0 || f->lost_fds != 0 ? LC_IPC_FRAME_ESHMFD : 0;
  // One fd, which arrived or which the kernel dropped (this process at its fd limit).
  if (have_ring || f->nfds + f->lost_fds != 1) return LC_IPC_FRAME_ESHMFD;
  r->lost = f->lost_fds == 1;
  return 0;
}

int lc_ipc_shm_locate(const lc_ipc_shm_ref_t *r, size_t size, uint64_t expect, size_t *off) {
  if (size == 0 || r->len >= size || r->pos < expect) return LC_IPC_FRAME_ESHMRANGE;
  size_t at = (size_t)(expect % size);
  // Either right after the last message, or at the start (the sender skips the tail when the
  // message would not fit there, or when the ring is empty).
  if (r->pos != expect && !(at != 0 && r->pos - expect == size - at)) return LC_IPC_FRAME_ESHMRANGE;
  *off = (size_t)(r->pos % size);
  if (*off + (size_t)r->len + 1 > size) return LC_IPC_FRAME_ESHMRANGE;
  return 0;
}
