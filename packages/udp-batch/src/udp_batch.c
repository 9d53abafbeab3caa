/*
 * udp-batch: one UDP socket read with recvmmsg and written with sendmmsg,
 * for the beacon's UDP side (Linux only).
 *
 * - The socket is polled through libuv (uv_poll_t on Node's own loop). On
 *   readiness one recvmmsg fills up to `batch` slots of a receive area that
 *   JavaScript owns, the lengths and source addresses go into a record area,
 *   and JavaScript is called once for the whole batch.
 * - At most one batch per event-loop turn: the datagrams are handed to JS
 *   as slices of the receive area, which may be kept (e.g. frames waiting
 *   for the end of the turn) until the check phase; a uv_check_t marks the
 *   area free again. The socket stays readable, so libuv calls again next turn.
 * - flush(n) sends n records with sendmmsg; each record names its bytes in
 *   the send area or the receive area. Every offset and length is checked
 *   against the area before it reaches the kernel. EAGAIN/ENOBUFS drop the
 *   rest of the flush (never block, never spin); other errors drop one
 *   datagram. The counts go back to JavaScript.
 * - close() stops polling before the fd is closed, drops every reference to
 *   JavaScript, and frees memory in the handles' close callbacks: no
 *   callback reaches JavaScript after close.
 * - With reusePort, the socket is bound with SO_REUSEPORT, so processes of
 *   one user share its address and the kernel spreads flows over them.
 * - listenTcp opens a listening TCP socket (SO_REUSEADDR as Node's own, and
 *   SO_REUSEPORT when asked) and returns its descriptor for Node's
 *   server.listen({ fd }): Node before 22.12 has no reusePort of its own.
 * - sdNotify (sd_notify.c, in the same binding) sends systemd's readiness
 *   and watchdog datagrams, which Node cannot send either.
 */
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "sd_notify.h"

/* Bounds on what JavaScript may ask for. */
#define MAX_BATCH 1024
#define MAX_SLOT 65536
#define MAX_SENDS 1024
#define MAX_BACKLOG 65535

/* One received datagram's record: 32 u32 (128 bytes). */
#define REC_WORDS 32
#define R_LEN 0
#define R_TRUNC 1
#define R_FAMILY 2
#define R_PORT 3
#define R_ADDR 4 /* 4 words: 4 (IPv4) or 16 (IPv6) address bytes, network order */
#define R_TEXT_LEN 8
#define R_TEXT 9 /* bytes 36..127: the IPv6 source as text (at most 45 bytes) */

/* One send record: 8 u32 (32 bytes). */
#define SEND_WORDS 8
#define S_AREA 0 /* 0: send area, 1: receive area */
#define S_OFFSET 1
#define S_LEN 2
#define S_PORT 3
#define S_ADDR 4 /* 4 words, as R_ADDR */

/* Flush results: sent, dropped because the socket buffer was full, dropped on other errors. */
#define F_SENT 0
#define F_FULL 1
#define F_ERROR 2

typedef struct {
  napi_env env;
  int fd;
  int family; /* AF_INET or AF_INET6 */
  int closed;
  int area_busy; /* a batch was delivered this turn; the area is free at the check phase */
  int handles_open;
  uint32_t batch, slot;
  uv_poll_t poll;
  uv_check_t check;
  napi_ref on_batch, keep_alive;
  napi_async_context async;
  uint8_t *recv_area;
  size_t recv_len;
  uint32_t *recs; /* batch * REC_WORDS */
  uint8_t *send_area;
  size_t send_len;
  uint32_t *sends; /* send_cap * SEND_WORDS */
  uint32_t send_cap;
  uint32_t *results; /* 3 words */
  struct mmsghdr *msgs;
  struct iovec *iovs;
  struct sockaddr_storage *addrs;
} batch_socket;

#define CHECK(call)                                              \
  do {                                                           \
    if ((call) != napi_ok) {                                     \
      napi_throw_error(env, "EUDPBATCH", "napi call failed: " #call); \
      return NULL;                                               \
    }                                                            \
  } while (0)

static napi_value throw_errno(napi_env env, const char *syscall, int err) {
  char msg[128];
  const char *name = uv_err_name(uv_translate_sys_error(err));
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, name, strerror(err));
  napi_throw_error(env, name, msg);
  return NULL;
}

/* A Buffer argument's bytes, or NULL after throwing. */
static void *buffer_arg(napi_env env, napi_value v, size_t *len) {
  bool is_buffer = false;
  void *data = NULL;
  if (napi_is_buffer(env, v, &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, v, &data, len) != napi_ok) {
    napi_throw_type_error(env, "EUDPBATCH", "expected a Buffer");
    return NULL;
  }
  return data;
}

