/** The Go daemons suite (go-daemons.test.ts) again, on the dgram transport. */
import './helpers/udp-io-dgram';
import './go-daemons.test';
