// castml web page: load model.json + model.onnx, build one field per input (named as in Python),
// run in onnxruntime-web (WebAssembly, one thread) and show outputs and timing.
//
// Why plain modules and no bundler: `castml web` copies this file as is next to the
// onnxruntime-web files from web/node_modules, so the folder works offline from any static server.
// Tests drive the page through the same controls a person uses (each input's mode select and
// textarea, the Run button) and read `.output-values` textareas, which hold every output value.

import * as ort from './ort/ort.wasm.min.mjs';

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
  uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array, float16: Uint16Array,
};
const $ = (id) => document.getElementById(id);

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

// float16 travels as raw bits (Uint16Array), as onnxruntime-web expects
function toHalf(v) {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 112;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign | (exp < -10 ? 0 : ((mant | 0x800000) >>> (1 - exp)) >>> 13);
  if (exp >= 31) return sign | 0x7c00 | (((x >>> 23) & 0xff) === 0xff && mant ? 0x200 : 0);
  return sign | (exp << 10) | (mant >>> 13);
}

function fromHalf(h) {
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// a small seeded generator (mulberry32) and Box-Muller, so "random" inputs are reproducible
function rng(seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return { uniform, normal };
}

function makeArray(dtype, values) {
  const Arr = ARRAYS[dtype];
  if (dtype === 'int64' || dtype === 'uint64') return Arr.from(values, (v) => BigInt(Math.trunc(Number(v))));
  if (dtype === 'float16') return Arr.from(values, (v) => toHalf(Number(v)));
  if (dtype === 'bool') return Arr.from(values, (v) => (v === true || v === 'true' || Number(v) !== 0 ? 1 : 0));
  return Arr.from(values, Number);
}

function parseValues(text) {
  const t = text.trim();
  if (!t) return [];
  if (t.startsWith('[')) return JSON.parse(t).flat(Infinity);
  return t.split(/[\s,]+/).filter((s) => s.length);
}

function concreteShape(spec, dims) {
  return spec.shape.map((d) => {
    if (typeof d === 'number') return d;
    if (!(d in dims)) throw new Error(`${spec.name}: no value for dimension ${d}`);
    return dims[d];
  });
}

class InputField {
  constructor(spec, index) {
    this.spec = spec;
    this.index = index;
    this.image = null;
    const box = document.createElement('div');
    box.className = 'tensor input';
    box.dataset.name = spec.name;
    const modes = ['random', 'typed'];
    if (spec.default) modes.unshift('file');
    if (spec.image) modes.push('image');
    box.innerHTML = `<div class="row"><span class="name"></span><span class="type"></span>
      <select class="mode"></select><input class="image-file" type="file" accept="image/*" hidden>
      <canvas class="preview" hidden></canvas></div>
      <textarea class="values" rows="2" placeholder="values: JSON list or numbers separated by spaces/commas"></textarea>`;
    box.querySelector('.name').textContent = spec.name;
    box.querySelector('.type').textContent = `${spec.dtype}[${spec.shape.join(', ')}]`;
    this.mode = box.querySelector('.mode');
    for (const m of modes) this.mode.add(new Option(m === 'file' ? `file (${spec.default.file})` : m, m));
    this.values = box.querySelector('.values');
    this.values.hidden = this.mode.value !== 'typed';
    const file = box.querySelector('.image-file');
    this.canvas = box.querySelector('.preview');
    this.mode.addEventListener('change', () => {
      this.values.hidden = this.mode.value !== 'typed';
      file.hidden = this.mode.value !== 'image';
      this.canvas.hidden = this.mode.value !== 'image' || !this.image;
    });
    file.addEventListener('change', () => this.loadImage(file.files[0]));
    this.element = box;
  }

  async loadImage(blob) {
    const [, c, h, w] = this.spec.shape;
    const bitmap = await createImageBitmap(blob);
    this.canvas.width = w;
    this.canvas.height = h;
    const ctx = this.canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0, w, h);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const planes = new Float32Array(c * h * w);
    for (let p = 0; p < h * w; p++) {
      const [r, g, b] = [rgba[4 * p], rgba[4 * p + 1], rgba[4 * p + 2]].map((v) => v / 255);
      if (c === 1) planes[p] = 0.299 * r + 0.587 * g + 0.114 * b;
      else [r, g, b].forEach((v, k) => { planes[k * h * w + p] = v; });
    }
    this.image = planes;
    this.canvas.hidden = false;
  }

  async tensor(dims, seed) {
    const { dtype, name } = this.spec;
    const mode = this.mode.value;
    if (mode === 'file') {
      const bytes = await (await fetch(this.spec.default.file)).arrayBuffer();
      return new ort.Tensor(dtype, new ARRAYS[dtype](bytes), this.spec.default.shape);
    }
    const shape = concreteShape(this.spec, dims);
    const n = shape.reduce((a, b) => a * b, 1);
    let values;
    if (mode === 'typed') {
      values = parseValues(this.values.value);
      if (values.length !== n) throw new Error(`${name}: shape [${shape}] needs ${n} values, got ${values.length}`);
    } else if (mode === 'image') {
      if (!this.image) throw new Error(`${name}: choose an image file first`);
      values = Array.from({ length: n }, (_, i) => this.image[i % this.image.length]);
    } else {
      const r = rng(seed * 1000003 + this.index);
      const isFloat = dtype.startsWith('float');
      values = Array.from({ length: n }, () => (isFloat ? r.normal() : dtype === 'bool' ? r.uniform() < 0.5
        : Math.floor(r.uniform() * 10)));
    }
    return new ort.Tensor(dtype, makeArray(dtype, values), shape);
  }
}

