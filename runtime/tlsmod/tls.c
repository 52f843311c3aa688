// tls.c: TLS on OpenSSL over memory BIOs, for lualib/net/tls.lua. Nothing here touches a socket:
// tls.lua reads ciphertext from the runtime's own TCP stream, feeds it in
// (`conn:feed(bytes)` -> records to send, plaintext, what happened), and writes what comes
// out, so the handshake and every record are driven by the event loop's read callbacks and
// no call blocks (the design Node's TLSWrap and luvit's tls use).
//
// This file and a static OpenSSL make a shared object of their own (the lctls target), which
// the binary embeds and opens the first time a script requires tls (runtime/tls_load.c), so
// a process that never uses TLS maps, relocates and pages in none of OpenSSL.
// lc_tls_module_open returns the module's table (tls.lua's `tc`):
// tc.tls_context(opts) -> ctx        an SSL_CTX (certificate, key, CA store, ALPN, ...)
// tc.tls_new(ctx, server [, host])   -> conn, one connection; a client's host gives SNI
//                                       and the name (or IP) its certificate must match
// tc.tls_random(n) -> n random bytes
//
// The pump itself (lc_tls_pump and friends, tls.h) has no Lua in it, so fuzz/tls_fuzz.c runs
// the same code on arbitrary chunkings of a TLS byte stream.
#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "lc.h"
#include "tls.h"

#define CTX_MT "lc.tls_ctx"
#define CONN_MT "lc.tls"

// ---- the pump (no Lua) ----

// "wrong version number" in SSL routines -> ERR_SSL_WRONG_VERSION_NUMBER, as Node names
// OpenSSL's reasons; other libraries -> ERR_OSSL_<LIB>_<REASON> (ERR_OSSL_PEM_NO_START_LINE).
static void code_from(unsigned long e, char *code, size_t cap) {
  const char *reason = ERR_reason_error_string(e);
  const char *lib = ERR_lib_error_string(e);
  char libw[32] = "SSL";
  if (ERR_GET_LIB(e) != ERR_LIB_SSL && lib != NULL) {
    size_t i = 0;
    for (; lib[i] != '\0' && lib[i] != ' ' && i < sizeof(libw) - 1; i++)
      libw[i] = (char)toupper((unsigned char)lib[i]);
    libw[i] = '\0';
  }
  int n = snprintf(code, cap, "%s%s_", ERR_GET_LIB(e) == ERR_LIB_SSL ? "ERR_" : "ERR_OSSL_", libw);
  if (n < 0 || (size_t)n >= cap) return;
  if (reason == NULL) {
    snprintf(code + n, cap - (size_t)n, "%lu", (unsigned long)ERR_GET_REASON(e));
    return;
  }
  for (size_t i = 0; reason[i] != '\0' && (size_t)n < cap - 1; i++, n++)
    code[n] = isalnum((unsigned char)reason[i]) ? (char)toupper((unsigned char)reason[i]) : '_';
  code[n] = '\0';
}

// Records the reason of a fatal failure (the OpenSSL error queue's last entry) and clears
// the queue, so one connection's error never shows up on another.
static void fail(lc_tls_t *t, int sslerr) {
  unsigned long e = ERR_peek_last_error();
  t->failed = 1;
  if (e != 0) {
    code_from(e, t->code, sizeof(t->code));
    const char *reason = ERR_reason_error_string(e);
    snprintf(t->message, sizeof(t->message), "%s", reason ? reason : "TLS error");
  } else {
    snprintf(t->code, sizeof(t->code), "ERR_SSL_PROTOCOL_ERROR");
    snprintf(t->message, sizeof(t->message), "TLS failure (SSL_get_error %d)", sslerr);
  }
  ERR_clear_error();
}

int lc_tls_init(lc_tls_t *t, SSL_CTX *ctx, int server) {
  t->server = server;
  t->ssl = SSL_new(ctx);
  t->in = BIO_new(BIO_s_mem());
  t->out = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->in == NULL || t->out == NULL) {
    BIO_free(t->in);
    BIO_free(t->out);
    SSL_free(t->ssl);
    t->ssl = NULL;
    t->in = t->out = NULL;
    return -1;
  }
  // An empty input BIO means "wait for more", never end of file: EOF comes from the TCP
  // stream and is reported by tls.lua.
  BIO_set_mem_eof_return(t->in, -1);
  BIO_set_mem_eof_return(t->out, -1);
  SSL_set_bio(t->ssl, t->in, t->out); // the SSL owns both BIOs from here on
  SSL_set_app_data(t->ssl, t);
  if (server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
  }
  return 0;
}

