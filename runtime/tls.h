// tls.h: the TLS record pump of tls.c without Lua, so the fuzz harness drives the same code
// the runtime does. One lc_tls_t is one TLS connection over two memory BIOs: ciphertext read
// from the network goes in with lc_tls_pump, plaintext comes out through a sink, and the
// records OpenSSL wants sent wait in the outgoing BIO until lc_tls_take_out drains them.
#pragma once

#include <stddef.h>

#include <openssl/ssl.h>

/// What a pump call observed (a bit set).
enum {
  LC_TLS_HANDSHAKE = 1, // the handshake completed during this call
  LC_TLS_CLOSED = 2,    // the peer sent close_notify: no more plaintext will come
  LC_TLS_ERROR = 4,     // fatal: code and message are in the lc_tls_t; send what is out, close
  LC_TLS_WANT_SNI = 8,  // server: the handshake waits for an SNI answer (lc_tls_sni_done)
};

typedef struct lc_tls {
  SSL *ssl;
  BIO *in;  // ciphertext from the peer, written by lc_tls_pump, read by OpenSSL
  BIO *out; // ciphertext for the peer, written by OpenSSL, drained by lc_tls_take_out
  int server;
  int done;      // handshake completed
  int closed;    // close_notify received
  int failed;    // a fatal error was reported; every later pump reports it again
  int sni_state; // 0: no SNI hook, 1: waiting for the answer, 2: answered
  char code[96];
  char message[256];
} lc_tls_t;

/// Receives plaintext; `ud` is lc_tls_pump's.
typedef void (*lc_tls_sink)(void *ud, const char *data, size_t len);

/// Sets up `t` (zeroed by the caller) for a connection on `ctx`. Returns 0, or -1 when out
/// of memory (t is then left empty and lc_tls_free is still safe).
int lc_tls_init(lc_tls_t *t, SSL_CTX *ctx, int server);
/// Releases the SSL and its BIOs. Safe on a zeroed or already freed lc_tls_t.
void lc_tls_free(lc_tls_t *t);
/// Appends `len` bytes of ciphertext (any chunking: a record may span calls), advances the
/// handshake, and passes every plaintext byte that became readable to sink. Returns the
/// LC_TLS_* bits. After LC_TLS_ERROR, t->code is a Node-style code
/// ("ERR_SSL_WRONG_VERSION_NUMBER") and t->message says what happened.
int lc_tls_pump(lc_tls_t *t, const char *data, size_t len, lc_tls_sink sink, void *ud);
/// Encrypts `len` bytes of plaintext into the outgoing BIO. Returns 0, or -1 with t->code set
/// (before the handshake completed, or after a fatal error).
int lc_tls_write(lc_tls_t *t, const char *data, size_t len);
/// Queues close_notify into the outgoing BIO.
void lc_tls_shutdown(lc_tls_t *t);
/// Bytes waiting in the outgoing BIO.
size_t lc_tls_out_pending(lc_tls_t *t);
/// Moves up to `cap` outgoing bytes into buf; returns the count.
size_t lc_tls_take_out(lc_tls_t *t, char *buf, size_t cap);
