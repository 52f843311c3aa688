// tls_fuzz.c: libFuzzer harness over the TLS record pump of runtime/tlsmod/tls.c (lc_tls_pump,
// lc_tls_write, lc_tls_take_out), the glue between the TCP stream and OpenSSL's memory BIOs.
//
// The input drives an in-process client and server (a throwaway P-256 certificate made at
// start-up): byte 0 picks the mode, the following bytes pick how many of the bytes in flight
// are delivered at each step (1 byte up to everything), so records arrive cut at every
// possible boundary, several per call or one byte per call; the rest is plaintext sent both
// ways, which must arrive intact and in order.
//   mode & 3 == 0: clean exchange; plaintext must match.
//   mode & 3 == 1: one byte of the stream is flipped at an input-chosen offset; the pump
//                  must report an error (or a completed exchange when the flip hit nothing
//                  authenticated), never crash.
//   mode & 3 == 2: the rest of the input is fed to a fresh server as if from a peer
//                  (arbitrary bytes where a ClientHello should be), in input-chosen chunks.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "lc.h"
#include "tls.h"

lua_State *lc_L;
uv_loop_t *lc_loop;

int lc_pcall(lua_State *L, int nargs, int nresults) {
  (void)L;
  (void)nargs;
  (void)nresults;
  abort();
}

void lc_exit(int code) {
  exit(code);
}

static SSL_CTX *server_ctx, *client_ctx;

static void die(const char *what) {
  fprintf(stderr, "tls_fuzz: %s\n", what);
  ERR_print_errors_fp(stderr);
  abort();
}

static void init(void) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  if (key == NULL || x == NULL) die("key");
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz", -1, -1, 0);
  X509_set_issuer_name(x, n);
  if (!X509_sign(x, key, EVP_sha256())) die("sign");
  server_ctx = SSL_CTX_new(TLS_server_method());
  client_ctx = SSL_CTX_new(TLS_client_method());
  if (server_ctx == NULL || client_ctx == NULL) die("ctx");
  if (SSL_CTX_use_certificate(server_ctx, x) != 1 || SSL_CTX_use_PrivateKey(server_ctx, key) != 1)
    die("cert");
  SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
  X509_free(x);
  EVP_PKEY_free(key);
}

typedef struct {
  char *buf;
  size_t len, cap;
} acc_t;

static void sink(void *ud, const char *data, size_t len) {
  acc_t *a = ud;
  if (a->len + len > a->cap) {
    a->cap = (a->len + len) * 2;
    a->buf = realloc(a->buf, a->cap);
    if (a->buf == NULL) abort();
  }
  memcpy(a->buf + a->len, data, len);
  a->len += len;
}

// Bytes in flight from one side to the other.
typedef struct {
  char buf[1 << 16];
  size_t len;
} wire_t;

static void collect(lc_tls_t *from, wire_t *w) {
  while (w->len < sizeof(w->buf)) {
    size_t n = lc_tls_take_out(from, w->buf + w->len, sizeof(w->buf) - w->len);
    if (n == 0) break;
    w->len += n;
  }
}

typedef struct {
  const uint8_t *p;
  size_t n;
} input_t;

static size_t next_step(input_t *in, size_t avail) {
  if (avail == 0) return 0;
  if (in->n == 0) return avail;
  uint8_t b = *in->p++;
  in->n--;
  if (b == 0xff) return avail;
  size_t step = (size_t)b + 1;
  return step < avail ? step : avail;
}

// Delivers what is in flight to `to` in input-chosen pieces; returns the pump bits seen.
static int deliver(lc_tls_t *to, wire_t *w, input_t *in, acc_t *out, long flip_at, long *pos) {
  int seen = 0;
  size_t off = 0;
  while (off < w->len) {
    size_t step = next_step(in, w->len - off);
    if (flip_at >= 0 && *pos <= flip_at && flip_at < *pos + (long)step)
      w->buf[off + (size_t)(flip_at - *pos)] ^= 0x5a;
    *pos += (long)step;
    seen |= lc_tls_pump(to, w->buf + off, step, sink, out);
    off += step;
    if (seen & LC_TLS_ERROR) break;
  }
  w->len = 0;
  return seen;
}

