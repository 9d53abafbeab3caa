/**
 * WebSocket frames as the beacon's side of the compat connection reads and
 * writes them (RFC 6455 §5), without extensions.
 *
 * - Reading: `frameHeader` decodes a client frame's header where it starts
 *   and says what is wrong with it, if anything, with the close code ws
 *   gave it (1002 a protocol error, 1009 over the size limit), before any
 *   of its payload is buffered. `unmask` undoes the client's mask in place.
 * - Writing: server frames are never masked; `serverFrame` builds a whole
 *   one (text, ping, pong, close), `writeBinaryHeader` a binary header
 *   into a batch.
 * - Pure byte work: no sockets, no state.
 */
import { MAX_MESSAGE_BYTES } from '../protocol';

export const OPCODE_CONTINUATION = 0x0;
export const OPCODE_TEXT = 0x1;
export const OPCODE_BINARY = 0x2;
export const OPCODE_CLOSE = 0x8;
export const OPCODE_PING = 0x9;
export const OPCODE_PONG = 0xa;

/** Close codes for what a client sent wrong (as ws closes with them). */
export const PROTOCOL_ERROR = 1002;
export const INVALID_PAYLOAD = 1007;
export const MESSAGE_TOO_BIG = 1009;
/** The close codes reported when a close frame had no code, and when there was no close frame at all. */
export const NO_STATUS = 1005;
export const ABNORMAL_CLOSURE = 1006;

/** What `frameHeader` found; `problem` is a close code, 0 when the header is acceptable. */
export interface FrameHeader {
  fin: boolean;
  opcode: number;
  /** Header bytes including the 4 of the mask. */
  headerBytes: number;
  payloadBytes: number;
  problem: number;
}

/** Reused by every call: the header is read, acted on and forgotten before the next. */
const header: FrameHeader = { fin: false, opcode: 0, headerBytes: 0, payloadBytes: 0, problem: 0 };

/**
 * Decodes the header of the client frame at `at` (bytes up to `end`), or
 * returns undefined if fewer bytes than the header are there yet.
 * `messageBytes` is what the message it belongs to holds already
 * (fragments), `fragmented` whether one is open: both decide whether the
 * frame may follow. The result is shared: use it before the next call.
 */
export function frameHeader(buf: Buffer, at: number, end: number, fragmented: boolean, messageBytes: number): FrameHeader | undefined {
  if (end - at < 2) return undefined;
  const b0 = buf[at]!;
  const b1 = buf[at + 1]!;
  let length = b1 & 0x7f;
  let bytes = 6;
  if (length === 126) {
    if (end - at < 4) return undefined;
    length = buf.readUInt16BE(at + 2);
    bytes = 8;
  } else if (length === 127) {
    if (end - at < 10) return undefined;
    // Above 2^32 is over any limit; the low word alone would wrap.
    length = buf.readUInt32BE(at + 2) === 0 ? buf.readUInt32BE(at + 6) : Number.MAX_SAFE_INTEGER;
    bytes = 14;
  }
  const opcode = b0 & 0x0f;
  const fin = (b0 & 0x80) !== 0;
  header.fin = fin;
  header.opcode = opcode;
  header.headerBytes = bytes;
  header.payloadBytes = length;
  header.problem = headerProblem(b0, b1, opcode, fin, length, fragmented, messageBytes);
  return header;
}

function headerProblem(b0: number, b1: number, opcode: number, fin: boolean, length: number, fragmented: boolean, messageBytes: number): number {
  if ((b0 & 0x70) !== 0) return PROTOCOL_ERROR; // RSV1-3: no extension was agreed
  if (opcode === OPCODE_CONTINUATION) {
    if (!fragmented) return PROTOCOL_ERROR;
  } else if (opcode === OPCODE_TEXT || opcode === OPCODE_BINARY) {
    if (fragmented) return PROTOCOL_ERROR;
  } else if (opcode === OPCODE_CLOSE || opcode === OPCODE_PING || opcode === OPCODE_PONG) {
    if (!fin || length > 125 || (opcode === OPCODE_CLOSE && length === 1)) return PROTOCOL_ERROR;
  } else {
    return PROTOCOL_ERROR;
  }
  if ((b1 & 0x80) === 0) return PROTOCOL_ERROR; // a client must mask
  if (opcode < OPCODE_CLOSE && messageBytes + length > MAX_MESSAGE_BYTES) return MESSAGE_TOO_BIG;
  return 0;
}