static int u32_arg(napi_env env, napi_value v, uint32_t *out) {
  return napi_get_value_uint32(env, v, out) == napi_ok;
}

static void free_socket(batch_socket *s) {
  free(s->msgs);
  free(s->iovs);
  free(s->addrs);
  free(s);
}

static void on_handle_closed(uv_handle_t *h) {
  batch_socket *s = (batch_socket *)h->data;
  if (--s->handles_open == 0) free_socket(s);
}

static void on_check(uv_check_t *h) {
  ((batch_socket *)h->data)->area_busy = 0;
}

/* Writes the source of datagram i into its record. */
static void record_source(batch_socket *s, uint32_t i) {
  uint32_t *r = s->recs + (size_t)i * REC_WORDS;
  const struct sockaddr_storage *ss = &s->addrs[i];
  memset(r + R_ADDR, 0, 16);
  r[R_TEXT_LEN] = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    r[R_FAMILY] = 4;
    r[R_PORT] = ntohs(a->sin_port);
    memcpy(r + R_ADDR, &a->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    char text[INET6_ADDRSTRLEN];
    r[R_FAMILY] = 6;
    r[R_PORT] = ntohs(a->sin6_port);
    memcpy(r + R_ADDR, &a->sin6_addr, 16);
    /* The text the dgram path reports (libuv's formatting), so both paths give one address one name. */
    if (uv_inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text) == 0) {
      size_t n = strlen(text);
      if (n <= (REC_WORDS - R_TEXT) * 4) {
        memcpy(r + R_TEXT, text, n);
        r[R_TEXT_LEN] = (uint32_t)n;
      }
    }
  } else {
    r[R_FAMILY] = 0;
    r[R_PORT] = 0;
  }
}