void lc_tls_free(lc_tls_t *t) {
  if (t->ssl != NULL) SSL_free(t->ssl);
  t->ssl = NULL;
  t->in = t->out = NULL;
}

int lc_tls_pump(lc_tls_t *t, const char *data, size_t len, lc_tls_sink sink, void *ud) {
  int r = 0;
  if (t->failed || t->ssl == NULL) return LC_TLS_ERROR;
  while (len > 0) {
    int chunk = len > INT_MAX ? INT_MAX : (int)len;
    if (BIO_write(t->in, data, chunk) != chunk) {
      snprintf(t->code, sizeof(t->code), "ENOMEM");
      snprintf(t->message, sizeof(t->message), "out of memory buffering TLS input");
      t->failed = 1;
      return LC_TLS_ERROR;
    }
    data += chunk;
    len -= (size_t)chunk;
  }
  if (!t->done) {
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc != 1) {
      int e = SSL_get_error(t->ssl, rc);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return r;
      if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB) return r | LC_TLS_WANT_SNI;
      fail(t, e);
      return r | LC_TLS_ERROR;
    }
    t->done = 1;
    r |= LC_TLS_HANDSHAKE;
  }
  if (t->closed) return r;
  char buf[16384];
  for (;;) {
    ERR_clear_error();
    int n = SSL_read(t->ssl, buf, (int)sizeof(buf));
    if (n > 0) {
      sink(ud, buf, (size_t)n);
      continue;
    }
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      t->closed = 1;
      r |= LC_TLS_CLOSED;
      break;
    }
    fail(t, e);
    r |= LC_TLS_ERROR;
    break;
  }
  return r;
}

