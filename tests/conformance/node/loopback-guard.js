// A loopback-only network guard for the Node client of test_sidecar_clients.py: every socket
// connect to a host that is not loopback is refused inside the process and, when
// CONFORMANCE_GUARD_LOG names a file, recorded there one line each (the test fails on any line
// but the first, `installed`). google-auth-library itself is not modified.
'use strict';

const fs = require('node:fs');
const net = require('node:net');

function record(line) {
  const file = process.env.CONFORMANCE_GUARD_LOG;
  if (file) fs.appendFileSync(file, line + '\n');
}

function loopback(host) {
  if (host === undefined || host === null || host === '' || host === 'localhost' ||
      host === 'localhost.') {
    return true;
  }
  const bare = String(host).replace(/^\[|\]$/g, '').split('%')[0];
  if (net.isIPv4(bare)) return bare.startsWith('127.');
  if (net.isIPv6(bare)) return bare === '::1' || /^::ffff:127\./i.test(bare);
  return false;
}

const realConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function connect(...args) {
  let options = args[0];
  if (Array.isArray(options)) options = options[0]; // net.connect's normalized arguments
  if (typeof options !== 'object' || options === null) {
    options = {port: args[0], host: typeof args[1] === 'string' ? args[1] : undefined};
  }
  if (!options.path && !loopback(options.host)) {
    const what = `connect ${options.host}:${options.port}`;
    record(what);
    // Fail the connection as a refused one would: asynchronously, with an error event.
    const error = new Error(`loopback guard: ${what} refused`);
    process.nextTick(() => this.destroy(error));
    return this;
  }
  return realConnect.apply(this, args);
};

record('installed');
