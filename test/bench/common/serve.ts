/**
 * The child's side of the benchmark's IPC: answer `{ id, cmd, args }` with
 * `{ id, result }` or `{ id, error }`.
 *
 * - `exit` is built in: the handler's `onExit` runs, then the process exits.
 * - A child whose parent goes away (IPC disconnect) exits too, so an
 *   interrupted benchmark leaves no load generators or servers behind.
 */
export type Handler = (args: never) => unknown;

export function serve(handlers: Record<string, Handler>, onExit: () => Promise<void> | void = () => {}): void {
  let exiting = false;
  const exit = async () => {
    if (exiting) return;
    exiting = true;
    const timer = setTimeout(() => process.exit(0), 3_000);
    timer.unref();
    try {
      await onExit();
    } finally {
      process.exit(0);
    }
  };
  process.on('disconnect', () => void exit());
  process.on('message', (msg: { id: number; cmd: string; args: unknown }) => {
    if (msg.cmd === 'exit') return void exit();
    const handler = handlers[msg.cmd];
    if (!handler) return reply(msg.id, undefined, `unknown command ${msg.cmd}`);
    Promise.resolve()
      .then(() => (handler as (args: unknown) => unknown)(msg.args))
      .then((result) => reply(msg.id, result), (err: Error) => reply(msg.id, undefined, err?.stack ?? String(err)));
  });
}

function reply(id: number, result: unknown, error?: string): void {
  if (!process.connected) return;
  process.send!(error === undefined ? { id, result: result ?? null } : { id, error });
}

export function sendReady(extra: Record<string, unknown> = {}): void {
  process.send!({ type: 'ready', pid: process.pid, ...extra });
}
