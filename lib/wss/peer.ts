/**
 * One daemon attached over the compat WebSocket, after authentication.
 *
 * - Holds the socket, the authenticated node ID and the key it proved.
 * - `send` queues at most `sendBufferBytes`; beyond that the frame is
 *   refused (the caller counts the drop), so a slow reader never grows the
 *   beacon's memory or blocks other peers.
 * - A peer's frames written in one event-loop turn leave in one write: the
 *   TCP socket is corked on the first and uncorked on the next tick.
 */
import type { Socket } from 'node:net';
import type WebSocket from 'ws';
import type { RegisteredKey } from '../auth/keys';
import type { NodeId } from '../protocol';

export class Peer {
  /** Set by any inbound data, ping or pong; cleared by the idle sweep. */
  active = true;
  /** When the idle sweep last found the peer active (ms since epoch). */
  quietSince = Date.now();
  /** Set when a newer connection for the same node took this one's place. */
  replaced = false;
  private corked = false;
  private readonly tcp: Socket | undefined;

  constructor(
    readonly nodeId: NodeId,
    readonly ws: WebSocket,
    readonly key: RegisteredKey,
    readonly clientIp: string,
    readonly clientPort: number,
    private readonly sendBufferBytes: number,
  ) {
    // ws keeps the TCP socket private; corking it is the documented lever
    // for batching many small messages into one write.
    this.tcp = (ws as unknown as { _socket?: Socket })._socket;
  }

  /** Queues one binary message; false when the send buffer is full or the socket is closing. */
  send(frame: Buffer): boolean {
    const ws = this.ws;
    if (ws.readyState !== 1 || ws.bufferedAmount + frame.length > this.sendBufferBytes) return false;
    if (!this.corked && this.tcp) {
      this.corked = true;
      this.tcp.cork();
      process.nextTick(uncork, this);
    }
    ws.send(frame);
    return true;
  }

  /** @internal */
  flush(): void {
    this.corked = false;
    this.tcp?.uncork();
  }
}

function uncork(peer: Peer): void {
  peer.flush();
}
