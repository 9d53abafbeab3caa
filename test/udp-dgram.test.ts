/** The UDP suite (udp.test.ts) again, on the dgram transport. */
import './helpers/udp-io-dgram';
import './udp.test';
