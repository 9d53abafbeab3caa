/**
 * Forwarding: relays for nodes on other instances go to them over core
 * NATS, at most once like UDP (no JetStream on the data path).
 *
 * - Batched per destination instance per event-loop turn: the first relay
 *   for an instance in a turn schedules one flush (setImmediate) for all,
 *   so many relays share one NATS message; a batch past BATCH_BYTES leaves
 *   at once.
 * - Coalesced when frames keep coming: a batch for an instance that had
 *   one leave less than COALESCE_MS ago waits for the rest of that window,
 *   gathering the frames of several turns. A quiet link pays no delay; a
 *   busy one pays at most COALESCE_MS for several times fewer messages.
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

/**
 * The coalescing window. Measured at 10k frames/s (npm run bench, cluster
 * scenario): per-turn batches carried 1.5-2.4 frames on a quiet machine,
 * and every NATS message costs a wakeup and a syscall or two in the sender,
 * nats-server and the receiver, which put the hop at 3.6x the CPU of a
 * local relay; a 1 ms window gathers ten or more.
 */
export const COALESCE_MS = 1;

export class Forwarder {
  /** Batches leaving at the end of this turn. */
  private readonly waiting: Instance[] = [];
  private flushScheduled = false;
  private readonly flushWaiting = () => this.flushTurn();
  /** Batches waiting for their coalescing window to end. */
  private readonly held: Instance[] = [];
  private heldTimer: NodeJS.Timeout | undefined;
  private readonly flushHeldNow = () => this.flushHeld();

  constructor(
    private readonly stats: BeaconStats,
    private readonly isConnected: () => boolean,
    /** Publishes one message; false if NATS refused it (closed, too large). */
    private readonly publish: (subject: string, data: Uint8Array) => boolean,
    private readonly coalesceMs = COALESCE_MS,
  ) {}

  forward(instance: Instance, relay: Buffer): void {
    if (!this.isConnected()) {
      this.stats.drop('cluster_unavailable');
      return;
    }
    if (instance.batch === undefined) {
      instance.batch = [relay];
      instance.batchBytes = relay.length;
      if (performance.now() - instance.lastFlushAt >= this.coalesceMs) {
        this.waiting.push(instance);
        if (!this.flushScheduled) {
          this.flushScheduled = true;
          setImmediate(this.flushWaiting);
        }
      } else {
        this.held.push(instance);
        this.heldTimer ??= setTimeout(this.flushHeldNow, this.coalesceMs);
      }
    } else {
      instance.batch.push(relay);
      instance.batchBytes += relay.length;
    }
    if (instance.batchBytes + FRAME_PREFIX_BYTES * instance.batch.length >= BATCH_BYTES) this.flush(instance);
  }

  /** Publishes every batch now (before the connection closes). */
  flushAll(): void {
    this.flushTurn();
    this.flushHeld();
  }

  private flushTurn(): void {
    this.flushScheduled = false;
    for (let i = 0; i < this.waiting.length; i++) this.flush(this.waiting[i]!);
    this.waiting.length = 0;
  }

  private flushHeld(): void {
    clearTimeout(this.heldTimer);
    this.heldTimer = undefined;
    for (let i = 0; i < this.held.length; i++) this.flush(this.held[i]!);
    this.held.length = 0;
  }

  private flush(instance: Instance): void {
    const relays = instance.batch;
    if (!relays) return;
    const bytes = instance.batchBytes;
    instance.batch = undefined;
    instance.batchBytes = 0;
    instance.lastFlushAt = performance.now();
    const { stats } = this;
    if (!this.publish(instance.forwardSubject, encodeBatch(relays, bytes))) {
      stats.dropped.cluster_unavailable += relays.length;
      return;
    }
    stats.cluster.batchesOut++;
    stats.cluster.framesOut += relays.length;
  }
}