int lc_tls_write(lc_tls_t *t, const char *data, size_t len) {
  if (t->ssl == NULL || t->failed || !t->done) {
    if (!t->failed) {
      snprintf(t->code, sizeof(t->code), "ERR_TLS_NOT_READY");
      snprintf(t->message, sizeof(t->message), "write before the TLS handshake completed");
    }
    return -1;
  }
  ERR_clear_error();
  while (len > 0) {
    int chunk = len > (1 << 30) ? (1 << 30) : (int)len;
    int n = SSL_write(t->ssl, data, chunk);
    if (n <= 0) {
      fail(t, SSL_get_error(t->ssl, n));
      return -1;
    }
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

void lc_tls_shutdown(lc_tls_t *t) {
  if (t->ssl == NULL || t->failed || !t->done) return;
  ERR_clear_error();
  // One call queues our close_notify; we do not wait for the peer's (Node does not either).
  (void)SSL_shutdown(t->ssl);
  ERR_clear_error();
}

size_t lc_tls_out_pending(lc_tls_t *t) {
  return t->out == NULL ? 0 : (size_t)BIO_ctrl_pending(t->out);
}

size_t lc_tls_take_out(lc_tls_t *t, char *buf, size_t cap) {
  if (t->out == NULL || cap == 0) return 0;
  int n = BIO_read(t->out, buf, cap > INT_MAX ? INT_MAX : (int)cap);
  return n > 0 ? (size_t)n : 0;
}

// ---- contexts ----

typedef struct {
  SSL_CTX *ctx;
  unsigned char *alpn; // server: the wire-format list we choose from (NULL: no ALPN)
  unsigned int alpn_len;
} tls_ctx_t;

static int push_ossl_err(lua_State *L, const char *what) {
  unsigned long e = ERR_peek_last_error();
  char code[96] = "ERR_TLS_INVALID_CONTEXT";
  if (e != 0) code_from(e, code, sizeof(code));
  const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s: %s", code, what, reason ? reason : "invalid");
  lua_pushstring(L, code);
  return 3;
}

// Node's names for certificate verification failures (X509_V_ERR_*), the `code` of the
// 'error' a client gets and the socket's authorizationError.
static const char *verify_name(long v) {
  switch (v) {
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    return "UNABLE_TO_GET_ISSUER_CERT";
  case X509_V_ERR_UNABLE_TO_GET_CRL:
    return "UNABLE_TO_GET_CRL";
  case X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE:
    return "UNABLE_TO_DECRYPT_CERT_SIGNATURE";
  case X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY:
    return "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY";
  case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    return "CERT_SIGNATURE_FAILURE";
  case X509_V_ERR_CERT_NOT_YET_VALID:
    return "CERT_NOT_YET_VALID";
  case X509_V_ERR_CERT_HAS_EXPIRED:
    return "CERT_HAS_EXPIRED";
  case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
    return "ERROR_IN_CERT_NOT_BEFORE_FIELD";
  case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
    return "ERROR_IN_CERT_NOT_AFTER_FIELD";
  case X509_V_ERR_OUT_OF_MEM:
    return "OUT_OF_MEM";
  case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    return "DEPTH_ZERO_SELF_SIGNED_CERT";
  case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    return "SELF_SIGNED_CERT_IN_CHAIN";
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    return "UNABLE_TO_GET_ISSUER_CERT_LOCALLY";
  case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    return "UNABLE_TO_VERIFY_LEAF_SIGNATURE";
  case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    return "CERT_CHAIN_TOO_LONG";
  case X509_V_ERR_CERT_REVOKED:
    return "CERT_REVOKED";
  case X509_V_ERR_INVALID_CA:
    return "INVALID_CA";
  case X509_V_ERR_PATH_LENGTH_EXCEEDED:
    return "PATH_LENGTH_EXCEEDED";
  case X509_V_ERR_INVALID_PURPOSE:
    return "INVALID_PURPOSE";
  case X509_V_ERR_CERT_UNTRUSTED:
    return "CERT_UNTRUSTED";
  case X509_V_ERR_CERT_REJECTED:
    return "CERT_REJECTED";
  case X509_V_ERR_HOSTNAME_MISMATCH:
  case X509_V_ERR_IP_ADDRESS_MISMATCH:
    return "ERR_TLS_CERT_ALTNAME_INVALID";
  default:
    return NULL;
  }
}

// Loads every certificate of a PEM string: the first into *first (when first != NULL), the
// others (or all) passed to add(). Returns the count, -1 on a parse error.
static int load_certs(const char *pem, size_t len, X509 **first, void *ud,
                      int (*add)(void *ud, X509 *x)) {
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  if (b == NULL) return -1;
  int n = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL)) != NULL) {
    if (n == 0 && first != NULL) {
      *first = x;
    } else if (!add(ud, x)) {
      X509_free(x);
      BIO_free(b);
      return -1;
    }
    n++;
  }
  BIO_free(b);
  // The loop ends on "no start line" after the last certificate: not an error.
  unsigned long e = ERR_peek_last_error();
  if (e != 0 && ERR_GET_REASON(e) == PEM_R_NO_START_LINE && n > 0) ERR_clear_error();
  return n == 0 ? -1 : n;
}

static int add_chain(void *ud, X509 *x) {
  return SSL_CTX_add0_chain_cert(ud, x) == 1; // takes ownership on success
}

static int add_store(void *ud, X509 *x) {
  int ok = X509_STORE_add_cert(ud, x) == 1;
  X509_free(x); // the store keeps its own reference
  return ok;
}

static int alpn_select(SSL *s, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)s;
  tls_ctx_t *c = arg;
  unsigned char *o = NULL;
  if (SSL_select_next_proto(&o, outlen, c->alpn, c->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK; // no protocol in common: go on without ALPN
  *out = o;
  return SSL_TLSEXT_ERR_OK;
}

// A server whose Lua side answers SNI (SNICallback): the handshake pauses at the
// ClientHello (SSL_CLIENT_HELLO_RETRY) until tls.lua calls conn:sni_done([ctx]); no Lua is
// called from inside OpenSSL.
static int client_hello_cb(SSL *s, int *al, void *arg) {
  (void)al;
  (void)arg;
  lc_tls_t *t = SSL_get_app_data(s);
  if (t == NULL || t->sni_state == 2) return SSL_CLIENT_HELLO_SUCCESS;
  const unsigned char *p;
  size_t len;
  if (!SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) || len < 5)
    return SSL_CLIENT_HELLO_SUCCESS; // no SNI: the default context serves
  size_t list = ((size_t)p[0] << 8) | p[1];
  size_t nlen = ((size_t)p[3] << 8) | p[4];
  if (list + 2 != len || p[2] != TLSEXT_NAMETYPE_host_name || nlen + 5 > len || nlen == 0)
    return SSL_CLIENT_HELLO_SUCCESS;
  t->sni_state = 1;
  return SSL_CLIENT_HELLO_RETRY;
}

