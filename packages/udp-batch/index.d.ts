/**
 * udp-batch: one UDP socket read with recvmmsg and written with sendmmsg
 * (Linux), a listening TCP socket with SO_REUSEPORT for Node versions
 * without `reusePort`, and systemd's notification datagram (sdNotify).
 * Everything crosses in shared Buffers, so one call carries a batch.
 *
 * Receive: on readiness the addon fills up to `batch` slots of `recvArea`
 * (slot i at i * slot) and writes one record per datagram into `records`
 * (RECORD_WORDS u32 each: length, truncated flag, family 4|6, port, the
 * address bytes in words 4..7, and for IPv6 the address as text: its length
 * in word 8, its bytes from word 9). Then `onBatch(count)` is called once.
 * At most one batch per event-loop turn: the slots stay untouched until the
 * turn's check phase, so slices of them are valid until the end of the turn
 * (setImmediate callbacks queued during it); the next batch may overwrite
 * them at any later time. Keeping bytes longer (a timer, a queue) means
 * copying them first.
 *
 * Send: JavaScript writes SEND_WORDS u32 per datagram into `sendRecords`
 * (area 0 = sendArea, 1 = recvArea; offset; length; port; address bytes in
 * words 4..7) and calls `flush(handle, count)`. `results` then holds the
 * counts sent, dropped because the socket buffer was full, and refused.
 */
export type Handle = { readonly __udpBatchHandle: unique symbol };

export const RECORD_WORDS: number;
export const SEND_WORDS: number;

/**
 * Creates, binds and starts polling a socket (with SO_REUSEPORT if
 * `reusePort`); throws an Error whose `code` is the errno name and whose
 * `message` starts with the syscall (e.g. "bind EADDRINUSE").
 */
export function open(
  family: 4 | 6, address16: Buffer, port: number, reusePort: boolean, recvBufferBytes: number, sendBufferBytes: number,
  batch: number, slot: number, recvArea: Buffer, records: Buffer, sendArea: Buffer, sendRecords: Buffer,
  results: Buffer, onBatch: (count: number) => void,
): Handle;

export function localPort(handle: Handle): number;

/** Sends the first `count` send records; returns how many went out. */
export function flush(handle: Handle, count: number): number;

/** Stops polling and closes the socket; no onBatch after it. Idempotent. */
export function close(handle: Handle): void;

/**
 * Opens a listening TCP socket (non-blocking, close-on-exec, SO_REUSEADDR,
 * dual-stack on IPv6, SO_REUSEPORT if `reusePort`) bound to the address
 * (16 bytes, as for open) and port, and returns its file descriptor for
 * Node's `server.listen({ fd })`, which then owns it. Throws an Error whose
 * `code` is the errno name (EADDRINUSE, EACCES, EADDRNOTAVAIL, ...).
 */
export function listenTcp(family: 4 | 6, address16: Buffer, port: number, backlog: number, reusePort: boolean): number;

/**
 * Sends one datagram to systemd's notification socket: `address` is
 * $NOTIFY_SOCKET, an absolute path or an abstract name starting with "@"
 * (at most 107 bytes); `message` is 1 to 4096 bytes ("READY=1\n", ...).
 * Never blocks. Throws an Error whose `code` is the errno name (ENOENT,
 * ECONNREFUSED, EAGAIN, ...), or ENOTIFYARG for an address or message out
 * of bounds.
 */
export function sdNotify(address: string, message: Buffer): void;