static void on_readable(uv_poll_t *h, int status, int events) {
  batch_socket *s = (batch_socket *)h->data;
  (void)events;
  if (s->closed || s->area_busy || status < 0) return;
  for (uint32_t i = 0; i < s->batch; i++) {
    s->iovs[i].iov_base = s->recv_area + (size_t)i * s->slot;
    s->iovs[i].iov_len = s->slot;
    memset(&s->msgs[i].msg_hdr, 0, sizeof s->msgs[i].msg_hdr);
    s->msgs[i].msg_hdr.msg_iov = &s->iovs[i];
    s->msgs[i].msg_hdr.msg_iovlen = 1;
    s->msgs[i].msg_hdr.msg_name = &s->addrs[i];
    s->msgs[i].msg_hdr.msg_namelen = sizeof s->addrs[i];
    s->msgs[i].msg_len = 0;
  }
  int n;
  do {
    n = recvmmsg(s->fd, s->msgs, s->batch, MSG_DONTWAIT, NULL);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return; /* EAGAIN, or an ICMP error queued on the socket: nothing to deliver */
  for (int i = 0; i < n; i++) {
    uint32_t *r = s->recs + (size_t)i * REC_WORDS;
    uint32_t len = s->msgs[i].msg_len;
    int trunc = (s->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0 || len > s->slot;
    r[R_LEN] = trunc ? 0 : len;
    r[R_TRUNC] = trunc;
    record_source(s, (uint32_t)i);
  }
  s->area_busy = 1;

  napi_env env = s->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[1], result;
  if (napi_get_reference_value(env, s->on_batch, &cb) == napi_ok && cb != NULL &&
      napi_get_global(env, &recv) == napi_ok && napi_create_uint32(env, (uint32_t)n, &argv[0]) == napi_ok) {
    /* make_callback: nextTicks and microtasks run after it, as after any I/O callback. */
    if (napi_make_callback(env, s->async, recv, cb, 1, argv, &result) != napi_ok) {
      napi_value err;
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending && napi_get_and_clear_last_exception(env, &err) == napi_ok) napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
  /* `s` may be closed now (JavaScript called close): it stays allocated until the close callbacks. */
}

static void delete_ref(napi_env env, napi_ref *ref) {
  if (*ref) {
    napi_delete_reference(env, *ref);
    *ref = NULL;
  }
}

static void stop(batch_socket *s) {
  if (s->closed) return;
  s->closed = 1;
  uv_poll_stop(&s->poll);
  uv_check_stop(&s->check);
  close(s->fd);
  s->fd = -1;
  delete_ref(s->env, &s->on_batch);
  delete_ref(s->env, &s->keep_alive);
  napi_async_destroy(s->env, s->async);
  uv_close((uv_handle_t *)&s->poll, on_handle_closed);
  uv_close((uv_handle_t *)&s->check, on_handle_closed);
}

/* A socket address from family (4|6), 16 address bytes and a port; its length. */
static socklen_t sockaddr_of(int af, const uint8_t *addr, uint32_t port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (af == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    memcpy(&a->sin_addr, addr, 4);
    return sizeof *a;
  }
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
  a->sin6_family = AF_INET6;
  a->sin6_port = htons((uint16_t)port);
  memcpy(&a->sin6_addr, addr, 16);
  return sizeof *a;
}

/* Fills a sockaddr from a send record; the address length, or 0. */
static socklen_t dest_of(const batch_socket *s, const uint32_t *rec, struct sockaddr_storage *ss) {
  if (rec[S_PORT] > 65535) return 0;
  return sockaddr_of(s->family, (const uint8_t *)(rec + S_ADDR), rec[S_PORT], ss);
}

/* The socket behind a handle argument, or NULL after throwing. */
static batch_socket *socket_arg(napi_env env, napi_value v) {
  void *data = NULL;
  if (napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, "EUDPBATCH", "expected a udp-batch handle");
    return NULL;
  }
  return (batch_socket *)data;
}

/* SO_REUSEPORT on fd, or an errno (e.g. ENOPROTOOPT on a kernel without it). */
static int set_reuse_port(int fd) {
  int one = 1;
  return setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0 ? 0 : errno;
}

/* A boolean argument, or -1 after throwing. */
static int bool_arg(napi_env env, napi_value v, const char *what) {
  bool b;
  if (napi_get_value_bool(env, v, &b) != napi_ok) {
    napi_throw_type_error(env, "EUDPBATCH", what);
    return -1;
  }
  return b ? 1 : 0;
}

/*
 * open(family, addr16, port, reusePort, recvBufBytes, sendBufBytes, batch, slot,
 *      recvArea, records, sendArea, sendRecords, results, onBatch) -> handle
 */
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 14;
  napi_value argv[14];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 14) {
    napi_throw_type_error(env, "EUDPBATCH", "open: 14 arguments expected");
    return NULL;
  }
  uint32_t family, port, rcvbuf, sndbuf, batch, slot;
  if (!u32_arg(env, argv[0], &family) || !u32_arg(env, argv[2], &port) || !u32_arg(env, argv[4], &rcvbuf) ||
      !u32_arg(env, argv[5], &sndbuf) || !u32_arg(env, argv[6], &batch) || !u32_arg(env, argv[7], &slot) ||
      (family != 4 && family != 6) || port > 65535 || batch < 1 || batch > MAX_BATCH || slot < 1 || slot > MAX_SLOT) {
    napi_throw_range_error(env, "EUDPBATCH", "open: bad family, port, batch or slot size");
    return NULL;
  }
  int reuse_port = bool_arg(env, argv[3], "open: reusePort must be a boolean");
  if (reuse_port < 0) return NULL;
  size_t addr_len, recv_len, recs_len, send_len, sends_len, results_len;
  uint8_t *addr = buffer_arg(env, argv[1], &addr_len);
  if (!addr) return NULL;
  uint8_t *recv_area = buffer_arg(env, argv[8], &recv_len);
  if (!recv_area) return NULL;
  uint32_t *recs = buffer_arg(env, argv[9], &recs_len);
  if (!recs) return NULL;
  uint8_t *send_area = buffer_arg(env, argv[10], &send_len);
  if (!send_area) return NULL;
  uint32_t *sends = buffer_arg(env, argv[11], &sends_len);
  if (!sends) return NULL;
  uint32_t *results = buffer_arg(env, argv[12], &results_len);
  if (!results) return NULL;
  napi_valuetype cb_type;
  CHECK(napi_typeof(env, argv[13], &cb_type));
  size_t send_cap = sends_len / (SEND_WORDS * 4);
  if (addr_len != 16 || recv_len < (size_t)batch * slot || recs_len < (size_t)batch * REC_WORDS * 4 ||
      send_cap < 1 || send_cap > MAX_SENDS || results_len < 3 * 4 || cb_type != napi_function ||
      ((uintptr_t)recs | (uintptr_t)sends | (uintptr_t)results) % 4 != 0) {
    napi_throw_range_error(env, "EUDPBATCH", "open: areas too small or misaligned, or no callback");
    return NULL;
  }

  int af = family == 4 ? AF_INET : AF_INET6;
  int fd = socket(af, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  /* As dgram: dual-stack on IPv6, and buffer sizes best effort (Linux caps them at rmem_max/wmem_max). */
  int zero = 0, r = (int)rcvbuf, w = (int)sndbuf;
  if (af == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (r > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &r, sizeof r);
  if (w > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &w, sizeof w);
  if (reuse_port) {
    int err = set_reuse_port(fd);
    if (err != 0) {
      close(fd);
      return throw_errno(env, "setsockopt SO_REUSEPORT", err);
    }
  }
  struct sockaddr_storage ss;
  socklen_t ss_len = sockaddr_of(af, addr, port, &ss);
  if (bind(fd, (struct sockaddr *)&ss, ss_len) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "bind", err);
  }

  batch_socket *s = calloc(1, sizeof *s);
  if (s) {
    s->msgs = calloc(batch > send_cap ? batch : send_cap, sizeof *s->msgs);
    s->iovs = calloc(batch > send_cap ? batch : send_cap, sizeof *s->iovs);
    s->addrs = calloc(batch > send_cap ? batch : send_cap, sizeof *s->addrs);
  }
  if (!s || !s->msgs || !s->iovs || !s->addrs) {
    if (s) free_socket(s);
    close(fd);
    napi_throw_error(env, "ENOMEM", "udp-batch: out of memory");
    return NULL;
  }
  s->env = env;
  s->fd = fd;
  s->family = af;
  s->batch = batch;
  s->slot = slot;
  s->recv_area = recv_area;
  s->recv_len = recv_len;
  s->recs = recs;
  s->send_area = send_area;
  s->send_len = send_len;
  s->sends = sends;
  s->send_cap = (uint32_t)send_cap;
  s->results = results;

  uv_loop_t *loop;
  napi_value handle, name, holder;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &s->poll, fd) != 0) {
    free_socket(s);
    close(fd);
    napi_throw_error(env, "EUDPBATCH", "udp-batch: cannot poll the socket");
    return NULL;
  }
  uv_check_init(loop, &s->check);
  s->poll.data = s;
  s->check.data = s;
  s->handles_open = 2;
  uv_unref((uv_handle_t *)&s->check);
  /* The areas stay alive while the socket is open: one array holding them all. */
  CHECK(napi_create_array_with_length(env, 6, &holder));
  for (uint32_t i = 0; i < 6; i++) CHECK(napi_set_element(env, holder, i, argv[8 + i]));
  CHECK(napi_create_reference(env, holder, 1, &s->keep_alive));
  CHECK(napi_create_reference(env, argv[13], 1, &s->on_batch));
  CHECK(napi_create_string_utf8(env, "udp-batch", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &s->async));
  CHECK(napi_create_external(env, s, NULL, NULL, &handle));
  uv_poll_start(&s->poll, UV_READABLE, on_readable);
  uv_check_start(&s->check, on_check);
  return handle;
}