static int verify_accept(int ok, X509_STORE_CTX *x) {
  (void)ok;
  (void)x;
  return 1; // finish the handshake; tls.lua decides from the verify result (Node's way)
}

static const char *opt_string(lua_State *L, int idx, const char *k, size_t *len) {
  lua_getfield(L, idx, k);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
  lua_pop(L, 1); // the string stays alive in the options table
  return s;
}

static int opt_bool(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  int b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}

static int proto_version(const char *v) {
  if (v == NULL) return 0;
  if (strcmp(v, "TLSv1.2") == 0) return TLS1_2_VERSION;
  if (strcmp(v, "TLSv1.3") == 0) return TLS1_3_VERSION;
  if (strcmp(v, "TLSv1.1") == 0) return TLS1_1_VERSION;
  if (strcmp(v, "TLSv1") == 0) return TLS1_VERSION;
  return -1;
}

// _core.tls_context({server=, key=, cert=, ca= (string or list), requestCert=, alpn= (list),
//   ticketKeys= (80 bytes), sni=, ciphers=, minVersion=, maxVersion=, sessionTimeout=})
//   -> ctx | nil, err, code. PEM strings, not paths. Without ca, a client trusts the
// system's store; with ca, only those certificates.
static int tls_context(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int server = opt_bool(L, 1, "server");
  tls_ctx_t *c = lua_newuserdata(L, sizeof(*c)); // [opts, ctx]
  memset(c, 0, sizeof(*c));
  luaL_getmetatable(L, CTX_MT);
  lua_setmetatable(L, -2);
  ERR_clear_error();
  c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (c->ctx == NULL) return push_ossl_err(L, "SSL_CTX_new");
  SSL_CTX *ctx = c->ctx;
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               (server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
  size_t len;
  int minv = proto_version(opt_string(L, 1, "minVersion", &len));
  int maxv = proto_version(opt_string(L, 1, "maxVersion", &len));
  if (minv < 0 || maxv < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "ERR_TLS_INVALID_PROTOCOL_VERSION: use 'TLSv1.2' or 'TLSv1.3'");
    lua_pushliteral(L, "ERR_TLS_INVALID_PROTOCOL_VERSION");
    return 3;
  }
  SSL_CTX_set_min_proto_version(ctx, minv ? minv : TLS1_2_VERSION);
  if (maxv) SSL_CTX_set_max_proto_version(ctx, maxv);
  const char *s = opt_string(L, 1, "ciphers", &len);
  if (s != NULL && SSL_CTX_set_cipher_list(ctx, s) != 1) return push_ossl_err(L, "ciphers");
  s = opt_string(L, 1, "cert", &len);
  if (s != NULL) {
    X509 *leaf = NULL;
    if (load_certs(s, len, &leaf, ctx, add_chain) < 0) {
      if (leaf) X509_free(leaf);
      return push_ossl_err(L, "cert");
    }
    int ok = SSL_CTX_use_certificate(ctx, leaf) == 1;
    X509_free(leaf);
    if (!ok) return push_ossl_err(L, "cert");
  }
  s = opt_string(L, 1, "key", &len);
  if (s != NULL) {
    BIO *b = BIO_new_mem_buf(s, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (k == NULL) return push_ossl_err(L, "key");
    int ok = SSL_CTX_use_PrivateKey(ctx, k) == 1;
    EVP_PKEY_free(k);
    if (!ok || SSL_CTX_check_private_key(ctx) != 1) return push_ossl_err(L, "key");
  }
  // The trust store: the given CAs (a string with one or more PEM certificates, or a list of
  // them), else the system's for a client.
  lua_getfield(L, 1, "ca"); // [opts, ctx, ca]
  if (lua_type(L, -1) == LUA_TSTRING || lua_istable(L, -1)) {
    X509_STORE *store = X509_STORE_new();
    if (store == NULL) return push_ossl_err(L, "ca");
    SSL_CTX_set_cert_store(ctx, store); // ctx owns it
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 1;
    for (int i = 1; i <= n; i++) {
      if (lua_istable(L, -1)) {
        lua_rawgeti(L, -1, i);
      } else {
        lua_pushvalue(L, -1);
      } // [opts, ctx, ca, pem]
      const char *pem = lua_tolstring(L, -1, &len);
      if (pem == NULL || load_certs(pem, len, NULL, store, add_store) < 0)
        return push_ossl_err(L, "ca");
      lua_pop(L, 1); // [opts, ctx, ca]
    }
  } else if (!server) {
    SSL_CTX_set_default_verify_paths(ctx);
  }
  lua_pop(L, 1); // [opts, ctx]
  if (server) {
    // Session resumption: tickets whose key the caller passes, so every worker of a cluster
    // decrypts every worker's tickets; the id context lets resumption coexist with client
    // certificates.
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"lcluster", 8);
    s = opt_string(L, 1, "ticketKeys", &len);
    if (s != NULL) {
      if (len != 80) return luaL_argerror(L, 1, "ticketKeys must be 80 bytes");
      if (SSL_CTX_set_tlsext_ticket_keys(ctx, (void *)s, 80) != 1)
        return push_ossl_err(L, "ticketKeys");
    }
    lua_getfield(L, 1, "sessionTimeout");
    if (lua_isnumber(L, -1)) SSL_CTX_set_timeout(ctx, (long)lua_tonumber(L, -1));
    lua_pop(L, 1);
    if (opt_bool(L, 1, "requestCert"))
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, verify_accept);
    if (opt_bool(L, 1, "sni")) SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, NULL);
  } else {
    // Verification runs in every handshake and its result is read after it (VERIFY_NONE
    // keeps the first failure instead of aborting), so tls.lua can report Node's codes or
    // go on when rejectUnauthorized is false.
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  }
  lua_getfield(L, 1, "alpn"); // [opts, ctx, list]
  if (lua_istable(L, -1)) {
    size_t n = lua_objlen(L, -1), total = 0;
    unsigned char *wire = malloc(n * 256 + 1);
    if (wire == NULL) return luaL_error(L, "ENOMEM: out of memory");
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, (int)i);
      const char *p = lua_tolstring(L, -1, &len);
      if (p == NULL || len == 0 || len > 255) {
        free(wire);
        return luaL_argerror(L, 1, "alpn: protocol names are 1 to 255 bytes");
      }
      wire[total++] = (unsigned char)len;
      memcpy(wire + total, p, len);
      total += len;
      lua_pop(L, 1);
    }
    if (server) {
      c->alpn = wire;
      c->alpn_len = (unsigned int)total;
      SSL_CTX_set_alpn_select_cb(ctx, alpn_select, c);
    } else {
      int rc = SSL_CTX_set_alpn_protos(ctx, wire, (unsigned int)total); // 0 on success
      free(wire);
      if (rc != 0) return push_ossl_err(L, "alpn");
    }
  }
  lua_pop(L, 1); // [opts, ctx]
  return 1;
}

