// ipc_frame.h: the IPC channel's wire format and its decoder, kept free of sockets, libuv and
// Lua so a libFuzzer harness (fuzz/ipc_frame_fuzz.c) can drive it alone.
//
// A frame is an 8-byte header then the body:
//   bytes 0-3  body length, unsigned 32-bit little-endian (at most LC_IPC_FRAME_MAX_BODY)
//   byte  4    kind: LC_IPC_KIND_USER, _INTERNAL, _HANDLE or _STRING (else malformed)
//   byte  5    number of file descriptors the frame carries (at most LC_IPC_FRAME_MAX_FDS)
//   bytes 6-7  reserved, zero
// A frame's fds travel as SCM_RIGHTS with the sendmsg that carries its first byte, so they
// reach the receiver no later than the header. The decoder queues received fds in arrival
// order and hands each complete frame exactly the number its header names.
//
// A receiver at its own fd limit gets a frame's bytes but not (all of) its fds: the kernel
// sets MSG_CTRUNC and drops what did not fit. The channel closes whatever fds did arrive and
// calls lc_ipc_frame_lose_fds; that frame is then delivered with nfds = 0 and lost_fds set,
// so the stream stays in step and the owner can tell the sender (the master's hand-off takes
// such connections back).
#pragma once

#include <stddef.h>
#include <stdint.h>

#define LC_IPC_FRAME_HEADER 8
#define LC_IPC_FRAME_MAX_BODY (256u * 1024u * 1024u)
#define LC_IPC_FRAME_MAX_FDS 16

/// Frame kinds. A user message is never taken for an internal one: the kind byte, not the
/// body, says which it is.
enum {
  LC_IPC_KIND_USER = 1,     // body: the user's message (JSON)
  LC_IPC_KIND_INTERNAL = 2, // body: a runtime message (JSON object with a `cmd`)
  LC_IPC_KIND_HANDLE = 3,   // body: [handle description, user message]; carries fds
  LC_IPC_KIND_STRING = 4,   // body: a user message that is a string, as its raw bytes (no
                            // JSON escaping or parsing for the commonest large payload)
  LC_IPC_KIND_SHM = 5,      // body: an lc_ipc_shm_ref_t: a message of one of the kinds above
                            // (not HANDLE) that lies in the sender's shared-memory ring; the
                            // first one carries the ring's memfd (one fd), later ones none
  LC_IPC_KIND_MAX = 5,
};

/// Results of lc_ipc_frame_next and errors of the decoder. Errors are sticky: once the
/// stream is malformed, every later call returns the same error.
enum {
  LC_IPC_FRAME_OK = 1,
  LC_IPC_FRAME_MORE = 0,
  LC_IPC_FRAME_EKIND = -1,
  LC_IPC_FRAME_ERESERVED = -2,
  LC_IPC_FRAME_ETOOBIG = -3,
  LC_IPC_FRAME_ETOOMANYFDS = -4,
  LC_IPC_FRAME_EMISSINGFDS = -5,
  LC_IPC_FRAME_ESTRAYFDS = -6,
  LC_IPC_FRAME_ETRUNCATED = -7,
  LC_IPC_FRAME_ENOMEM = -8,
  LC_IPC_FRAME_ESHMBODY = -9,   // a shared-memory frame whose body is not a valid reference
  LC_IPC_FRAME_ESHMFD = -10,    // ... out of place: a reference before the ring, a second ring,
                                // a RESEND not asked for, fds
  LC_IPC_FRAME_ESHMRANGE = -11, // ... naming a region outside the ring or out of FIFO order
  LC_IPC_FRAME_ESHMMAP = -12,   // the fd is not a sealed memfd of a valid size
};

/// One decoded frame. `body` points into the decoder's buffer and stays valid until the next
/// lc_ipc_frame_space or lc_ipc_frame_commit call; `fds` now belong to the caller. The byte
/// after the body is in the buffer too (the buffer has one spare byte past `cap`): a caller
/// may change it while it uses the body, and restore it before the decoder's next call.
typedef struct {
  const char *body;
  uint32_t len;
  uint8_t kind;
  uint8_t nfds;
  uint8_t lost_fds; // fds the header announced that the kernel dropped (nfds is then 0)
  int fds[LC_IPC_FRAME_MAX_FDS];
} lc_ipc_frame_t;

/// A receiving buffer and fd queue. Once a frame's header is in, the buffer is made large
/// enough for the whole frame in one step (the header says its size) and, for a frame larger
/// than an ordinary read, the read is offered exactly the rest of it, so its bytes are copied
/// once (kernel to buffer) and the next frame starts in an empty buffer. It is compacted only
/// when room is needed; after a large frame (over 4 MiB) it is released.
typedef struct {
  char *buf;
  size_t cap, start, end; // unread bytes are buf[start, end)
  int fdq[4 * LC_IPC_FRAME_MAX_FDS];
  size_t fdhead, fdcount; // a ring over fdq
  size_t lost[4];         // offsets from `start` of frames whose fds were dropped
  int nlost;
  int err;
} lc_ipc_frame_decoder_t;

