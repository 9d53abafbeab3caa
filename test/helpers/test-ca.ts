/**
 * A private CA made for one test run with the openssl CLI (Node cannot mint
 * X.509 certificates; .ci/install-deps installs openssl when missing), and
 * server certificates it signs for 127.0.0.1 and localhost. ECDSA P-256,
 * valid one day, files in a temporary directory removed at exit.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool, run, tempDir } from './deploy';

export interface TestCa {
  /** The CA certificate (PEM): what --cluster-tls-ca names. */
  certFile: string;
  keyFile: string;
}

export interface ServerCert {
  certFile: string;
  keyFile: string;
}

async function openssl(args: string[]): Promise<void> {
  const result = await run(requireTool('openssl'), args, { timeoutMs: 20_000 });
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
}

const P256 = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A self-signed CA named `name`. */
export async function makeCa(name: string): Promise<TestCa> {
  const dir = tempDir('ca');
  const ca = { certFile: join(dir, 'ca.pem'), keyFile: join(dir, 'ca-key.pem') };
  await openssl(['req', '-x509', ...P256, '-keyout', ca.keyFile, '-out', ca.certFile, '-days', '1', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  return ca;
}

/** A server certificate for 127.0.0.1 and localhost, signed by `ca`. */
export async function issueServerCert(ca: TestCa): Promise<ServerCert> {
  const dir = tempDir('server-cert');
  const cert = { certFile: join(dir, 'server.pem'), keyFile: join(dir, 'server-key.pem') };
  const csr = join(dir, 'server.csr');
  const ext = join(dir, 'ext.cnf');
  writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await openssl(['req', ...P256, '-keyout', cert.keyFile, '-out', csr, '-subj', '/CN=localhost']);
  await openssl(['x509', '-req', '-in', csr, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-CAcreateserial',
    '-out', cert.certFile, '-days', '1', '-extfile', ext]);
  return cert;
}