function plain(tensor, dtype) {
  if (dtype === 'float16') return Array.from(tensor.data, fromHalf);
  if (dtype === 'int64' || dtype === 'uint64') return Array.from(tensor.data, (v) => v.toString());
  if (dtype === 'bool') return Array.from(tensor.data, Boolean);
  return Array.from(tensor.data, (v) => (Number.isFinite(v) ? v : String(v)));
}

function showOutput(spec, tensor) {
  const values = plain(tensor, spec.dtype);
  const box = document.createElement('div');
  box.className = 'tensor output';
  box.dataset.name = spec.name;
  box.innerHTML = '<div class="row"><span class="name"></span><span class="type"></span></div>' +
    '<div class="summary"></div><textarea class="output-values" rows="3" readonly></textarea>';
  box.querySelector('.name').textContent = spec.name;
  box.querySelector('.type').textContent = `${spec.dtype}[${tensor.dims.join(', ')}]`;
  const nums = values.map(Number).filter(Number.isFinite);
  const lines = [`first values: ${values.slice(0, 8).map((v) => (typeof v === 'number' ? +v.toPrecision(6) : v)).join(', ')}` +
    (values.length > 8 ? ', ...' : '')];
  if (nums.length) lines.push(`min ${Math.min(...nums).toPrecision(6)}, max ${Math.max(...nums).toPrecision(6)}`);
  if (tensor.dims.length === 2 && nums.length === values.length) {
    const [rows, cols] = tensor.dims;
    const argmax = Array.from({ length: rows }, (_, r) => {
      const row = nums.slice(r * cols, (r + 1) * cols);
      return row.indexOf(Math.max(...row));
    });
    lines.push(`argmax per row: ${argmax.slice(0, 16).join(', ')}${rows > 16 ? ', ...' : ''}`);
  }
  box.querySelector('.summary').textContent = lines.join('\n');
  box.querySelector('.output-values').value = JSON.stringify(values);
  $('outputs').append(box);
  return { dtype: spec.dtype, shape: Array.from(tensor.dims), data: values };
}

async function main() {
  ort.env.wasm.wasmPaths = new URL('./ort/', window.location.href).href;
  ort.env.wasm.numThreads = 1;
  const manifest = await (await fetch('model.json')).json();
  $('title').textContent = manifest.title;
  $('subtitle').textContent = `${manifest.source} - onnxruntime-web ${ort.env.versions.web} (WebAssembly, 1 thread)`;
  const dimFields = {};
  for (const [name, value] of Object.entries(manifest.dims)) {
    $('dims-section').hidden = false;
    const label = document.createElement('label');
    label.textContent = `${name} `;
    const field = Object.assign(document.createElement('input'), { type: 'number', min: 1, value, id: `dim-${name}` });
    label.append(field);
    $('dims').append(label);
    dimFields[name] = field;
  }
  const fields = manifest.inputs.map((spec, i) => new InputField(spec, i));
  fields.forEach((f) => $('inputs').append(f.element));
  const t0 = performance.now();
  const session = await ort.InferenceSession.create('model.onnx', { executionProviders: ['wasm'] });
  const loadMs = performance.now() - t0;
  setStatus('ready', `ready (model loaded in ${loadMs.toFixed(1)} ms)`);

  async function run() {
    $('run').disabled = true;
    setStatus('running', 'running...');
    $('outputs').replaceChildren();
    try {
      const dims = Object.fromEntries(Object.entries(dimFields).map(([k, f]) => [k, Number(f.value)]));
      const seed = Number($('seed').value);
      const feeds = {};
      for (const f of fields) feeds[f.spec.name] = await f.tensor(dims, seed);
      const repeat = Math.max(1, Number($('repeat').value) || 1);
      let results;
      const times = [];
      for (let i = 0; i < repeat; i++) {
        const t = performance.now();
        results = await session.run(feeds);
        times.push(performance.now() - t);
      }
      const best = Math.min(...times);
      const mean = times.reduce((a, b) => a + b, 0) / times.length;
      $('timing').textContent = `run: ${mean.toFixed(2)} ms mean, ${best.toFixed(2)} ms best over ${repeat} ` +
        `run(s); model load ${loadMs.toFixed(1)} ms`;
      const outputs = {};
      for (const spec of manifest.outputs) outputs[spec.name] = showOutput(spec, results[spec.name]);
      window.castml.lastOutputs = outputs;
      window.castml.lastTimes = times;
      setStatus('done', 'done');
    } catch (e) {
      setStatus('error', `error: ${e?.message ?? e}`);
    } finally {
      $('run').disabled = false;
    }
  }

  window.castml = { session, manifest, run, lastOutputs: null };
  $('run').addEventListener('click', run);
  $('run').disabled = false;
}

main().catch((e) => setStatus('error', `error: ${e?.message ?? e}`));
