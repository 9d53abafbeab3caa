/*
 * sd_notify: one datagram to systemd's notification socket ($NOTIFY_SOCKET),
 * which Node cannot send by itself (dgram speaks UDP only).
 *
 * - The address is a filesystem path ("/run/systemd/notify") or, starting
 *   with '@', a name in the abstract namespace (the '@' becomes a NUL byte).
 *   Anything else (systemd's "vsock:" form included) is refused: the
 *   caller says so and falls back.
 * - Each call opens an unbound AF_UNIX datagram socket (non-blocking,
 *   close-on-exec), sends the message with sendto and closes it, as
 *   libsystemd's sd_notify does: nothing is held between calls, so a
 *   manager that re-created its socket (daemon-reexec) is reached next time.
 *   systemd learns the sender's PID from the kernel (SO_PASSCRED on its
 *   side), which is what NotifyAccess=main checks.
 * - Never blocks: a full socket queue is EAGAIN, thrown like every other
 *   failure as an Error whose `code` is the errno name; the caller logs it
 *   and the next message (a watchdog ping) tries again.
 * - Bounds: the address fits sun_path (and holds no NUL byte), the message
 *   is 1 to MAX_NOTIFY_MESSAGE bytes.
 */
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "sd_notify.h"

/* Our messages are a few short assignments (READY=1, STATUS=...); systemd reads far more. */
#define MAX_NOTIFY_MESSAGE 4096

static napi_value throw_notify_errno(napi_env env, const char *syscall, int err) {
  char msg[128];
  const char *name = uv_err_name(uv_translate_sys_error(err));
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, name, strerror(err));
  napi_throw_error(env, name, msg);
  return NULL;
}

static napi_value throw_range(napi_env env, const char *msg) {
  napi_throw_range_error(env, "ENOTIFYARG", msg);
  return NULL;
}

/*
 * Fills `sa` from `address` (len bytes, no NUL among them); returns the
 * socklen to pass to sendto, or 0 if the address is not one we accept.
 */
static socklen_t notify_address(const char *address, size_t len, struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (len < 2 || memchr(address, '\0', len) != NULL) return 0;
  if (address[0] == '/') {
    /* A path: sun_path keeps its terminating NUL. */
    if (len >= sizeof sa->sun_path) return 0;
    memcpy(sa->sun_path, address, len);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  if (address[0] == '@') {
    /* Abstract: a leading NUL, then the name; the length says where it ends. */
    if (len > sizeof sa->sun_path) return 0;
    memcpy(sa->sun_path + 1, address + 1, len - 1);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  }
  return 0;
}

/* sdNotify(address: string, message: Buffer): undefined, or throws. */
static napi_value js_sd_notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2) {
    napi_throw_type_error(env, "ENOTIFYARG", "sdNotify: 2 arguments expected (address, message)");
    return NULL;
  }

  /* One byte more than sun_path can hold, so a longer address is seen as too long, not cut. */
  char address[sizeof(((struct sockaddr_un *)0)->sun_path) + 2];
  size_t address_len = 0;
  if (napi_get_value_string_utf8(env, argv[0], address, sizeof address, &address_len) != napi_ok) {
    napi_throw_type_error(env, "ENOTIFYARG", "sdNotify: the address must be a string");
    return NULL;
  }
  struct sockaddr_un sa;
  socklen_t sa_len = address_len >= sizeof address - 1 ? 0 : notify_address(address, address_len, &sa);
  if (sa_len == 0) {
    return throw_range(env, "sdNotify: the address must be an absolute path or an abstract name starting with @, "
                            "at most 107 bytes, without NUL bytes");
  }

  bool is_buffer = false;
  void *message = NULL;
  size_t message_len = 0;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &message, &message_len) != napi_ok) {
    napi_throw_type_error(env, "ENOTIFYARG", "sdNotify: the message must be a Buffer");
    return NULL;
  }
  if (message_len == 0 || message_len > MAX_NOTIFY_MESSAGE) {
    return throw_range(env, "sdNotify: the message must be 1 to 4096 bytes");
  }

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_notify_errno(env, "socket", errno);
  ssize_t sent = sendto(fd, message, message_len, MSG_NOSIGNAL, (struct sockaddr *)&sa, sa_len);
  int err = sent < 0 ? errno : 0;
  close(fd);
  if (err != 0) return throw_notify_errno(env, "sendto", err);
  if ((size_t)sent != message_len) return throw_notify_errno(env, "sendto", EMSGSIZE);
  return NULL;
}

void sd_notify_register(napi_env env, napi_value exports) {
  napi_property_descriptor prop = {"sdNotify", NULL, js_sd_notify, NULL, NULL, NULL, napi_enumerable, NULL};
  napi_define_properties(env, exports, 1, &prop);
}