static int ctx_gc(lua_State *L) {
  tls_ctx_t *c = luaL_checkudata(L, 1, CTX_MT);
  // Connections made from it hold their own reference (SSL_new), so it outlives them.
  if (c->ctx != NULL) SSL_CTX_free(c->ctx);
  free(c->alpn);
  c->ctx = NULL;
  c->alpn = NULL;
  return 0;
}

// ---- connections ----

typedef struct {
  lc_tls_t t;
  int ctx_ref; // the context's userdata: its alpn list must outlive the connection
} tls_conn_t;

static tls_conn_t *check_conn(lua_State *L) {
  tls_conn_t *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->t.ssl == NULL) luaL_argerror(L, 1, "TLS connection already freed");
  return c;
}

// _core.tls_new(ctx, server [, host]) -> conn. A client's host sets SNI (names only, as RFC
// 6066 says) and the identity the certificate must have: X509_VERIFY_PARAM_set1_host for a
// name, set1_ip_asc for an address.
static int tls_new(lua_State *L) {
  tls_ctx_t *ctx = luaL_checkudata(L, 1, CTX_MT);
  int server = lua_toboolean(L, 2);
  const char *host = luaL_optstring(L, 3, NULL);
  tls_conn_t *c = lua_newuserdata(L, sizeof(*c)); // [.., conn]
  memset(c, 0, sizeof(*c));
  c->ctx_ref = LUA_NOREF;
  luaL_getmetatable(L, CONN_MT);
  lua_setmetatable(L, -2);
  ERR_clear_error();
  if (lc_tls_init(&c->t, ctx->ctx, server) < 0) return push_ossl_err(L, "SSL_new");
  lua_pushvalue(L, 1);
  c->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (!server && host != NULL && host[0] != '\0') {
    X509_VERIFY_PARAM *param = SSL_get0_param(c->t.ssl);
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(param, host);
    } else {
      SSL_set_tlsext_host_name(c->t.ssl, host);
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      X509_VERIFY_PARAM_set1_host(param, host, 0);
    }
  }
  return 1;
}

