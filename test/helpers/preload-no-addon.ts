/**
 * Preloaded into a beacon child (NODE_OPTIONS=--require ...) to run it as
 * on a machine where the udp-batch addon was not built: requiring it
 * throws, as it does then.
 */
import Module from 'node:module';

type Load = (request: string, parent: unknown, isMain: boolean) => unknown;
const loader = Module as unknown as { _load: Load };
const load = loader._load;
loader._load = function loadWithoutAddon(request, parent, isMain) {
  if (request === '@beacon/udp-batch') throw new Error(`Cannot find module '${request}' (not built)`);
  return load.call(this, request, parent, isMain);
};