/**
 * bufferutil (an optional dependency) unmasks 8 bytes at a time in native
 * code; below about 256 bytes the call and its two views cost more than
 * the JS loop (measured: 73 B 76 ns in JS, 190 ns native; 1209 B 2.4 µs in
 * JS, 0.3 µs native).
 */
const native = loadBufferUtil();
const NATIVE_UNMASK_BYTES = 256;

function loadBufferUtil(): ((buffer: Buffer, mask: Buffer) => void) | undefined {
  if (process.env.WS_NO_BUFFER_UTIL) return undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('bufferutil') as { unmask: (buffer: Buffer, mask: Buffer) => void }).unmask;
  } catch {
    return undefined;
  }
}

/** XORs `length` bytes at `at` with the 4-byte mask at `maskAt`, in place. */
export function unmask(buf: Buffer, maskAt: number, at: number, length: number): void {
  if (native !== undefined && length >= NATIVE_UNMASK_BYTES) {
    native(buf.subarray(at, at + length), buf.subarray(maskAt, maskAt + 4));
    return;
  }
  const m0 = buf[maskAt]!;
  const m1 = buf[maskAt + 1]!;
  const m2 = buf[maskAt + 2]!;
  const m3 = buf[maskAt + 3]!;
  const end = at + length;
  let i = at;
  for (; i + 3 < end; i += 4) {
    buf[i] ^= m0;
    buf[i + 1] ^= m1;
    buf[i + 2] ^= m2;
    buf[i + 3] ^= m3;
  }
  if (i < end) buf[i++] ^= m0;
  if (i < end) buf[i++] ^= m1;
  if (i < end) buf[i] ^= m2;
}

/** Whether a close frame may carry `code` (as ws checks it). */
export function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);
}

/** Size of a server (unmasked) frame header for a payload of `length`. */
export function serverHeaderBytes(length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10;
}

/** Writes a final, unmasked header of `opcode` at `at`; returns where the payload goes. */
export function writeServerHeader(out: Buffer, at: number, opcode: number, length: number): number {
  out[at] = 0x80 | opcode;
  if (length < 126) {
    out[at + 1] = length;
    return at + 2;
  }
  if (length < 65536) {
    out[at + 1] = 126;
    out.writeUInt16BE(length, at + 2);
    return at + 4;
  }
  out[at + 1] = 127;
  out.writeUInt32BE(0, at + 2);
  out.writeUInt32BE(length, at + 6);
  return at + 10;
}

/** Writes a binary frame's header at `at` (batches of relayed frames); returns where the payload goes. */
export function writeBinaryHeader(out: Buffer, at: number, length: number): number {
  return writeServerHeader(out, at, OPCODE_BINARY, length);
}

/** One whole server frame of `opcode` carrying `payload` (text as UTF-8). */
export function serverFrame(opcode: number, payload: Buffer | string): Buffer {
  const length = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  const out = Buffer.allocUnsafe(serverHeaderBytes(length) + length);
  const at = writeServerHeader(out, 0, opcode, length);
  if (typeof payload === 'string') out.write(payload, at, 'utf8');
  else payload.copy(out, at);
  return out;
}

/** A close frame: empty without a code, else the code and a reason of at most 123 bytes. */
export function closeFrame(code: number | undefined, reason = ''): Buffer {
  if (code === undefined) return serverFrame(OPCODE_CLOSE, Buffer.alloc(0));
  const reasonBytes = Math.min(Buffer.byteLength(reason), 123);
  const payload = Buffer.allocUnsafe(2 + reasonBytes);
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2, reasonBytes, 'utf8');
  return serverFrame(OPCODE_CLOSE, payload);
}