/* localPort(handle) -> the bound port */
static napi_value js_local_port(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  batch_socket *s = argc == 1 ? socket_arg(env, argv[0]) : NULL;
  if (!s) return NULL;
  if (s->closed) return throw_errno(env, "getsockname", EBADF);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(s->fd, (struct sockaddr *)&ss, &len) != 0) return throw_errno(env, "getsockname", errno);
  uint16_t port = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                          : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  CHECK(napi_create_uint32(env, port, &out));
  return out;
}

/* flush(handle, count) -> sent; results[] gets sent / full / error counts */
static napi_value js_flush(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  batch_socket *s = argc == 2 ? socket_arg(env, argv[0]) : NULL;
  if (!s) return NULL;
  uint32_t count;
  if (!u32_arg(env, argv[1], &count) || count > s->send_cap) {
    napi_throw_range_error(env, "EUDPBATCH", "flush: count out of range");
    return NULL;
  }
  uint32_t sent = 0, full = 0, failed = 0;
  if (s->closed) {
    failed = count;
    count = 0;
  }
  /* Build the headers; a record that points outside its area is dropped as an error. */
  uint32_t n = 0;
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t *rec = s->sends + (size_t)i * SEND_WORDS;
    uint8_t *base = rec[S_AREA] == 0 ? s->send_area : rec[S_AREA] == 1 ? s->recv_area : NULL;
    size_t limit = rec[S_AREA] == 0 ? s->send_len : s->recv_len;
    socklen_t alen = dest_of(s, rec, &s->addrs[n]);
    if (!base || alen == 0 || (size_t)rec[S_OFFSET] > limit || (size_t)rec[S_LEN] > limit - rec[S_OFFSET]) {
      failed++;
      continue;
    }
    s->iovs[n].iov_base = base + rec[S_OFFSET];
    s->iovs[n].iov_len = rec[S_LEN];
    memset(&s->msgs[n].msg_hdr, 0, sizeof s->msgs[n].msg_hdr);
    s->msgs[n].msg_hdr.msg_iov = &s->iovs[n];
    s->msgs[n].msg_hdr.msg_iovlen = 1;
    s->msgs[n].msg_hdr.msg_name = &s->addrs[n];
    s->msgs[n].msg_hdr.msg_namelen = alen;
    n++;
  }
  uint32_t at = 0;
  while (at < n) {
    int r = sendmmsg(s->fd, s->msgs + at, n - at, MSG_DONTWAIT);
    if (r > 0) {
      sent += (uint32_t)r;
      at += (uint32_t)r;
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
      full += n - at; /* the socket buffer is full: the rest would fail alike */
      break;
    } else {
      failed++; /* this datagram was refused (too large, unreachable, ...); go on with the next */
      at++;
    }
  }
  s->results[F_SENT] = sent;
  s->results[F_FULL] = full;
  s->results[F_ERROR] = failed;
  CHECK(napi_create_uint32(env, sent, &out));
  return out;
}

