/** Imported first by the -dgram suites: the suites they import run on the dgram transport. */
process.env.BEACON_TEST_UDP_IO = 'dgram';
