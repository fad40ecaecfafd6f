#!/usr/bin/env node
// An editor's side of relibd, in the shape an editor extension would take:
// it follows relibd's Events stream, reloads a module when asked (an editor
// asks on save), and shows the unload report of the version that went away.
//
// Usage:
//   node client.js [--socket PATH] [--proto DIR]
// then one request per line on stdin:
//   reload NAME [PATH]      reload NAME (from PATH, or the path it was loaded from)
//   status                  list modules
// Every output line is one JSON object (an editor parses them):
//   {"type":"ready"}                            the event stream is live
//   {"type":"event", kind, module, version, ...} every event relibd publishes
//   {"type":"reloaded", module, version, unmapped, report}
//   {"type":"error", request, code, message}    a request failed (relibd's own words)
// Exits 0 at the end of stdin once every request is answered, 1 if relibd is
// unreachable or the stream fails.
'use strict';

const path = require('path');
const readline = require('readline');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const args = {
    socket: process.env.RELIBD_SOCKET ||
      (process.getuid && process.getuid() === 0 ? '/run/relibd/relibd.sock'
        : path.join(process.env.XDG_RUNTIME_DIR || '/tmp', 'relibd.sock')),
    // In a checkout: the repository's proto/; installed: <prefix>/share/relib/proto.
    proto: path.join(__dirname, '..', '..', 'proto'),
  };
  for (let i = 2; i < argv.length; i++) {
    if (argv[i] === '--socket') args.socket = argv[++i];
    else if (argv[i] === '--proto') args.proto = argv[++i];
    else {
      console.error(`usage: client.js [--socket PATH] [--proto DIR] (unknown argument ${argv[i]})`);
      process.exit(2);
    }
  }
  return args;
}

function print(object) { process.stdout.write(JSON.stringify(object) + '\n'); }

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

function main() {
  const args = parseArgs(process.argv);
  const definition = protoLoader.loadSync('relib/v1/relibd.proto', {
    includeDirs: [args.proto],
    keepCase: true,      // field names exactly as in the .proto (unload report keys)
    longs: String,       // uint64 versions and sizes without precision loss
    enums: String,
    defaults: true,
  });
  const { Relibd } = grpc.loadPackageDefinition(definition).relib.v1;
  const client = new Relibd(`unix:${args.socket}`, grpc.credentials.createInsecure());

  let pending = 0;
  let inputEnded = false;
  let stream = null;
  const finishIfDone = () => {
    if (inputEnded && pending === 0) {
      if (stream) stream.cancel();
      client.close();
    }
  };

  // A reload's answer is complete once its RELOADED event has come through the
  // stream too (at most 2 s later): an editor shows both.
  const awaited = new Map();  // "module@version" -> callback
  const seen = new Set();  // RELOADED events that came before their answer
  const awaitEvent = (key, callback) => {
    if (seen.delete(key)) { callback(); return; }
    const timer = setTimeout(() => { awaited.delete(key); callback(); }, 2000);
    awaited.set(key, () => { clearTimeout(timer); awaited.delete(key); callback(); });
  };

  // Requests typed before the stream is live wait, so no event of theirs is missed.
  let live = false;
  const queued = [];
  const run = (line) => {
    const [command, name, file] = line.trim().split(/\s+/);
    if (!command) return;
    pending++;
    const done = () => { pending--; finishIfDone(); };
    if (command === 'reload' && name) {
      client.Reload({ name, path: file ? path.resolve(file) : '' }, (error, response) => {
        if (error) {
          print({ type: 'error', request: line.trim(), code: codeName(error.code), message: error.details });
        } else {
          const report = response.report || {};
          print({
            type: 'reloaded', module: response.module.name, version: response.module.version,
            unmapped: Boolean(report.unmapped), report,
          });
          awaitEvent(`${response.module.name}@${response.module.version}`, done);
          return;
        }
        done();
      });
    } else if (command === 'status') {
      client.Status({}, (error, response) => {
        if (error) print({ type: 'error', request: line.trim(), code: codeName(error.code), message: error.details });
        else print({ type: 'status', modules: response.modules.map((m) => ({ name: m.name, version: m.version, state: m.state })) });
        done();
      });
    } else {
      print({ type: 'error', request: line.trim(), code: 'USAGE', message: 'expected: reload NAME [PATH] | status' });
      done();
    }
  };

  const deadline = new Date(Date.now() + 3000);
  client.waitForReady(deadline, (error) => {
    if (error) {
      print({ type: 'error', request: 'connect', code: 'UNAVAILABLE', message: `cannot reach relibd at ${args.socket}: ${error.message}` });
      process.exit(1);
    }
    if (inputEnded && pending === 0 && queued.length === 0) {
      client.close();
      return;
    }
    stream = client.Events({});
    stream.on('metadata', () => {
      live = true;
      print({ type: 'ready' });
      queued.splice(0).forEach(run);
    });
    stream.on('data', (event) => {
      print({
        type: 'event', kind: event.kind, module: event.module, version: event.version,
        worker_pid: event.worker_pid, message: event.message, unix_ms: event.unix_ms,
        unmapped: event.report ? Boolean(event.report.unmapped) : undefined,
      });
      const key = `${event.module}@${event.version}`;
      if (event.kind === 'EVENT_KIND_RELOADED') {
        if (awaited.has(key)) awaited.get(key)();
        else seen.add(key);
      }
    });
    stream.on('error', (error) => {
      if (error.code === grpc.status.CANCELLED && inputEnded) return;  // our own end
      print({ type: 'error', request: 'events', code: codeName(error.code), message: error.details });
      process.exitCode = 1;
    });
  });

  const input = readline.createInterface({ input: process.stdin });
  input.on('line', (line) => (live ? run(line) : queued.push(line)));
  input.on('close', () => {
    inputEnded = true;
    // Lines still queued run once the stream is live; count them as pending now.
    if (!live && queued.length > 0) return;
    finishIfDone();
  });
}

main();
