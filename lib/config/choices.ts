/**
 * The option lists the flags (cmd/options.ts), the configuration and the
 * parts that act on them share: the values each flag accepts, in one place
 * below every part that reads them, so the configuration needs none of
 * those parts to validate itself.
 */

/** What `--udp-io` asks for: batched where the udp-batch addon is built (auto), or one of them. */
export const UDP_IO_CHOICES = ['auto', 'batched', 'dgram'] as const;
export type UdpIoChoice = (typeof UDP_IO_CHOICES)[number];
/** What the beacon runs. */
export type UdpIo = Exclude<UdpIoChoice, 'auto'>;

/** `--log-level`: pino's levels. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
