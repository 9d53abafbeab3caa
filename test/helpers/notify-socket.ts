/**
 * A fake systemd notification socket: a Unix datagram socket bound by a
 * small python3 program (Node can bind no such socket), which prints each
 * datagram it receives as one JSON line with the sender's PID (from
 * SCM_CREDENTIALS, as systemd reads it for NotifyAccess=main) and the
 * CLOCK_MONOTONIC time it was sent in microseconds (the clock of
 * MONOTONIC_USEC=): the kernel stamps a Unix datagram in the sender's send
 * call (SO_TIMESTAMPNS), so a receiver that reads it late on a loaded
 * machine does not move it (reading time once made two pings 582 ms and
 * 420 ms apart that were sent 500 ms apart). python3 is on every machine the tests run on
 * (.ci/install-deps installs it for node-gyp). The program exits when its
 * stdin closes, so it never outlives the test process.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { tempDir } from './deploy';

const RECEIVER = String.raw`
import json, os, socket, struct, sys, threading, time
address = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; python names neither it nor SCM_TIMESTAMPNS (the same number)
sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
if not address.startswith("@") and os.path.exists(address):
    os.unlink(address)  # a socket file left by an earlier receiver at this path
sock.bind("\0" + address[1:] if address.startswith("@") else address)
def watch_stdin():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch_stdin, daemon=True).start()
print(json.dumps({"listening": address}), flush=True)
creds = struct.calcsize("3i")
stamp = struct.calcsize("2q")
while True:
    data, ancillary, _flags, _from = sock.recvmsg(65536, socket.CMSG_SPACE(creds) + socket.CMSG_SPACE(stamp))
    pid = None
    late_ns = 0  # how long ago it was sent (CLOCK_REALTIME, as the kernel stamps it)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", payload[:creds])[0]
        elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("2q", payload[:stamp])
            late_ns = max(0, time.time_ns() - (sec * 1_000_000_000 + nsec))
    sent_ns = time.monotonic_ns() - late_ns  # read after time_ns(): if anything, a little later than the send
    print(json.dumps({"usec": sent_ns // 1000, "pid": pid, "text": data.decode("utf-8", "replace")}), flush=True)
`;

export interface Notification {
  /** CLOCK_MONOTONIC when it was sent (the kernel's stamp), in microseconds. */
  usec: number;
  /** The sender's PID as the kernel vouches for it. */
  pid: number | null;
  text: string;
  /** The message's assignments (READY=1 -> { READY: '1' }). */
  fields: Record<string, string>;
}

export class FakeNotifySocket {
  readonly messages: Notification[] = [];
  private readonly waiters = new Set<() => void>();
  private output = '';

  private constructor(readonly address: string, private readonly child: ChildProcessWithoutNullStreams) {}

  /** Binds `address` (default: a path in a fresh temp dir; "@name" for the abstract namespace). */
  static async start(address = join(tempDir('notify'), 'notify.sock')): Promise<FakeNotifySocket> {
    const child = spawn('python3', ['-u', '-c', RECEIVER, address], { stdio: 'pipe' });
    const socket = new FakeNotifySocket(address, child);
    child.stderr.setEncoding('utf8').on('data', (text: string) => { socket.output += text; });
    const listening = new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout }).on('line', (line) => {
        const entry = JSON.parse(line) as { listening?: string; usec: number; pid: number | null; text: string };
        if (entry.listening !== undefined) { resolve(); return; }
        const fields = Object.fromEntries(entry.text.split('\n').filter(Boolean).map((assignment) => {
          const eq = assignment.indexOf('=');
          return [assignment.slice(0, eq), assignment.slice(eq + 1)];
        }));
        socket.messages.push({ usec: entry.usec, pid: entry.pid, text: entry.text, fields });
        for (const wake of [...socket.waiters]) wake();
      });
      child.once('exit', (code) => reject(new Error(`the fake notify socket exited (${code}): ${socket.output}`)));
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    try {
      await listening;
    } finally {
      clearTimeout(timer);
    }
    return socket;
  }

  /**
   * The first message from index `from` on that `predicate` accepts, already
   * received or to come; rejects after `ms` with what did arrive.
   */
  waitFor(predicate: (n: Notification) => boolean, what: string, ms = 15_000, from = 0): Promise<Notification> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.messages.slice(from).find(predicate);
        if (found) { done(); resolve(found); }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} on the notify socket within ${ms} ms; received: ${JSON.stringify(this.messages.map((m) => m.text))}`));
      }, ms);
      const done = () => { clearTimeout(timer); this.waiters.delete(check); };
      this.waiters.add(check);
      check();
    });
  }

  /** Messages that carry `field` (e.g. 'WATCHDOG'). */
  with(field: string): Notification[] {
    return this.messages.filter((m) => m.fields[field] !== undefined);
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.stdin.end(); // the receiver exits when its stdin closes
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
