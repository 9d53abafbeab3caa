/**
 * Tells when a file may have changed, however it was changed.
 *
 * - Watches the file's *directory*, not the file: editors and `beacon keys
 *   add` replace a file by rename (a watch on the file would stay on the old
 *   inode), Kubernetes updates a mounted ConfigMap by swapping a `..data`
 *   symlink (events name `..data`, never the file), and a file that does not
 *   exist yet cannot be watched at all.
 * - An event naming the file always counts. Any other event in the
 *   directory counts only if the file as the path resolves now (symlinks
 *   followed) differs from the last look: another inode, size, mtime or
 *   ctime, or it appeared or vanished. Busy directories cost a `stat`, not a
 *   read.
 * - Events closer together than `debounceMs` become one call of `onChange`
 *   (editors and swaps write in several steps). The caller re-reads the file
 *   and decides whether the content changed.
 * - Not persistent: watching alone never keeps the process alive.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface FileWatchOptions {
  /** Changes closer together than this become one `onChange`. */
  debounceMs: number;
  /** The file may have changed: re-read it. */
  onChange: () => void;
  /** Watching stopped (the directory went away, inotify failed); SIGHUP still works. */
  onError: (err: Error) => void;
}

export interface FileWatch {
  close(): void;
}

/** What `stat` says about the file the path leads to now; '' when there is none. */
function signature(file: string): string {
  try {
    const s = fs.statSync(file);
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
  } catch {
    return '';
  }
}

/** Starts watching `file`; throws (like fs.watch) when its directory cannot be watched. */
export function watchFile(file: string, options: FileWatchOptions): FileWatch {
  const resolved = path.resolve(file);
  const dir = path.dirname(resolved);
  const name = path.basename(resolved);
  let last = signature(resolved);
  let debounce: NodeJS.Timeout | undefined;

  const schedule = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      debounce = undefined;
      last = signature(resolved);
      options.onChange();
    }, options.debounceMs);
    debounce.unref();
  };

  const watcher = fs.watch(dir, { persistent: false }, (_event, changed) => {
    // null: the platform did not say which entry; look at the file then.
    if (changed === name || signature(resolved) !== last) schedule();
  });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(debounce);
    watcher.close();
  };
  watcher.on('error', (err) => {
    close();
    options.onError(err);
  });
  return { close };
}
