/**
 * Preloaded into a beacon child (NODE_OPTIONS=--require ...) by the watchdog
 * test: SIGUSR2 blocks the event loop for BEACON_TEST_BLOCK_MS (default
 * 2000) without burning the CPU (Atomics.wait), as a stuck beacon would,
 * and reports on stderr when the block starts and ends, in CLOCK_MONOTONIC
 * microseconds (the fake notify socket's clock).
 */
const blockMs = Number(process.env.BEACON_TEST_BLOCK_MS ?? 2000);
const cell = new Int32Array(new SharedArrayBuffer(4));

function monotonicUsec(): string {
  return String(process.hrtime.bigint() / 1000n);
}

process.on('SIGUSR2', () => {
  process.stderr.write(`loop blocked at ${monotonicUsec()}\n`);
  Atomics.wait(cell, 0, 0, blockMs);
  process.stderr.write(`loop unblocked at ${monotonicUsec()}\n`);
});