// Pushes what the outgoing BIO holds (nil when empty) and empties it.
static void push_out(lua_State *L, lc_tls_t *t) {
  char *p;
  long n = t->out ? BIO_get_mem_data(t->out, &p) : 0;
  if (n <= 0) {
    lua_pushnil(L);
    return;
  }
  lua_pushlstring(L, p, (size_t)n);
  (void)BIO_reset(t->out);
}

// Plaintext of one feed call, gathered in one buffer and pushed as one string: a 64 KB read
// gives four 16 KB records, and a luaL_Buffer would copy them twice more.
typedef struct {
  char *p;
  size_t len, cap;
  int oom; // a chunk could not be kept: the connection must fail, not lose bytes silently
} plain_t;

static plain_t plain;

static void sink_plain(void *ud, const char *data, size_t len) {
  plain_t *b = ud;
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + len)
      cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, len);
  b->len += len;
}

// conn:feed(ciphertext) -> out|nil, plaintext|nil, flags, code|nil, message|nil
// out: records to send to the peer now (handshake messages, alerts). flags: 1 handshake
// completed, 2 close_notify received, 4 fatal error (code, message), 8 waiting for
// conn:sni_done().
static int conn_feed(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  plain.len = 0;
  plain.oom = 0;
  int r = lc_tls_pump(&c->t, data, len, sink_plain, &plain);
  if (plain.oom) {
    c->t.failed = 1;
    snprintf(c->t.code, sizeof(c->t.code), "ENOMEM");
    snprintf(c->t.message, sizeof(c->t.message), "out of memory for TLS plaintext");
    r |= LC_TLS_ERROR;
  }
  push_out(L, &c->t); // [.., out]
  if (plain.len > 0) {
    lua_pushlstring(L, plain.p, plain.len);
  } else {
    lua_pushnil(L);
  } // [.., out, plain]
  if (plain.cap > (1u << 20)) {
    // A huge feed (Lua may pass any string) should not pin its buffer for the process's life.
    free(plain.p);
    plain.p = NULL;
    plain.cap = 0;
  }
  lua_pushinteger(L, r);
  if (r & LC_TLS_ERROR) {
    lua_pushstring(L, c->t.code);
    lua_pushstring(L, c->t.message);
    return 5;
  }
  return 3;
}

// conn:write(plaintext) -> records | nil, err, code
static int conn_write(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (lc_tls_write(&c->t, data, len) < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", c->t.code, c->t.message);
    lua_pushstring(L, c->t.code);
    return 3;
  }
  push_out(L, &c->t);
  return 1;
}

// conn:shutdown() -> records (our close_notify) | nil
static int conn_shutdown(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  lc_tls_shutdown(&c->t);
  push_out(L, &c->t);
  return 1;
}

// conn:take() -> pending records | nil
static int conn_take(lua_State *L) {
  push_out(L, &check_conn(L)->t);
  return 1;
}

static const char *alpn_of(SSL *s, unsigned int *len) {
  const unsigned char *p = NULL;
  SSL_get0_alpn_selected(s, &p, len);
  return (const char *)p;
}

// conn:info() -> {protocol=, cipher=, alpn=, reused=, servername=, verifyError=,
//                 verifyMessage=, peerCert=}
static int conn_info(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  SSL *s = c->t.ssl;
  lua_createtable(L, 0, 8);
  lua_pushstring(L, SSL_get_version(s));
  lua_setfield(L, -2, "protocol");
  const char *cipher = SSL_get_cipher_name(s);
  if (cipher != NULL) {
    lua_pushstring(L, cipher);
    lua_setfield(L, -2, "cipher");
  }
  unsigned int alen = 0;
  const char *alpn = alpn_of(s, &alen);
  if (alpn != NULL && alen > 0) {
    lua_pushlstring(L, alpn, alen);
    lua_setfield(L, -2, "alpn");
  }
  lua_pushboolean(L, SSL_session_reused(s));
  lua_setfield(L, -2, "reused");
  const char *sn = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
  if (sn != NULL) {
    lua_pushstring(L, sn);
    lua_setfield(L, -2, "servername");
  }
  X509 *peer = SSL_get0_peer_certificate(s);
  lua_pushboolean(L, peer != NULL);
  lua_setfield(L, -2, "peerCert");
  long v = SSL_get_verify_result(s);
  if (peer == NULL) {
    lua_pushliteral(L, "ERR_TLS_NO_PEER_CERTIFICATE");
    lua_setfield(L, -2, "verifyError");
    lua_pushliteral(L, "the peer sent no certificate");
    lua_setfield(L, -2, "verifyMessage");
  } else if (v != X509_V_OK) {
    const char *name = verify_name(v);
    if (name != NULL) {
      lua_pushstring(L, name);
    } else {
      lua_pushfstring(L, "ERR_TLS_CERT_VERIFY_%d", (int)v);
    }
    lua_setfield(L, -2, "verifyError");
    lua_pushstring(L, X509_verify_cert_error_string(v));
    lua_setfield(L, -2, "verifyMessage");
  }
  return 1;
}

