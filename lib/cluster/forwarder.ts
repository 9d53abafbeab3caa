/**
 * Forwarding: relays for nodes on other instances go to them over core
 * NATS, at most once like UDP (no JetStream on the data path).
 *
 * - Batched per destination instance per event-loop turn: the first relay
 *   for an instance in a turn schedules one flush (setImmediate) for all,
 *   so many relays share one NATS message; a batch past BATCH_BYTES leaves
 *   at once.
 * - Cut off from NATS, relays are dropped and counted
 *   (`cluster_unavailable`), never queued: the NATS client would buffer
 *   them without bound while it reconnects.
 * - The relay buffers are held until the flush copies them into the batch;
 *   transports hand the router buffers they do not reuse (as Peer batches).
 */
import type { BeaconStats } from '../metrics';
import type { Instance } from './instances';
import { FRAME_PREFIX_BYTES, encodeBatch } from './wire';

/**
 * A batch this large is published at once. NATS refuses messages over its
 * max_payload (1 MiB by default); 256 KiB plus one 64 KiB frame stays well
 * under it while sharing a message among hundreds of typical relays.
 */
export const BATCH_BYTES = 256 * 1024;

export class Forwarder {
  private readonly waiting: Instance[] = [];
  private flushScheduled = false;
  private readonly flushWaiting = () => this.flushAll();

  constructor(
    private readonly stats: BeaconStats,
    private readonly isConnected: () => boolean,
    /** Publishes one message; false if NATS refused it (closed, too large). */
    private readonly publish: (subject: string, data: Uint8Array) => boolean,
  ) {}

  forward(instance: Instance, relay: Buffer): void {
    if (!this.isConnected()) {
      this.stats.drop('cluster_unavailable');
      return;
    }
    if (instance.batch === undefined) {
      instance.batch = [relay];
      instance.batchBytes = relay.length;
      this.waiting.push(instance);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(this.flushWaiting);
      }
    } else {
      instance.batch.push(relay);
      instance.batchBytes += relay.length;
    }
    if (instance.batchBytes + FRAME_PREFIX_BYTES * instance.batch.length >= BATCH_BYTES) this.flush(instance);
  }

  /** Publishes every waiting batch (end of turn, and before the connection closes). */
  flushAll(): void {
    this.flushScheduled = false;
    for (let i = 0; i < this.waiting.length; i++) this.flush(this.waiting[i]!);
    this.waiting.length = 0;
  }

  private flush(instance: Instance): void {
    const relays = instance.batch;
    if (!relays) return;
    const bytes = instance.batchBytes;
    instance.batch = undefined;
    instance.batchBytes = 0;
    const { stats } = this;
    if (!this.publish(instance.forwardSubject, encodeBatch(relays, bytes))) {
      stats.dropped.cluster_unavailable += relays.length;
      return;
    }
    stats.cluster.batchesOut++;
    stats.cluster.framesOut += relays.length;
  }
}
