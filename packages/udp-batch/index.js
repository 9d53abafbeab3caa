'use strict';
// The compiled binding, built by node-gyp at install. Requiring this module
// throws when it was not built (no compiler, not Linux): callers fall back.
module.exports = require('./build/Release/udp_batch.node');
