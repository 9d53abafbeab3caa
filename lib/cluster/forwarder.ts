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
 * - Ownership: a relay handed to `forward` is borrowed (a datagram's bytes
 *   are a slot of the batched transport's receive area, refilled in a later
 *   turn), and a held batch outlives the turn. So each relay is copied once,
 *   when it is queued, into bytes the forwarder owns (a slab per
 *   destination, see SLAB_BYTES); the batch is published as a slice of
 *   them and handed over to NATS with it: the forwarder never writes those
 *   bytes again. No reference to a borrowed relay is kept.
 */
import type { BeaconStats } from '../metrics';
import type { BorrowedBytes } from '../udp/transport';
import type { Instance } from './instances';
import { FRAME_PREFIX_BYTES, writeBatchFrame } from './wire';

/**
 * A batch this large is published at once. NATS refuses messages over its
 * max_payload (1 MiB by default); 256 KiB plus one 64 KiB frame stays well
 * under it while sharing a message among hundreds of typical relays.
 */
export const BATCH_BYTES = 256 * 1024;

/** The largest relay a batch is sized for: a WebSocket message (64 KiB) or a datagram (less). */
const MAX_RELAY_BYTES = 64 * 1024;

/** A batch never grows past this: it leaves once it reaches BATCH_BYTES, and one more frame may take it over. */
const MAX_BATCH_SPAN = BATCH_BYTES + FRAME_PREFIX_BYTES + MAX_RELAY_BYTES;

/**
 * Owned bytes per destination instance that batches are written into, one
 * after another; a new slab replaces it when a whole batch might not fit.
 * Three of the largest batches, or thousands of small ones, fit in one, so
 * a relay costs one copy and no allocation; a published batch keeps its
 * slab alive only until NATS has copied it into its own write buffer.
 */
export const SLAB_BYTES = 1024 * 1024;

/**
 * The coalescing window. Measured at 10k frames/s (npm run bench, cluster
 * scenario): per-turn batches carried 1.5-2.4 frames on a quiet machine,
 * and every NATS message costs a wakeup and a syscall or two in the sender,
 * nats-server and the receiver, which put the hop at 3.6x the CPU of a
 * local relay; a 1 ms window gathers ten or more.
 */
export const COALESCE_MS = 1;

const NO_SLAB = Buffer.alloc(0);

/** What the forwarder keeps for one destination instance (on Instance.outgoing). */
export class OutgoingBatch {
  /** Owned bytes; the batch being filled is slab[start, end). */
  slab = NO_SLAB;
  start = 0;
  end = 0;
  /** Frames in the batch being filled; 0 when none is open. */
  frames = 0;
  /** When a batch last left (performance.now()), for the coalescing window. */
  lastFlushAt = -Infinity;
}

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
    /** Publishes one message it now owns; false if NATS refused it (closed, too large). */
    private readonly publish: (subject: string, data: Uint8Array) => boolean,
    private readonly coalesceMs = COALESCE_MS,
  ) {}

  /** Queues `relay` for `instance`; its bytes are copied now, the reference is not kept. */
  forward(instance: Instance, relay: BorrowedBytes): void {
    if (!this.isConnected()) {
      this.stats.drop('cluster_unavailable');
      return;
    }
    const out = (instance.outgoing ??= new OutgoingBatch());
    const frameBytes = FRAME_PREFIX_BYTES + relay.length;
    if (out.frames !== 0 && out.slab.length - out.end < frameBytes) this.flush(instance); // only a relay over MAX_RELAY_BYTES
    if (out.frames === 0) this.open(instance, out, frameBytes);
    out.end = writeBatchFrame(out.slab, out.end, relay);
    out.frames++;
    if (out.end - out.start >= BATCH_BYTES) this.flush(instance);
  }

  /** Publishes every batch now (before the connection closes). */
  flushAll(): void {
    this.flushTurn();
    this.flushHeld();
  }

  /** Starts a batch for `instance` where a whole one fits, and schedules its flush. */
  private open(instance: Instance, out: OutgoingBatch, frameBytes: number): void {
    const span = Math.max(MAX_BATCH_SPAN, frameBytes);
    if (out.slab.length - out.end < span) {
      // The old slab is never written again: published batches in it stay as NATS got them.
      out.slab = Buffer.allocUnsafe(Math.max(SLAB_BYTES, span));
      out.end = 0;
    }
    out.start = out.end;
    if (performance.now() - out.lastFlushAt >= this.coalesceMs) {
      this.waiting.push(instance);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(this.flushWaiting);
      }
    } else {
      this.held.push(instance);
      this.heldTimer ??= setTimeout(this.flushHeldNow, this.coalesceMs);
    }
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
    const out = instance.outgoing;
    if (!out || out.frames === 0) return;
    const frames = out.frames;
    const batch = out.slab.subarray(out.start, out.end);
    out.frames = 0;
    out.start = out.end;
    out.lastFlushAt = performance.now();
    const { stats } = this;
    if (!this.publish(instance.forwardSubject, batch)) {
      stats.dropped.cluster_unavailable += frames;
      return;
    }
    stats.cluster.batchesOut++;
    stats.cluster.framesOut += frames;
  }
}
