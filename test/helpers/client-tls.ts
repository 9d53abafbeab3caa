/**
 * TLS for tests: a private CA and a certificate for 127.0.0.1 and
 * localhost signed by it (ECDSA P-256, valid 2020-2120, generated once
 * with openssl for these tests and used nowhere else), and a TLS proxy
 * that terminates TLS in front of a plain beacon the way Caddy does.
 */
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';

export const TEST_CA_PEM = `
-----BEGIN CERTIFICATE-----
MIIBdDCCARqgAwIBAgICEAAwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVYmVhY29u
LWNsaWVudCB0ZXN0IENBMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAw
WjAgMR4wHAYDVQQDDBViZWFjb24tY2xpZW50IHRlc3QgQ0EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATS10ZEn8uHKo2rn2EDaGABh73PtHalHBjLZhx9CTP3tYjO
15NcBB2gaPPDPmYJ2+L9iZv384FlY8FR39RYpTMdo0IwQDAPBgNVHRMBAf8EBTAD
AQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUISe7RoV8qSYv2gdXjNVaqw3r
6QIwCgYIKoZIzj0EAwIDSAAwRQIhAKc3UKlFAEMNIcX5oop9MvKx3jRGTSEPxtKd
hsfFHnO+AiA6EjiFqqopIcFuRzXSrf+Cw15rt+GJl9OI9gxQd1HSKg==
-----END CERTIFICATE-----
`;

export const TEST_CERT_PEM = `
-----BEGIN CERTIFICATE-----
MIIBsjCCAVmgAwIBAgICEAEwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVYmVhY29u
LWNsaWVudCB0ZXN0IENBMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAw
WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAR7LTg/ZW2w5qlGEUbDWpo60X31EA26hitv9OhnhbeDmfH7L4VhXfySwdt7Jh+t
l7kbTQvA1MT4MqI+8wmt/A2Qo4GMMIGJMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2Fs
aG9zdDAJBgNVHRMEAjAAMAsGA1UdDwQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcD
ATAdBgNVHQ4EFgQUHpf1ASdQGR5lA0ERpBgr2VLEUvUwHwYDVR0jBBgwFoAUISe7
RoV8qSYv2gdXjNVaqw3r6QIwCgYIKoZIzj0EAwIDRwAwRAIgcy3b6bHfHfOOMTVd
GfgpZ+/1Or6rYLfDs7ZeNKeFVEcCICJte9aLvvoDOhl80ls7+zoXp7/TFTxIMlC0
UdCkN5dB
-----END CERTIFICATE-----
`;

export const TEST_KEY_PEM = `
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgoGoCdkTENRRE39iA
XP9nBu8baLA/ilO0jlbQpdoWGaahRANCAAR7LTg/ZW2w5qlGEUbDWpo60X31EA26
hitv9OhnhbeDmfH7L4VhXfySwdt7Jh+tl7kbTQvA1MT4MqI+8wmt/A2Q
-----END PRIVATE KEY-----
`;

export interface TlsProxy {
  port: number;
  url: string;
  close(): Promise<void>;
}

/** Listens with TLS on 127.0.0.1:0 and pipes each connection to 127.0.0.1:`targetPort`. */
export async function startTlsProxy(targetPort: number, path = '/v1/compat'): Promise<TlsProxy> {
  const sockets = new Set<net.Socket>();
  const server = tls.createServer({ cert: TEST_CERT_PEM, key: TEST_KEY_PEM }, (client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const drop = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream).pipe(client);
  });
  // A client that refuses our certificate ends the handshake; nothing to do.
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    url: `wss://127.0.0.1:${port}${path}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