// conn:servername() -> the SNI name the client asked for (server side), or nil.
static int conn_servername(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  const char *sn = SSL_get_servername(c->t.ssl, TLSEXT_NAMETYPE_host_name);
  if (sn == NULL && c->t.sni_state == 1) {
    // Still inside the paused ClientHello: read the extension directly.
    const unsigned char *p;
    size_t len;
    if (SSL_client_hello_get0_ext(c->t.ssl, TLSEXT_TYPE_server_name, &p, &len) && len >= 5) {
      size_t nlen = ((size_t)p[3] << 8) | p[4];
      if (nlen + 5 <= len) {
        lua_pushlstring(L, (const char *)p + 5, nlen);
        return 1;
      }
    }
  }
  if (sn == NULL) return 0;
  lua_pushstring(L, sn);
  return 1;
}

// conn:sni_done([ctx]): answers a paused ClientHello (flags 8); ctx replaces the connection's
// context (its certificate). Then conn:feed('') resumes the handshake.
static int conn_sni_done(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  if (!lua_isnoneornil(L, 2)) {
    tls_ctx_t *ctx = luaL_checkudata(L, 2, CTX_MT);
    SSL_set_SSL_CTX(c->t.ssl, ctx->ctx);
    lua_pushvalue(L, 2);
    luaL_unref(L, LUA_REGISTRYINDEX, c->ctx_ref);
    c->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  c->t.sni_state = 2;
  return 0;
}

static void push_name(lua_State *L, X509_NAME *name) {
  lua_newtable(L);
  if (name == NULL) return;
  int n = X509_NAME_entry_count(name);
  for (int i = 0; i < n; i++) {
    X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
    const char *sn = OBJ_nid2sn(OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)));
    ASN1_STRING *d = X509_NAME_ENTRY_get_data(e);
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, d);
    if (len >= 0 && sn != NULL) {
      lua_pushlstring(L, (const char *)utf8, (size_t)len);
      lua_setfield(L, -2, sn);
    }
    OPENSSL_free(utf8);
  }
}

static void push_time(lua_State *L, const ASN1_TIME *t) {
  BIO *b = BIO_new(BIO_s_mem());
  char *p;
  if (b != NULL && ASN1_TIME_print(b, t) == 1) {
    long n = BIO_get_mem_data(b, &p);
    lua_pushlstring(L, p, (size_t)n);
  } else {
    lua_pushnil(L);
  }
  BIO_free(b);
}