/*
 * listenTcp(family, addr16, port, backlog, reusePort) -> fd: a listening TCP
 * socket, non-blocking and close-on-exec, for Node's server.listen({ fd }),
 * which takes it over (and closes it with the server). Throws an Error whose
 * `code` is the errno name (EADDRINUSE, EACCES, EADDRNOTAVAIL, ...).
 */
static napi_value js_listen_tcp(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5) {
    napi_throw_type_error(env, "EUDPBATCH", "listenTcp: 5 arguments expected");
    return NULL;
  }
  uint32_t family, port, backlog;
  if (!u32_arg(env, argv[0], &family) || !u32_arg(env, argv[2], &port) || !u32_arg(env, argv[3], &backlog) ||
      (family != 4 && family != 6) || port > 65535 || backlog < 1 || backlog > MAX_BACKLOG) {
    napi_throw_range_error(env, "EUDPBATCH", "listenTcp: bad family, port or backlog");
    return NULL;
  }
  int reuse_port = bool_arg(env, argv[4], "listenTcp: reusePort must be a boolean");
  if (reuse_port < 0) return NULL;
  size_t addr_len;
  uint8_t *addr = buffer_arg(env, argv[1], &addr_len);
  if (!addr) return NULL;
  if (addr_len != 16) {
    napi_throw_range_error(env, "EUDPBATCH", "listenTcp: the address must be 16 bytes");
    return NULL;
  }

  int af = family == 4 ? AF_INET : AF_INET6;
  int fd = socket(af, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  /* As Node's own listeners: SO_REUSEADDR (a restart binds while old connections sit in TIME_WAIT), dual-stack on IPv6. */
  int one = 1, zero = 0, err = 0;
  const char *call = NULL;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    err = errno;
    call = "setsockopt SO_REUSEADDR";
  } else if (af == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0) {
    err = errno;
    call = "setsockopt IPV6_V6ONLY";
  } else if (reuse_port && (err = set_reuse_port(fd)) != 0) {
    call = "setsockopt SO_REUSEPORT";
  } else {
    struct sockaddr_storage ss;
    socklen_t ss_len = sockaddr_of(af, addr, port, &ss);
    if (bind(fd, (struct sockaddr *)&ss, ss_len) != 0) {
      err = errno;
      call = "bind";
    } else if (listen(fd, (int)backlog) != 0) {
      err = errno;
      call = "listen";
    }
  }
  if (call != NULL) {
    close(fd);
    return throw_errno(env, call, err);
  }
  CHECK(napi_create_int32(env, fd, &out));
  return out;
}

/* close(handle): idempotent */
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  batch_socket *s = argc == 1 ? socket_arg(env, argv[0]) : NULL;
  if (!s) return NULL;
  stop(s);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"open", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
    {"localPort", NULL, js_local_port, NULL, NULL, NULL, napi_enumerable, NULL},
    {"flush", NULL, js_flush, NULL, NULL, NULL, napi_enumerable, NULL},
    {"close", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL},
    {"listenTcp", NULL, js_listen_tcp, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_value v;
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_create_uint32(env, REC_WORDS, &v);
  napi_set_named_property(env, exports, "RECORD_WORDS", v);
  napi_create_uint32(env, SEND_WORDS, &v);
  napi_set_named_property(env, exports, "SEND_WORDS", v);
  sd_notify_register(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