/// Writes the 8-byte header of a frame into `out`.
void lc_ipc_frame_header(unsigned char out[LC_IPC_FRAME_HEADER], uint32_t len, int kind, int nfds);
/// Initialises an empty decoder (no allocation yet).
void lc_ipc_frame_init(lc_ipc_frame_decoder_t *d);
/// Frees the buffer; queued fds are passed to close_fd when it is not NULL.
void lc_ipc_frame_free(lc_ipc_frame_decoder_t *d, void (*close_fd)(int fd));
/// Makes room for the next read: sets *p and *len (len >= 4096) to free space at the end of
/// the buffer; while a frame lacks more than 64 KiB, exactly the bytes it lacks. Returns 0
/// or LC_IPC_FRAME_ENOMEM.
int lc_ipc_frame_space(lc_ipc_frame_decoder_t *d, char **p, size_t *len);
/// Records that n bytes were read into the space and that `nfds` fds arrived with them
/// (taken by the decoder). Returns 0 or an error (too many fds queued; the fds that did not
/// fit are passed to close_fd when it is not NULL).
int lc_ipc_frame_commit(lc_ipc_frame_decoder_t *d, size_t n, const int *fds, int nfds,
                        void (*close_fd)(int fd));
/// After committing the n bytes of a read whose fds the kernel truncated (MSG_CTRUNC; the
/// channel closed those that arrived and committed none): marks the frame they belonged to,
/// the last one announcing fds whose header starts in those n bytes (a sender's fds ride
/// with the first byte of their frame, and the kernel ends a read after a message carrying
/// fds). Returns 0 or an error when no frame can own them (sticky, as for the others).
int lc_ipc_frame_lose_fds(lc_ipc_frame_decoder_t *d, size_t n);
/// Decodes the next complete frame into *f: LC_IPC_FRAME_OK, LC_IPC_FRAME_MORE when more
/// bytes are needed, or a negative error.
int lc_ipc_frame_next(lc_ipc_frame_decoder_t *d, lc_ipc_frame_t *f);
/// At end of stream: 0 when nothing is left over, else LC_IPC_FRAME_ETRUNCATED (part of a
/// frame) or LC_IPC_FRAME_ESTRAYFDS (fds no frame claimed).
int lc_ipc_frame_finish(lc_ipc_frame_decoder_t *d);
/// Bytes of a partly received frame (0 when the buffer holds none).
size_t lc_ipc_frame_pending(const lc_ipc_frame_decoder_t *d);
/// A sentence describing a decoder error.
const char *lc_ipc_frame_strerror(int err);

// ---- Large messages through shared memory (docs/architecture.md, IPC) ----
//
// A sender puts a large message in a ring it shares with the receiver (a memfd mapped by
// both) and sends a small LC_IPC_KIND_SHM frame on the socket that names it, so the socket
// still orders every message. The memfd is LC_IPC_SHM_HEADER bytes of header (a u64 at
// offset 0: the ring position up to which the receiver has consumed, stored by the receiver
// with release semantics; a u32 at offset 8: nonzero once the receiver has mapped the ring)
// then the data area, its size the file's size minus the header. A message at position pos
// (a byte count that only grows) lies at pos % size, contiguous, with one spare byte after
// it (the decoder puts a NUL there); a message may instead start at the beginning of the
// area (the sender does so when it would not fit before the end, or when the ring is
// empty), the skipped tail counting as consumed.
//
// An LC_IPC_KIND_SHM frame is one of three (its op byte):
//   REF     names a message in the ring; no fds; only after the ring was attached.
//   ATTACH  brings the ring's memfd (one fd); kind, len and pos zero. The sender uses the
//           ring only once the receiver says in the header that it mapped it, so an ATTACH
//           whose fd the kernel dropped (the receiver at its fd limit, MSG_CTRUNC) loses
//           nothing: the receiver answers with a RESEND and the sender attaches again with
//           a later large message, which meanwhile go by the socket.
//   RESEND  (receiver to sender, on the same channel) the ATTACH's fd was dropped; no fds.
#define LC_IPC_SHM_HEADER 4096u
#define LC_IPC_SHM_BODY 16                // u8 kind, u8 op, 2 zero bytes, u32 len, u64 pos (LE)
#define LC_IPC_SHM_MIN_SIZE (64u * 1024u) // the receiver's bounds on a ring's data size
#define LC_IPC_SHM_MAX_SIZE (256u * 1024u * 1024u)

enum { LC_IPC_SHM_REF = 0, LC_IPC_SHM_ATTACH = 1, LC_IPC_SHM_RESEND = 2 };

typedef struct {
  uint64_t pos; // the message's ring position
  uint32_t len; // its length; one spare byte follows it in the ring
  uint8_t kind; // its own kind: LC_IPC_KIND_USER, _INTERNAL or _STRING (0 for ATTACH, RESEND)
  uint8_t op;   // LC_IPC_SHM_REF, _ATTACH or _RESEND
  uint8_t lost; // ATTACH: its fd was dropped on arrival
} lc_ipc_shm_ref_t;

/// Writes the body of an LC_IPC_KIND_SHM frame.
void lc_ipc_shm_ref_encode(unsigned char out[LC_IPC_SHM_BODY], const lc_ipc_shm_ref_t *r);
/// Reads the LC_IPC_KIND_SHM frame f into *r, given whether the receiver has mapped the
/// sender's ring yet: a REF must come after the ring and carry no fd, an ATTACH only before
/// it with exactly one fd (arrived, or dropped: r->lost), a RESEND with none.
/// Returns 0, LC_IPC_FRAME_ESHMBODY or LC_IPC_FRAME_ESHMFD.
int lc_ipc_shm_parse(const lc_ipc_frame_t *f, int have_ring, lc_ipc_shm_ref_t *r);
/// Places *r in a ring of `size` data bytes whose messages up to position `expect` were taken:
/// the next message starts at expect or at the area's start, and lies before its end. Sets
/// *off to its offset in the area. Returns 0 or LC_IPC_FRAME_ESHMRANGE.
int lc_ipc_shm_locate(const lc_ipc_shm_ref_t *r, size_t size, uint64_t expect, size_t *off);
