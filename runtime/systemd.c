// systemd.c: what a master needs to be a good systemd service, without libsystemd. The
// protocols are small and stable (sd_notify(3), sd_listen_fds(3)): a datagram of
// "KEY=VALUE\n" lines to the AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract
// namespace), and listening sockets inherited from fd 3 on. The policy (which variables,
// when to send what, which listen takes which socket) is Lua: lualib/ops/_systemd.lua.
//
// Lua:
//   _core.sd_notify(path, msg) -> true | nil, err, code     one datagram, no state kept
//   _core.sd_sockinfo(fd) -> {type=, family=, address=, port=, path=, listening=}
//                          | nil, err, code                  also marks fd close-on-exec
//   _core.sd_dup(fd) -> fd | nil, err, code                  a close-on-exec copy
//   _core.sd_recv_bind(path) -> fd | nil, err, code          a non-blocking datagram socket
//                                                            bound at path (the receiving end,
//                                                            for specs and tools)
//   _core.sd_recv(fd) -> msg | false (nothing waiting) | nil, err, code
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lc.h"

// Fills sun from a NOTIFY_SOCKET-style path; returns the address length or a libuv error.
static int fill_addr(const char *path, size_t len, struct sockaddr_un *sun) {
  memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  if (len == 0) return UV_EINVAL;
  if (len >= sizeof(sun->sun_path)) return UV_ENAMETOOLONG;
  memcpy(sun->sun_path, path, len);
  // An abstract socket's name starts with a NUL byte and is not NUL-terminated: its length
  // is part of the name, so the address length must not include a trailing NUL.
  if (path[0] == '@') {
    sun->sun_path[0] = '\0';
    return (int)(offsetof(struct sockaddr_un, sun_path) + len);
  }
  return (int)sizeof(*sun);
}

static int sd_notify(lua_State *L) {
  size_t plen, mlen;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *msg = luaL_checklstring(L, 2, &mlen);
  struct sockaddr_un sun;
  int alen = fill_addr(path, plen, &sun);
  if (alen < 0) return lc_util_push_uverr(L, alen);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  // MSG_NOSIGNAL: a receiver that went away must not kill the master with SIGPIPE. A
  // datagram to a live receiver does not block for long; systemd drains its socket.
  ssize_t n = sendto(fd, msg, mlen, MSG_NOSIGNAL, (struct sockaddr *)&sun, (socklen_t)alen);
  int err = n < 0 ? uv_translate_sys_error(errno) : 0;
  close(fd);
  return lc_util_push_result(L, err);
}

static int sd_sockinfo(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  // Inherited listeners must not leak into workers (their fd 3 is the IPC channel, set up by
  // the spawn; any other inherited fd would stay open there and keep the port alive).
  int fl = fcntl(fd, F_GETFD);
  if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  int type = 0, acc = 0;
  socklen_t tl = sizeof(type), al = sizeof(acc);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0)
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) != 0) acc = 0;
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  memset(&ss, 0, sizeof(ss));
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  if (ss.ss_family == AF_UNIX) {
    struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
    lua_createtable(L, 0, 5); // [info]
    size_t plen = len > offsetof(struct sockaddr_un, sun_path)
                      ? len - offsetof(struct sockaddr_un, sun_path)
                      : 0;
    if (plen > 0 && sun->sun_path[0] != '\0') plen = strnlen(sun->sun_path, plen);
    lua_pushlstring(L, sun->sun_path, plen);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "unix");
    lua_setfield(L, -2, "family");
  } else if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    lc_util_push_addr(L, (struct sockaddr *)&ss); // [info{address, family, port}]
  } else {
    return lc_util_push_uverr(L, UV_EAFNOSUPPORT);
  }
  lua_pushstring(L, type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "dgram" : "other");
  lua_setfield(L, -2, "type");
  lua_pushboolean(L, acc);
  lua_setfield(L, -2, "listening");
  return 1;
}

static int sd_dup(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  lua_pushinteger(L, copy);
  return 1;
}

static int sd_recv_bind(lua_State *L) {
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  struct sockaddr_un sun;
  int alen = fill_addr(path, plen, &sun);
  if (alen < 0) return lc_util_push_uverr(L, alen);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  if (bind(fd, (struct sockaddr *)&sun, (socklen_t)alen) != 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    return lc_util_push_uverr(L, err);
  }
  lua_pushinteger(L, fd);
  return 1;
}

static int sd_recv(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  char buf[4096];
  ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      lua_pushboolean(L, 0);
      return 1;
    }
    return lc_util_push_uverr(L, uv_translate_sys_error(errno));
  }
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

void lc_systemd_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"sd_notify", sd_notify}, {"sd_sockinfo", sd_sockinfo},
                                 {"sd_dup", sd_dup},       {"sd_recv_bind", sd_recv_bind},
                                 {"sd_recv", sd_recv},     {NULL, NULL}};
  luaL_register(L, NULL, fns); // [core]
}
