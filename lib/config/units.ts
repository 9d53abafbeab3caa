/**
 * Parsers for the values operators type: durations, sizes, HOST:PORT.
 * Each throws an Error whose message names the value and the expected form,
 * so the CLI can print it as is.
 */

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** How a duration is written, for help texts and error messages. */
export const DURATION_FORMS = '500ms, 10s, 2m, 1h';

/**
 * `500ms`, `10s`, `2m`, `1h`. The unit is required: a bare `90` used to
 * mean 90 ms, which nobody who types `--idle-timeout 90` means.
 */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!match) throw new Error(`"${text}" is not a duration: use a number with ms, s, m or h, e.g. ${DURATION_FORMS}`);
  if (match[2] === undefined) {
    throw new Error(`"${text}" has no unit: write it with ms, s, m or h (e.g. ${match[1]}s or ${match[1]}ms; ${DURATION_FORMS})`);
  }
  const ms = Math.round(Number(match[1]) * DURATION_UNITS[match[2]]);
  if (ms <= 0) throw new Error(`"${text}" is not a positive duration: use e.g. ${DURATION_FORMS}`);
  return ms;
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kib: 1024, kb: 1024, m: 1024 ** 2, mib: 1024 ** 2, mb: 1024 ** 2 };

/** `65536`, `256KiB`, `1MiB` (binary units; K and KB are taken as KiB). */
export function parseSize(text: string): number {
  const match = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(text);
  const unit = match ? SIZE_UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new Error(`"${text}" is not a size: use bytes or KiB/MiB, e.g. 262144 or 256KiB`);
  const bytes = Number(match[1]) * unit;
  if (bytes <= 0) throw new Error(`"${text}" is not a positive size`);
  return bytes;
}

/** `32MiB/s`, `512KiB/s`, `1048576` (bytes per second; the `/s` may be left out). */
export function parseByteRate(text: string): number {
  const match = /^\s*(.*?)\s*(?:\/\s*s)?\s*$/i.exec(text);
  try {
    return parseSize(match?.[1] ?? text);
  } catch {
    throw new Error(`"${text}" is not a rate: use bytes or KiB/MiB per second, e.g. 32MiB/s`);
  }
}

/**
 * `N` or `N/s`: a whole number per second from `min` to `max`. `notARate`
 * ends the error for text of another form ("is not ...").
 */
function parseWholePerSecond(text: string, notARate: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const match = /^\s*(\d+)\s*(?:\/\s*s)?\s*$/i.exec(text);
  if (!match) throw new Error(`"${text}" is not ${notARate}`);
  const n = Number(match[1]);
  if (n < min || n > max) {
    throw new Error(`"${text}" is out of range: use ${max === Number.MAX_SAFE_INTEGER ? `${min}/s or more` : `${min}/s to ${max}/s`}`);
  }
  return n;
}

/** `10` or `10/s`: whole peers per second, 0 (off) to 10,000. */
export function parsePeerRate(text: string): number {
  return parseWholePerSecond(text, 'a rate: use peers per second, e.g. 10/s (0 turns it off)', 0, 10_000);
}

/** `10%`: a share, as a fraction (0.1); 0% to 1000%. */
export function parsePercent(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(text);
  if (!match) throw new Error(`"${text}" is not a percentage: use e.g. 10%`);
  const percent = Number(match[1]);
  if (percent > 1000) throw new Error(`"${text}" is out of range: use 0% to 1000%`);
  return percent / 100;
}

/** `10000` or `10000/s`: whole packets per second. */
export function parsePacketRate(text: string): number {
  return parseWholePerSecond(text, 'a packet rate: use packets per second, e.g. 10000/s', 1);
}

/** `50000` or `50000/s`: whole frames per second. */
export function parseFrameRate(text: string): number {
  return parseWholePerSecond(text, 'a frame rate: use frames per second, e.g. 50000/s', 1);
}

/** A positive integer, at most `max`. */
export function parsePositiveInt(text: string, max = Number.MAX_SAFE_INTEGER): number {
  return parseWholeNumber(text, 1, max);
}

/** A whole number from `min` to `max`; with a `max` given, a text that is no number is told the range too. */
export function parseWholeNumber(text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const range = `${min} to ${max}`;
  if (!/^\s*\d+\s*$/.test(text)) {
    throw new Error(`"${text}" is not a whole number${max === Number.MAX_SAFE_INTEGER ? '' : `: use ${range}`}`);
  }
  const n = Number(text);
  if (n < min || n > max) throw new Error(`"${text}" is out of range: use ${range}`);
  return n;
}

export interface HostPort {
  host: string;
  port: number;
}

/** `127.0.0.1:8443`, `[::1]:9001`, `localhost:0`; `example` is shown in the error (a UDP address gets a UDP port). */
export function parseHostPort(text: string, example = '127.0.0.1:8443'): HostPort {
  const match = /^\s*(?:\[([^\]]+)\]|([^:\s[\]]+)):(\d+)\s*$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    const examplePort = example.slice(example.lastIndexOf(':') + 1);
    throw new Error(`"${text}" is not HOST:PORT: use e.g. ${example} or [::1]:${examplePort} (port 0 to 65535)`);
  }
  return { host: match[1] ?? match[2], port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

const CLUSTER_URL_SCHEMES = ['nats:', 'tls:'];

/** `nats://host:4222,tls://user:password@host:4222`: NATS server URLs, kept as given. */
export function parseClusterUrls(text: string): string[] {
  const urls = text.split(',').map((part) => part.trim()).filter(Boolean);
  if (urls.length === 0) throw new Error(`"${text}" names no NATS server: use nats://HOST:PORT, e.g. nats://127.0.0.1:4222`);
  for (const url of urls) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(url);
    } catch {
      parsed = undefined;
    }
    if (!parsed || !CLUSTER_URL_SCHEMES.includes(parsed.protocol) || !parsed.hostname || parsed.pathname.replace(/^\/$/, '') !== '') {
      throw new Error(`"${redactUrl(url)}" is not a NATS server URL: use nats://HOST:PORT or tls://HOST:PORT (user:password@ optional)`);
    }
  }
  return urls;
}

/** A URL as it may be logged: any password, or a token (`nats://TOKEN@host`), replaced by `***`. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z]+:\/\/[^:@/]*):[^@/]*@/i, '$1:***@').replace(/^([a-z]+:\/\/)[^:@/]+@/i, '$1***@');
}