static void exchange(input_t in, int corrupt) {
  lc_tls_t c, s;
  memset(&c, 0, sizeof(c));
  memset(&s, 0, sizeof(s));
  if (lc_tls_init(&c, client_ctx, 0) < 0 || lc_tls_init(&s, server_ctx, 1) < 0) abort();
  long flip_at = -1, pos = 0;
  if (corrupt && in.n >= 2) {
    flip_at = (long)(((size_t)in.p[0] << 8) | in.p[1]) % 4096;
    in.p += 2;
    in.n -= 2;
  }
  // The plaintext: the second half of the input (so chunk choices and data vary apart).
  size_t half = in.n / 2;
  const char *msg = (const char *)in.p + half;
  size_t msg_len = in.n - half;
  in.n = half;
  static wire_t cs, sc;
  cs.len = sc.len = 0;
  acc_t at_server = {0}, at_client = {0};
  int failed = 0, sent = 0;
  lc_tls_pump(&c, NULL, 0, sink, &at_client); // ClientHello
  for (int round = 0; round < 64 && !failed; round++) {
    collect(&c, &cs);
    collect(&s, &sc);
    if (c.done && s.done && !sent) {
      if (lc_tls_write(&c, msg, msg_len) < 0 || lc_tls_write(&s, msg, msg_len) < 0) break;
      sent = 1;
      collect(&c, &cs);
      collect(&s, &sc);
    }
    if (cs.len == 0 && sc.len == 0) break;
    if (deliver(&s, &cs, &in, &at_server, flip_at, &pos) & LC_TLS_ERROR) failed = 1;
    if (deliver(&c, &sc, &in, &at_client, -1, &pos) & LC_TLS_ERROR) failed = 1;
  }
  if (!corrupt) {
    if (failed || !sent) die("a clean exchange failed");
    if (at_server.len != msg_len || at_client.len != msg_len ||
        (msg_len > 0 &&
         (memcmp(at_server.buf, msg, msg_len) != 0 || memcmp(at_client.buf, msg, msg_len) != 0)))
      die("plaintext changed on the way");
  } else if (failed && s.code[0] == '\0' && c.code[0] == '\0') {
    die("an error without a code");
  }
  free(at_server.buf);
  free(at_client.buf);
  lc_tls_free(&c);
  lc_tls_free(&s);
}

static void garbage(input_t in) {
  lc_tls_t s;
  memset(&s, 0, sizeof(s));
  if (lc_tls_init(&s, server_ctx, 1) < 0) abort();
  acc_t out = {0};
  // The first byte of each piece is its size; the bytes after it are the piece.
  while (in.n > 1) {
    size_t step = (size_t)*in.p + 1;
    in.p++;
    in.n--;
    if (step > in.n) step = in.n;
    int r = lc_tls_pump(&s, (const char *)in.p, step, sink, &out);
    in.p += step;
    in.n -= step;
    char tmp[4096];
    while (lc_tls_take_out(&s, tmp, sizeof(tmp)) > 0) {
    }
    if (r & LC_TLS_ERROR) {
      if (s.code[0] == '\0') die("an error without a code");
      // Every later call reports the same failure and does nothing else.
      if (!(lc_tls_pump(&s, "x", 1, sink, &out) & LC_TLS_ERROR)) die("error not sticky");
      break;
    }
  }
  if (out.len != 0) die("plaintext from a peer that never finished a handshake");
  free(out.buf);
  lc_tls_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (server_ctx == NULL) init();
  if (size < 1) return 0;
  input_t in = {data + 1, size - 1};
  switch (data[0] & 3) {
  case 0:
    exchange(in, 0);
    break;
  case 1:
    exchange(in, 1);
    break;
  default:
    garbage(in);
    break;
  }
  ERR_clear_error();
  return 0;
}
