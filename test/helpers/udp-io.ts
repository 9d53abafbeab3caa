/**
 * Which UDP transport the UDP and relay-route suites run on. udp.test.ts and
 * relay-routes.test.ts run batched; their -dgram twins import
 * ./udp-io-dgram first, which sets BEACON_TEST_UDP_IO, and run them again on
 * dgram. Batched on a machine where the addon did not build fails at start
 * with the error that says how to build it: the suite never quietly tests
 * dgram twice.
 */
import type { UdpIo } from '../../lib/config/choices';

export const SUITE_UDP_IO: UdpIo = process.env.BEACON_TEST_UDP_IO === 'dgram' ? 'dgram' : 'batched';
