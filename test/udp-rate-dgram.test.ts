/** The per-source UDP budget suite (udp-rate.test.ts) again, on the dgram transport. */
import './helpers/udp-io-dgram';
import './udp-rate.test';
