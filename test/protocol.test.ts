/**
 * Unit tests of the codec (docs/protocol.md §1, §2): round trips, byte-exact
 * layouts against hand-written hex, and every short or malformed packet.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  ADDRESS_QUERY_NODE_ID, MAX_SYNC_NODES, PacketType, authChallengeMessage, authReplyMessage, authSignedMessage, canonicalIp,
  decodeBase64Exact, decodePacket, encodeDiscover, encodeDiscoverReply, encodePunchCommand, encodePunchRequest,
  encodeRelay, encodeRelayDeliver, encodeSync, isRelay, parseAuthReply, parseBeaconControl, relayDest,
  relaySender, relayToDeliverInPlace, restartingMessage, type Packet,
} from '../lib/protocol';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// ---- round trips ------------------------------------------------------------

describe('round trip of every packet type', () => {
  const cases: Array<[string, Buffer, Packet]> = [
    ['Discover', encodeDiscover(7777), { type: PacketType.Discover, nodeId: 7777 }],
    ['Discover max node ID', encodeDiscover(0xffffffff), { type: PacketType.Discover, nodeId: 0xffffffff }],
    ['DiscoverReply IPv4', encodeDiscoverReply({ ip: '192.0.2.1', port: 9001 }),
      { type: PacketType.DiscoverReply, endpoint: { ip: '192.0.2.1', port: 9001 } }],
    ['DiscoverReply IPv6', encodeDiscoverReply({ ip: '2001:db8::1', port: 443 }),
      { type: PacketType.DiscoverReply, endpoint: { ip: '2001:db8::1', port: 443 } }],
    ['DiscoverReply port 0 and 65535', encodeDiscoverReply({ ip: '0.0.0.0', port: 65535 }),
      { type: PacketType.DiscoverReply, endpoint: { ip: '0.0.0.0', port: 65535 } }],
    ['PunchRequest', encodePunchRequest(1, 0xffffffff),
      { type: PacketType.PunchRequest, requester: 1, target: 0xffffffff }],
    ['PunchCommand IPv4', encodePunchCommand({ ip: '198.51.100.7', port: 1 }),
      { type: PacketType.PunchCommand, endpoint: { ip: '198.51.100.7', port: 1 } }],
    ['PunchCommand IPv6', encodePunchCommand({ ip: 'fe80::1:2', port: 65535 }),
      { type: PacketType.PunchCommand, endpoint: { ip: 'fe80::1:2', port: 65535 } }],
  ];
  for (const [name, bytes, expected] of cases) {
    test(name, () => assert.deepEqual(decodePacket(bytes), expected));
  }

  test('Relay, with its payload as a view into the input', () => {
    const payload = Buffer.from('overlay frame');
    const bytes = encodeRelay(0x01020304, 0xfffffffe, payload);
    const packet = decodePacket(bytes);
    assert.ok(packet && packet.type === PacketType.Relay);
    assert.equal(packet.sender, 0x01020304);
    assert.equal(packet.dest, 0xfffffffe);
    assert.deepEqual(packet.payload, payload);
    assert.equal(packet.payload.buffer, bytes.buffer, 'payload is sliced, not copied');
  });

  test('Relay with an empty payload and with a maximum overlay frame', () => {
    for (const size of [0, 16 * 1024 + 34]) {
      const payload = Buffer.alloc(size, 0xa5);
      const packet = decodePacket(encodeRelay(5, 6, payload));
      assert.ok(packet && packet.type === PacketType.Relay);
      assert.equal(packet.payload.length, size);
      assert.deepEqual(packet.payload, payload);
    }
  });

  test('RelayDeliver', () => {
    const payload = Buffer.from([0, 1, 2, 0xff]);
    assert.deepEqual(decodePacket(encodeRelayDeliver(42, payload)),
      { type: PacketType.RelayDeliver, sender: 42, payload });
    assert.deepEqual(decodePacket(encodeRelayDeliver(42, Buffer.alloc(0))),
      { type: PacketType.RelayDeliver, sender: 42, payload: Buffer.alloc(0) });
  });

  test('Sync, empty and with node IDs', () => {
    assert.deepEqual(decodePacket(encodeSync(9, [])), { type: PacketType.Sync, beaconId: 9, nodeIds: [] });
    const ids = [1, 7777, 0xffffffff];
    assert.deepEqual(decodePacket(encodeSync(0xcafebabe, ids)), { type: PacketType.Sync, beaconId: 0xcafebabe, nodeIds: ids });
  });

  test('Sync with the largest count a u16 can carry', () => {
    const ids = Array.from({ length: MAX_SYNC_NODES }, (_, i) => i + 1);
    const packet = decodePacket(encodeSync(1, ids));
    assert.ok(packet && packet.type === PacketType.Sync);
    assert.equal(packet.nodeIds.length, MAX_SYNC_NODES);
    assert.equal(packet.nodeIds[MAX_SYNC_NODES - 1], MAX_SYNC_NODES);
  });

  test('encodeSync refuses more node IDs than a u16 count can carry', () => {
    assert.throws(() => encodeSync(1, Array.from({ length: MAX_SYNC_NODES + 1 }, (_, i) => i + 1)), RangeError);
  });
});

// ---- endpoints: IPv4, IPv6, IPv4-mapped IPv6 --------------------------------

describe('DiscoverReply and PunchCommand endpoints', () => {
  for (const [name, encode, type] of [
    ['DiscoverReply', encodeDiscoverReply, PacketType.DiscoverReply],
    ['PunchCommand', encodePunchCommand, PacketType.PunchCommand],
  ] as const) {
    test(`${name}: IPv4 is carried as 4 bytes`, () => {
      const bytes = encode({ ip: '10.1.2.3', port: 80 });
      assert.equal(bytes.length, 8);
      assert.equal(bytes[1], 4);
    });

    test(`${name}: IPv6 is carried as 16 bytes`, () => {
      const bytes = encode({ ip: '2001:db8::dead:beef', port: 80 });
      assert.equal(bytes.length, 20);
      assert.equal(bytes[1], 16);
      assert.deepEqual(decodePacket(bytes), { type, endpoint: { ip: '2001:db8::dead:beef', port: 80 } });
    });

    test(`${name}: IPv4-mapped IPv6 is given as IPv4 (4 bytes)`, () => {
      const mapped = encode({ ip: '::ffff:203.0.113.9', port: 5000 });
      assert.deepEqual(mapped, encode({ ip: '203.0.113.9', port: 5000 }));
      assert.deepEqual(mapped, hex(`${type.toString(16).padStart(2, '0')} 04 cb007109 1388`));
    });

    test(`${name}: 16 bytes of an IPv4-mapped address decode as IPv4`, () => {
      const bytes = hex(`${type.toString(16).padStart(2, '0')} 10 00000000000000000000ffff cb007109 1388`);
      assert.deepEqual(decodePacket(bytes), { type, endpoint: { ip: '203.0.113.9', port: 5000 } });
    });
  }

  test('canonicalIp: mapped IPv6 becomes IPv4, zones are dropped, IPv6 is compressed', () => {
    assert.equal(canonicalIp('::ffff:127.0.0.1'), '127.0.0.1');
    assert.equal(canonicalIp('127.0.0.1'), '127.0.0.1');
    assert.equal(canonicalIp('fe80::1%eth0'), 'fe80::1');
    assert.equal(canonicalIp('2001:0db8:0000:0000:0000:0000:0000:0001'), '2001:db8::1');
  });
});

// ---- byte-exact layouts (big-endian) ----------------------------------------

describe('byte-exact layouts', () => {
  const cases: Array<[string, Buffer, string]> = [
    ['Discover', encodeDiscover(0x01020304), '01 01020304'],
    ['DiscoverReply IPv4', encodeDiscoverReply({ ip: '1.2.3.4', port: 8080 }), '02 04 01020304 1f90'],
    ['DiscoverReply IPv6', encodeDiscoverReply({ ip: '2001:db8::1', port: 443 }),
      '02 10 20010db8000000000000000000000001 01bb'],
    ['PunchRequest', encodePunchRequest(1, 0xdeadbeef), '03 00000001 deadbeef'],
    ['PunchCommand IPv4', encodePunchCommand({ ip: '127.0.0.1', port: 0x1234 }), '04 04 7f000001 1234'],
    ['PunchCommand IPv6', encodePunchCommand({ ip: '::1', port: 65535 }),
      '04 10 00000000000000000000000000000001 ffff'],
    ['Relay', encodeRelay(0x11223344, 0x55667788, Buffer.from('abc')), '05 11223344 55667788 616263'],
    ['Relay, empty payload', encodeRelay(0x0a0b0c0d, 0xffffffff, Buffer.alloc(0)), '05 0a0b0c0d ffffffff'],
    ['RelayDeliver', encodeRelayDeliver(0x11223344, Buffer.from('abc')), '06 11223344 616263'],
    ['RelayDeliver, empty payload', encodeRelayDeliver(1, Buffer.alloc(0)), '06 00000001'],
    ['Sync', encodeSync(0xcafebabe, [1, 0xffffffff]), '07 cafebabe 0002 00000001 ffffffff'],
    ['Sync, empty', encodeSync(0x00000102, []), '07 00000102 0000'],
  ];
  for (const [name, bytes, expected] of cases) {
    test(name, () => assert.equal(bytes.toString('hex'), hex(expected).toString('hex')));
  }

  test('hand-written bytes decode to the expected packets', () => {
    assert.deepEqual(decodePacket(hex('01 00001e61')), { type: PacketType.Discover, nodeId: 7777 });
    assert.deepEqual(decodePacket(hex('03 00001e61 000022b8')), { type: PacketType.PunchRequest, requester: 7777, target: 8888 });
    assert.deepEqual(decodePacket(hex('02 04 c0a80001 2329')), { type: PacketType.DiscoverReply, endpoint: { ip: '192.168.0.1', port: 9001 } });
    assert.deepEqual(decodePacket(hex('07 00000001 0001 00001e61')), { type: PacketType.Sync, beaconId: 1, nodeIds: [7777] });
    const relay = decodePacket(hex('05 00001e61 000022b8 ff00'));
    assert.ok(relay && relay.type === PacketType.Relay);
    assert.deepEqual([relay.sender, relay.dest, relay.payload.toString('hex')], [7777, 8888, 'ff00']);
  });

  test('Relay hot-path readers', () => {
    const relay = hex('05 00001e61 000022b8 ff00');
    assert.equal(isRelay(relay), true);
    assert.equal(relaySender(relay), 7777);
    assert.equal(relayDest(relay), 8888);
  });
});

// ---- short and malformed packets ---------------------------------------------

describe('short or malformed packets decode to undefined', () => {
  test('empty buffer', () => {
    assert.equal(decodePacket(Buffer.alloc(0)), undefined);
    assert.equal(isRelay(Buffer.alloc(0)), false);
  });

  const valid: Array<[string, Buffer]> = [
    ['Discover', encodeDiscover(7777)],
    ['DiscoverReply IPv4', encodeDiscoverReply({ ip: '1.2.3.4', port: 1 })],
    ['DiscoverReply IPv6', encodeDiscoverReply({ ip: '2001:db8::1', port: 1 })],
    ['PunchRequest', encodePunchRequest(7777, 8888)],
    ['PunchCommand IPv4', encodePunchCommand({ ip: '1.2.3.4', port: 1 })],
    ['PunchCommand IPv6', encodePunchCommand({ ip: '2001:db8::1', port: 1 })],
    ['Relay', encodeRelay(7777, 8888, Buffer.alloc(0))],
    ['RelayDeliver', encodeRelayDeliver(7777, Buffer.alloc(0))],
    ['Sync, count 0', encodeSync(1, [])],
    ['Sync, count 3', encodeSync(1, [7, 8, 9])],
  ];
  for (const [name, full] of valid) {
    test(`${name} truncated at each length below its minimum (${full.length})`, () => {
      assert.notEqual(decodePacket(full), undefined, 'the full packet is valid (control)');
      for (let len = 1; len < full.length; len++) {
        assert.equal(decodePacket(full.subarray(0, len)), undefined, `length ${len}: ${full.subarray(0, len).toString('hex')}`);
      }
    });
  }

  test('Relay truncated: the hot-path check agrees', () => {
    const full = encodeRelay(7777, 8888, Buffer.alloc(0));
    assert.equal(isRelay(full), true);
    for (let len = 1; len < full.length; len++) assert.equal(isRelay(full.subarray(0, len)), false, `length ${len}`);
  });

  test('ip_len other than 4 or 16', () => {
    for (const type of [PacketType.DiscoverReply, PacketType.PunchCommand]) {
      for (let ipLen = 0; ipLen <= 0xff; ipLen++) {
        if (ipLen === 4 || ipLen === 16) continue;
        // Long enough for any ip_len, so only the length byte is wrong.
        const bytes = Buffer.alloc(2 + ipLen + 2 + 16, 1);
        bytes[0] = type;
        bytes[1] = ipLen;
        assert.equal(decodePacket(bytes), undefined, `type ${type} ip_len ${ipLen}`);
      }
    }
  });

  test('Sync whose count is larger than the data', () => {
    assert.equal(decodePacket(hex('07 00000001 0001')), undefined);
    assert.equal(decodePacket(hex('07 00000001 0002 00000001')), undefined);
    assert.equal(decodePacket(hex('07 00000001 0002 00000001 000000')), undefined);
    assert.equal(decodePacket(hex('07 00000001 ffff 00000001 00000002')), undefined);
    assert.notEqual(decodePacket(hex('07 00000001 0002 00000001 00000002')), undefined, 'control');
  });

  test('unknown types 0x00 and 0x08..0xff', () => {
    const body = Buffer.alloc(64, 0x11);
    for (const type of [0x00, ...Array.from({ length: 0xff - 0x08 + 1 }, (_, i) => 0x08 + i)]) {
      assert.equal(decodePacket(Buffer.concat([Buffer.from([type]), body])), undefined, `type 0x${type.toString(16)}`);
      assert.equal(decodePacket(Buffer.from([type])), undefined, `type 0x${type.toString(16)} alone`);
    }
  });

  test('zero node IDs', () => {
    assert.equal(decodePacket(encodePunchRequest(0, 8888)), undefined, 'PunchRequest requester 0');
    assert.equal(decodePacket(encodePunchRequest(7777, 0)), undefined, 'PunchRequest target 0');
    assert.equal(decodePacket(encodeRelay(0, 8888, Buffer.from('x'))), undefined, 'Relay sender 0');
    assert.equal(decodePacket(encodeRelay(7777, 0, Buffer.from('x'))), undefined, 'Relay dest 0');
    assert.equal(isRelay(encodeRelay(0, 8888, Buffer.from('x'))), false);
    assert.equal(isRelay(encodeRelay(7777, 0, Buffer.from('x'))), false);
    assert.equal(decodePacket(encodeRelayDeliver(0, Buffer.from('x'))), undefined, 'RelayDeliver sender 0');
  });

  test('a Discover for node 0 is an address query, not malformed', () => {
    assert.deepEqual(decodePacket(hex('01 00000000')), { type: PacketType.Discover, nodeId: ADDRESS_QUERY_NODE_ID });
    assert.equal(ADDRESS_QUERY_NODE_ID, 0);
    assert.equal(decodePacket(hex('01 000000')), undefined, 'still too short at 4 bytes');
  });

  test('a Sync never yields node ID 0', () => {
    const packet = decodePacket(hex('07 00000001 0003 00000007 00000000 00000009'));
    assert.ok(packet && packet.type === PacketType.Sync);
    assert.deepEqual(packet.nodeIds, [7, 9]);
  });

  test('isRelay is false for other types of the same length', () => {
    assert.equal(isRelay(encodePunchRequest(7777, 8888)), false);
  });
});

// ---- relayToDeliverInPlace ---------------------------------------------------

describe('relayToDeliverInPlace', () => {
  for (const [name, payload] of [
    ['empty payload', Buffer.alloc(0)],
    ['short payload', Buffer.from('hello bob')],
    ['maximum overlay frame', Buffer.alloc(16 * 1024 + 34, 0x5a)],
  ] as const) {
    test(`produces exactly encodeRelayDeliver(sender, payload): ${name}`, () => {
      const relay = encodeRelay(0xa1b2c3d4, 0x01020304, payload);
      assert.deepEqual(relayToDeliverInPlace(relay), encodeRelayDeliver(0xa1b2c3d4, payload));
    });
  }

  test('works on a view inside a larger buffer and touches nothing outside it', () => {
    const relay = encodeRelay(7777, 8888, Buffer.from('payload'));
    const backing = Buffer.concat([Buffer.from([0xee, 0xee, 0xee]), relay, Buffer.from([0xdd, 0xdd])]);
    const view = backing.subarray(3, 3 + relay.length);
    const deliver = relayToDeliverInPlace(view);
    assert.deepEqual(deliver, encodeRelayDeliver(7777, Buffer.from('payload')));
    assert.equal(deliver.buffer, backing.buffer, 'no copy');
    assert.deepEqual(backing.subarray(0, 3), Buffer.from([0xee, 0xee, 0xee]));
    assert.deepEqual(backing.subarray(backing.length - 2), Buffer.from([0xdd, 0xdd]));
  });
});

// ---- compat control messages (§2) -------------------------------------------

describe('parseAuthReply', () => {
  const sig = Buffer.alloc(64, 7).toString('base64');
  const good = { type: 'auth_reply', node_id: 7777, public_key: Buffer.alloc(32, 1).toString('base64'), sig };
  const withField = (field: string, value: unknown): string => JSON.stringify({ ...good, [field]: value });
  const without = (field: string): string => {
    const copy: Record<string, unknown> = { ...good };
    delete copy[field];
    return JSON.stringify(copy);
  };

  test('accepts a good reply', () => {
    const result = parseAuthReply(JSON.stringify(good));
    assert.ok(result.ok);
    assert.deepEqual(result.reply, good);
    assert.deepEqual(result.sig, Buffer.alloc(64, 7));
  });

  test('accepts node IDs 1 and 2^32-1, and a reply from authReplyMessage', () => {
    assert.ok(parseAuthReply(withField('node_id', 1)).ok);
    assert.ok(parseAuthReply(withField('node_id', 0xffffffff)).ok);
    assert.ok(parseAuthReply(authReplyMessage({ node_id: 8888, public_key: good.public_key, sig })).ok);
  });

  test('accepts signatures whose base64 uses + and /', () => {
    const plusSlash = Buffer.concat([Buffer.from([0xfb, 0xef, 0xbe, 0xff, 0xff, 0xff]), Buffer.alloc(58)]);
    const text = plusSlash.toString('base64');
    assert.match(text, /\+/);
    assert.match(text, /\//);
    const result = parseAuthReply(withField('sig', text));
    assert.ok(result.ok);
    assert.deepEqual(result.sig, plusSlash);
  });

  test('public_key is informational: a missing one is not a failure', () => {
    const result = parseAuthReply(without('public_key'));
    assert.ok(result.ok);
    assert.equal(result.reply.public_key, '');
  });

  const bad: Array<[string, string, string]> = [
    ['not JSON', 'not json', 'bad_json'],
    ['truncated JSON', JSON.stringify(good).slice(0, -1), 'bad_json'],
    ['empty text', '', 'bad_json'],
    ['an array', JSON.stringify([good]), 'bad_json'],
    ['null', 'null', 'bad_json'],
    ['a string', '"auth_reply"', 'bad_json'],
    ['a number', '7777', 'bad_json'],
    ['wrong type', withField('type', 'auth_challenge'), 'bad_type'],
    ['type missing', without('type'), 'bad_type'],
    ['node_id 0', withField('node_id', 0), 'bad_node_id'],
    ['node_id 2^32', withField('node_id', 2 ** 32), 'bad_node_id'],
    ['node_id negative', withField('node_id', -1), 'bad_node_id'],
    ['node_id float', withField('node_id', 7777.5), 'bad_node_id'],
    ['node_id string', withField('node_id', '7777'), 'bad_node_id'],
    ['node_id null', withField('node_id', null), 'bad_node_id'],
    ['node_id missing', without('node_id'), 'bad_node_id'],
    ['sig not base64', withField('sig', '!'.repeat(88)), 'bad_signature_encoding'],
    ['sig unpadded', withField('sig', sig.replace(/=+$/, '')), 'bad_signature_encoding'],
    ['sig of 63 bytes', withField('sig', Buffer.alloc(63, 7).toString('base64')), 'bad_signature_encoding'],
    ['sig of 65 bytes', withField('sig', Buffer.alloc(65, 7).toString('base64')), 'bad_signature_encoding'],
    ['sig in the URL-safe alphabet (-)', withField('sig', Buffer.concat([Buffer.from([0xfb, 0xef, 0xbe]), Buffer.alloc(61)]).toString('base64url') + '=='), 'bad_signature_encoding'],
    ['sig in the URL-safe alphabet (_)', withField('sig', Buffer.alloc(64, 0xff).toString('base64').replace(/\//g, '_')), 'bad_signature_encoding'],
    ['sig with whitespace', withField('sig', `${sig.slice(0, 40)}\n${sig.slice(40)}`), 'bad_signature_encoding'],
    ['sig a number', withField('sig', 12345), 'bad_signature_encoding'],
    ['sig missing', without('sig'), 'bad_signature_encoding'],
  ];
  for (const [name, text, problem] of bad) {
    test(`rejects ${name} with ${problem}`, () => {
      assert.deepEqual(parseAuthReply(text), { ok: false, problem });
    });
  }

  test('the URL-safe fixtures really differ from standard base64 only in alphabet', () => {
    const urlSafe = Buffer.concat([Buffer.from([0xfb, 0xef, 0xbe]), Buffer.alloc(61)]).toString('base64url');
    assert.match(urlSafe, /-/);
    assert.equal(Buffer.from(urlSafe, 'base64url').length, 64);
  });
});

describe('decodeBase64Exact', () => {
  const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i * 8));

  test('decodes standard padded base64 of exactly the right size', () => {
    assert.deepEqual(decodeBase64Exact(key.toString('base64'), 32), key);
  });

  test('rejects the wrong size', () => {
    assert.equal(decodeBase64Exact(key.toString('base64'), 31), undefined);
    assert.equal(decodeBase64Exact(key.toString('base64'), 33), undefined);
  });

  test('rejects non-strings', () => {
    for (const value of [undefined, null, 32, {}, [key.toString('base64')], key]) {
      assert.equal(decodeBase64Exact(value, 32), undefined, String(value));
    }
  });

  test('rejects unpadded, URL-safe, misplaced padding, whitespace and junk', () => {
    const text = key.toString('base64');
    assert.match(text, /=$/);
    assert.equal(decodeBase64Exact(text.replace(/=+$/, ''), 32), undefined, 'unpadded');
    assert.equal(decodeBase64Exact(key.toString('base64url'), 32), undefined, 'URL-safe, unpadded');
    assert.equal(decodeBase64Exact(`${text.slice(0, 4)}=${text.slice(5)}`, 32), undefined, 'padding inside');
    assert.equal(decodeBase64Exact(`${text}=`, 32), undefined, 'extra padding');
    assert.equal(decodeBase64Exact(` ${text}`, 32), undefined, 'leading space');
    assert.equal(decodeBase64Exact(`${text}\n`, 32), undefined, 'trailing newline');
    assert.equal(decodeBase64Exact(`${text.slice(0, 10)}*${text.slice(11)}`, 32), undefined, 'junk char');
  });

  test('URL-safe characters are rejected even when padded', () => {
    const bytes = Buffer.alloc(32, 0xff);
    const std = bytes.toString('base64');
    assert.match(std, /\//);
    assert.deepEqual(decodeBase64Exact(std, 32), bytes);
    assert.equal(decodeBase64Exact(std.replace(/\//g, '_'), 32), undefined);
    const plus = Buffer.concat([Buffer.from([0xfb, 0xef, 0xbe]), Buffer.alloc(29)]);
    assert.match(plus.toString('base64'), /\+/);
    assert.equal(decodeBase64Exact(plus.toString('base64').replace(/\+/g, '-'), 32), undefined);
  });
});

describe('parseBeaconControl', () => {
  const nonce = 'ab'.repeat(32);

  test('auth_challenge with a 64-char lowercase hex nonce', () => {
    assert.deepEqual(parseBeaconControl(authChallengeMessage(nonce)), { type: 'auth_challenge', nonce });
  });

  test('auth_challenge with a bad nonce is ignored', () => {
    for (const bad of ['AB'.repeat(32), 'ab'.repeat(31), `${'ab'.repeat(32)}0`, 'zz'.repeat(32), '']) {
      assert.equal(parseBeaconControl(authChallengeMessage(bad)), undefined, bad);
    }
    assert.equal(parseBeaconControl('{"type":"auth_challenge"}'), undefined);
    assert.equal(parseBeaconControl('{"type":"auth_challenge","nonce":5}'), undefined);
  });

  test('auth_ok', () => {
    assert.deepEqual(parseBeaconControl('{"type":"auth_ok"}'), { type: 'auth_ok' });
  });

  test('restarting', () => {
    assert.deepEqual(parseBeaconControl(restartingMessage({ reconnect_in_ms: 500, try_for_ms: 30_000 })),
      { type: 'restarting', reconnect_in_ms: 500, try_for_ms: 30_000 });
    assert.equal(parseBeaconControl(restartingMessage({ reconnect_in_ms: -1, try_for_ms: 1 })), undefined);
    assert.equal(parseBeaconControl('{"type":"restarting","reconnect_in_ms":"1","try_for_ms":1}'), undefined);
    assert.equal(parseBeaconControl('{"type":"restarting"}'), undefined);
  });

  test('unknown types and non-objects are ignored', () => {
    for (const text of [
      '{"type":"auth_reply","node_id":1}', '{"type":"hello"}', '{"type":"AUTH_OK"}', '{}', '{"nonce":"x"}',
      '[]', 'null', '"auth_ok"', '1', 'not json', '',
    ]) {
      assert.equal(parseBeaconControl(text), undefined, text);
    }
  });
});

test('authSignedMessage is compat_auth:<node_id decimal>:<nonce>', () => {
  const nonce = '0123456789abcdef'.repeat(4);
  assert.deepEqual(authSignedMessage(4294967295, nonce), Buffer.from(`compat_auth:4294967295:${nonce}`, 'ascii'));
  assert.deepEqual(authSignedMessage(7, nonce), Buffer.from(`compat_auth:7:${nonce}`, 'ascii'));
});
