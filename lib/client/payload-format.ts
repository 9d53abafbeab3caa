/**
 * How the CLI shows a relayed payload: as text when it is printable UTF-8
 * on one line, otherwise as hex with a 0x prefix, so a terminal never
 * receives control characters from the network.
 */
import type { NodeId } from '../protocol';

/** C0 controls except tab, DEL, C1 controls and the Unicode line separators are not printable; invalid UTF-8 is caught by the round trip. */
const NOT_PRINTABLE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]/;

export function isPrintable(payload: Uint8Array): boolean {
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const text = buf.toString('utf8');
  return Buffer.from(text, 'utf8').equals(buf) && !NOT_PRINTABLE.test(text);
}

export function formatPayload(payload: Uint8Array): string {
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  return isPrintable(buf) ? buf.toString('utf8') : `0x${buf.toString('hex')}`;
}

/** `from <sender>: <payload>`, one line without the newline. */
export function formatDelivery(sender: NodeId, payload: Uint8Array): string {
  return `from ${sender}: ${formatPayload(payload)}`;
}