// conn:peer_certificate() -> {subject=, issuer=, valid_from=, valid_to=, serialNumber=,
//   fingerprint256=, subjectaltname=} | nil, field names as Node's getPeerCertificate().
static int conn_peer_cert(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  X509 *x = SSL_get0_peer_certificate(c->t.ssl);
  if (x == NULL) return 0;
  lua_createtable(L, 0, 8);
  push_name(L, X509_get_subject_name(x));
  lua_setfield(L, -2, "subject");
  push_name(L, X509_get_issuer_name(x));
  lua_setfield(L, -2, "issuer");
  push_time(L, X509_get0_notBefore(x));
  lua_setfield(L, -2, "valid_from");
  push_time(L, X509_get0_notAfter(x));
  lua_setfield(L, -2, "valid_to");
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  char *hex = bn ? BN_bn2hex(bn) : NULL;
  if (hex != NULL) {
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "serialNumber");
  }
  OPENSSL_free(hex);
  BN_free(bn);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (X509_digest(x, EVP_sha256(), md, &mdlen) == 1) {
    char fp[EVP_MAX_MD_SIZE * 3 + 1];
    for (unsigned int i = 0; i < mdlen; i++)
      snprintf(fp + i * 3, 4, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");
    lua_pushstring(L, fp);
    lua_setfield(L, -2, "fingerprint256");
  }
  GENERAL_NAMES *alt = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  if (alt != NULL) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < sk_GENERAL_NAME_num(alt); i++) {
      GENERAL_NAME *g = sk_GENERAL_NAME_value(alt, i);
      if (i > 0) luaL_addstring(&b, ", ");
      if (g->type == GEN_DNS) {
        luaL_addstring(&b, "DNS:");
        luaL_addlstring(&b, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                        (size_t)ASN1_STRING_length(g->d.dNSName));
      } else if (g->type == GEN_IPADD) {
        char ip[64] = "";
        int l = ASN1_STRING_length(g->d.iPAddress);
        const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
        if (l == 4) inet_ntop(AF_INET, d, ip, sizeof(ip));
        if (l == 16) inet_ntop(AF_INET6, d, ip, sizeof(ip));
        luaL_addstring(&b, "IP Address:");
        luaL_addstring(&b, ip);
      } else {
        luaL_addstring(&b, "othername:<unsupported>");
      }
    }
    luaL_pushresult(&b);
    lua_setfield(L, -2, "subjectaltname");
    GENERAL_NAMES_free(alt);
  }
  return 1;
}

// conn:session() -> the session as DER (to resume on a later connection) | nil
static int conn_session(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  SSL_SESSION *s = SSL_get1_session(c->t.ssl);
  if (s == NULL || !SSL_SESSION_is_resumable(s)) {
    SSL_SESSION_free(s);
    return 0;
  }
  int n = i2d_SSL_SESSION(s, NULL);
  unsigned char *der = n > 0 ? malloc((size_t)n) : NULL;
  unsigned char *p = der;
  if (der != NULL && i2d_SSL_SESSION(s, &p) == n) lua_pushlstring(L, (const char *)der, (size_t)n);
  free(der);
  SSL_SESSION_free(s);
  return der != NULL && p != der ? 1 : 0;
}

// conn:set_session(der) -> true | false (unparseable; the handshake is then a full one)
static int conn_set_session(lua_State *L) {
  tls_conn_t *c = check_conn(L);
  size_t len;
  const unsigned char *der = (const unsigned char *)luaL_checklstring(L, 2, &len);
  SSL_SESSION *s = d2i_SSL_SESSION(NULL, &der, (long)len);
  int ok = s != NULL && SSL_set_session(c->t.ssl, s) == 1;
  SSL_SESSION_free(s);
  ERR_clear_error();
  lua_pushboolean(L, ok);
  return 1;
}

static int conn_free(lua_State *L) {
  tls_conn_t *c = luaL_checkudata(L, 1, CONN_MT);
  lc_tls_free(&c->t);
  luaL_unref(L, LUA_REGISTRYINDEX, c->ctx_ref);
  c->ctx_ref = LUA_NOREF;
  return 0;
}

// _core.tls_random(n) -> n bytes from OpenSSL's CSPRNG
static int tls_random(lua_State *L) {
  int n = (int)luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0 && n <= 4096, 1, "1 to 4096 bytes");
  unsigned char buf[4096];
  if (RAND_bytes(buf, n) != 1) return push_ossl_err(L, "RAND_bytes");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

/// The module's one exported symbol (the rest is hidden): pushes the table of bindings.
__attribute__((visibility("default"))) int lc_tls_module_open(lua_State *L);
int lc_tls_module_open(lua_State *L) {
  static const luaL_Reg conn_methods[] = {
      {"feed", conn_feed},         {"write", conn_write},
      {"shutdown", conn_shutdown}, {"take", conn_take},
      {"info", conn_info},         {"servername", conn_servername},
      {"sni_done", conn_sni_done}, {"peer_certificate", conn_peer_cert},
      {"session", conn_session},   {"set_session", conn_set_session},
      {"free", conn_free},         {NULL, NULL}};
  luaL_newmetatable(L, CONN_MT); // [mt]
  lua_newtable(L);
  luaL_register(L, NULL, conn_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, conn_free);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1); // []
  luaL_newmetatable(L, CTX_MT);
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1); // []
  static const luaL_Reg fns[] = {
      {"tls_context", tls_context}, {"tls_new", tls_new}, {"tls_random", tls_random}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns); // [module]
  return 1;
}
