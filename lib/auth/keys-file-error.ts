/**
 * KeysFileError: what is wrong with the keys file, naming the file, the
 * entry at fault and the fix. Its own module so that the codec, the worker
 * thread that parses on reload and the KeysFile all share it.
 */

/** Stable codes, so callers and tests match on codes, not on text. */
export type KeysFileErrorCode =
  | 'not_found'
  | 'unreadable'
  | 'bad_json'
  | 'not_object'
  | 'bad_node_id'
  | 'bad_public_key'
  | 'identity_file'
  | 'watch_failed';

export class KeysFileError extends Error {
  override name = 'KeysFileError';
  readonly code: KeysFileErrorCode;
  readonly file: string;
  /** What is wrong, without the file and entry (the message has them). */
  readonly problem: string;
  /** The entry (node ID as written) at fault, when one is. */
  readonly entry?: string;

  constructor(code: KeysFileErrorCode, file: string, problem: string, entry?: string) {
    const where = entry === undefined ? `keys file ${file}` : `keys file ${file}: entry ${JSON.stringify(entry)}`;
    super(`${where}: ${problem}`);
    this.code = code;
    this.file = file;
    this.problem = problem;
    if (entry !== undefined) this.entry = entry;
  }
}

/** The KeysFileError for a failed read of the file. */
export function readError(file: string, err: unknown): KeysFileError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') {
    return new KeysFileError('not_found', file,
      `not found (create it with: beacon keys add --keys ${file} --node-id N --public-key B64)`);
  }
  if (code === 'EISDIR') return new KeysFileError('unreadable', file, 'is a directory; give the path of the JSON file');
  const message = err instanceof Error ? err.message : String(err);
  return new KeysFileError('unreadable', file, `cannot be read (${message}); check that the beacon's user may read it`);
}
