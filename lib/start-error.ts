/**
 * A start-up failure an operator can act on (address in use, a peer that
 * does not resolve, ...): `message` names the problem and the fix, `code`
 * is stable. Its own module so the CLI can recognise it without loading
 * the beacon (fastify and the rest) for `beacon keys ...`.
 */
export class StartError extends Error {
  override name = 'StartError';
  constructor(message: string, readonly code: string) {
    super(message);
  }
}
