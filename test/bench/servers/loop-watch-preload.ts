/**
 * Loaded with `node -r` into a beacon CLI child (the cluster scenario), so
 * the bench can tell the beacon's own long runs from the machine's other
 * load (servers/loop-watch.ts): the first SIGUSR2 starts the watch, the
 * second prints its figures as one JSON line on stdout, beside the logs.
 */
import { LoopWatch } from './loop-watch';

const RESOLUTION_MS = 5;
let watch: LoopWatch | undefined;

process.on('SIGUSR2', () => {
  if (!watch) {
    watch = new LoopWatch(RESOLUTION_MS);
    return;
  }
  const figures = watch.stop();
  watch = undefined;
  process.stdout.write(`${JSON.stringify({ msg: 'loop-watch', ...figures })}\n`);
});
