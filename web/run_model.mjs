// Run an ONNX model in onnxruntime-web (WebAssembly backend, one thread) under node and print its
// outputs as JSON: {"outputs": {name: {dtype, shape, data}}, "ms": run time, "ort": version}.
//
// Why node and not only the browser: it is the same onnxruntime-web build and wasm binary the
// browser page loads, so the parity tests can check every zoo model quickly; the browser test then
// only needs to prove the page itself works.
//
// Usage: node web/run_model.mjs model.onnx [--input NAME=file.npy]... [--inputs inputs.json]
//   inputs.json: {"NAME": {"dtype": "float32", "shape": [2, 3], "data": [...]}, ...}
// Exit codes: 0 ok, 1 the model failed to load or run (message on stderr), 2 bad usage.

import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-web';

import { fromJson, readNpy, tensorToJson, toOrt } from './tensors.mjs';

function usage(message) {
  process.stderr.write(`run_model: ${message}\nusage: node web/run_model.mjs model.onnx ` +
    '[--input NAME=file.npy]... [--inputs inputs.json]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { model: null, inputs: {} };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--input') {
      const text = argv[++i] ?? usage('--input needs NAME=file.npy');
      const eq = text.indexOf('=');
      if (eq <= 0) usage(`bad --input ${JSON.stringify(text)}; expected NAME=file.npy`);
      args.inputs[text.slice(0, eq)] = readNpy(text.slice(eq + 1));
    } else if (a === '--inputs') {
      const path = argv[++i] ?? usage('--inputs needs a JSON file');
      const specs = JSON.parse(readFileSync(path, 'utf8'));
      for (const [name, spec] of Object.entries(specs)) args.inputs[name] = fromJson(spec, `${path}: ${name}`);
    } else if (a.startsWith('-')) {
      usage(`unknown option ${a}`);
    } else if (args.model === null) {
      args.model = a;
    } else {
      usage(`unexpected argument ${a}`);
    }
  }
  if (args.model === null) usage('missing the model file');
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = 'error';
  const session = await ort.InferenceSession.create(readFileSync(args.model), { executionProviders: ['wasm'] });
  const missing = session.inputNames.filter((n) => !(n in args.inputs));
  const extra = Object.keys(args.inputs).filter((n) => !session.inputNames.includes(n));
  if (missing.length || extra.length) {
    throw new Error(`inputs do not match the model: expected [${session.inputNames}], ` +
      `missing [${missing}], unknown [${extra}]`);
  }
  const feeds = Object.fromEntries(session.inputNames.map((n) => [n, toOrt(ort, args.inputs[n])]));
  const t0 = performance.now();
  const results = await session.run(feeds);
  const ms = performance.now() - t0;
  const outputs = Object.fromEntries(session.outputNames.map((n) => [n, tensorToJson(results[n])]));
  process.stdout.write(JSON.stringify({ outputs, ms, ort: ort.env.versions.web }) + '\n');
  await session.release();
}

main().catch((e) => {
  process.stderr.write(`run_model: ${e?.message ?? e}\n`);
  process.exit(1);
});
