/** The relay-route suite (relay-routes.test.ts) again, on the dgram transport. */
import './helpers/udp-io-dgram';
import './relay-routes.test';
