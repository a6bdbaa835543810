// edge-persrep's runtime in the browser: load a bundle, run its model and scorer with onnxruntime-web,
// and find the enrolled objects in a photo. Written from docs/bundle-format.md; the Python runtime is
// the reference, and tests/test_web.py checks this file against it in headless Chromium.
//
//   const bundle = await loadBundle(ort, name => fetch(`bundle/${name}`));  // or files from a folder picker
//   const image = await decodePhoto(blob);                                   // upright RGB pixels
//   const results = await find(bundle, image);   // [{name, score, present, box, mask, similarity, ...}]

const WORK_SIDE = 128;       // the mask is thresholded on a grid this long (runtime/dense.py)
const LOCATE_SLACK = 0.02;   // dense.object_window
const MIN_BLOB_PIXELS = 100;

// ---- the bundle ---------------------------------------------------------------------------------

// `read(name)` returns a Response-like object ({ok, arrayBuffer()}) for a file of the bundle.
export async function loadBundle(ort, read) {
  const bytes = async (name) => {
    const response = await read(name);
    if (!response || !response.ok) throw new Error(`${name}: not found in the bundle`);
    return new Uint8Array(await response.arrayBuffer());
  };
  const manifest = JSON.parse(new TextDecoder().decode(await bytes("bundle.json")));
  if (manifest.format !== "edge-persrep-bundle") throw new Error("bundle.json: not an edge-persrep bundle");
  if (manifest.format_version !== 2) {
    throw new Error(`bundle.json: format ${manifest.format_version}; this app reads format 2 ` +
                    "(run `edge-persrep upgrade BUNDLE`)");
  }
  if (!manifest.files.scorer) throw new Error("bundle.json: no scorer.onnx; re-export the bundle");
  const model = await bytes(manifest.files.model.path);
  const scorer = await bytes(manifest.files.scorer.path);
  for (const [entry, data] of [[manifest.files.model, model], [manifest.files.scorer, scorer]]) {
    if (await sha256(data) !== entry.sha256) throw new Error(`${entry.path}: checksum does not match bundle.json`);
  }
  const store = parseStore(await bytes(manifest.store), manifest.files.model.sha256);
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  return {
    manifest, store,
    size: manifest.input.size,
    grid: manifest.outputs.patch_grid,
    model: await ort.InferenceSession.create(model, options),
    scorer: await ort.InferenceSession.create(scorer, options),
    ort,
  };
}

async function sha256(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// safetensors: u64 header length, JSON header, data section (docs/bundle-format.md)
export function parseSafetensors(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n > bytes.length - 8) throw new Error("header length points past the end of the file");
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const body = bytes.subarray(8 + n);
  const tensors = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = entry.data_offsets;
    const raw = body.slice(begin, end);  // a copy: aligned for Float32Array
    const data = entry.dtype === "F32" ? new Float32Array(raw.buffer) : entry.dtype === "U8" ? raw : null;
    if (data === null) throw new Error(`tensor ${name}: dtype ${entry.dtype} is not stored by edge-persrep`);
    tensors[name] = { data, shape: entry.shape };
  }
  return { tensors, metadata: header.__metadata__ || {}, body };
}

function parseStore(bytes, modelSha256) {
  const { tensors, metadata, body } = parseSafetensors(bytes);
  if (metadata.format !== "edge-persrep-store") throw new Error("prototypes: not an edge-persrep store");
  const meta = JSON.parse(new TextDecoder().decode(tensors.meta.data));
  if (meta.model_sha256 !== modelSha256) {
    throw new Error("prototypes: computed with another model; re-enroll the objects into this bundle");
  }
  const objects = meta.objects.map((o, i) => ({
    ...o,
    embeddings: tensors[`o${i}.embeddings`],
    boxFeatures: tensors[`o${i}.box_features`],
    targets: tensors[`o${i}.targets`],
  }));
  return { meta, objects, body, dataSha256: metadata.data_sha256 };
}

export async function verifyStore(bundle) {
  if (await sha256(bundle.store.body) !== bundle.store.dataSha256) {
    throw new Error("prototypes: checksum mismatch; the store is corrupt, re-enroll your objects");
  }
}

// The scorer's inputs: every object's references stacked, their owners one-hot (export/scorer.py).
function scorerInputs(ort, objects) {
  const refs = objects.reduce((n, o) => n + o.embeddings.shape[0], 0);
  const d = objects[0].embeddings.shape[1], c = objects[0].boxFeatures.shape[1], j = objects.length;
  const stack = (key, width) => {
    const out = new Float32Array(refs * width);
    let row = 0;
    for (const o of objects) { out.set(o[key].data, row * width); row += o[key].shape[0]; }
    return new ort.Tensor("float32", out, [refs, width]);
  };
  const owner = new Float32Array(refs * j);
  let row = 0;
  objects.forEach((o, i) => { for (let k = 0; k < o.embeddings.shape[0]; k++) owner[(row++) * j + i] = 1; });
  return {
    reference_embeddings: stack("embeddings", d),
    reference_box_features: stack("boxFeatures", c),
    reference_targets: stack("targets", c),
    reference_object: new ort.Tensor("float32", owner, [refs, j]),
    region_scoring: new ort.Tensor("float32", Float32Array.from(objects, (o) => (o.scoring === "global" ? 0 : 1)), [j]),
    mean_scoring: new ort.Tensor("float32", Float32Array.from(objects, (o) => (o.scoring === "mean" ? 1 : 0)), [j]),
    thresholds: new ort.Tensor("float32", Float32Array.from(objects, (o) => o.threshold), [j]),
    // 1 where two objects share a category: one place in a frame is at most one of the user's look-alikes
    same_category: new ort.Tensor("float32", Float32Array.from({ length: j * j },
      (_, k) => (objects[Math.floor(k / j)].category === objects[k % j].category ? 1 : 0)), [j, j]),
  };
}

// ---- photos -------------------------------------------------------------------------------------

// A photo file -> {width, height, rgb: Uint8Array [h*w*3]}, turned upright by its EXIF orientation,
// with no colour management (the Python runtime decodes the stored values as they are).
export async function decodePhoto(blob) {
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none",
                                                premultiplyAlpha: "none" });
  return fromBitmap(bitmap);
}

export function fromBitmap(bitmap) {
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, o = 0; i < rgba.length; i += 4) { rgb[o++] = rgba[i]; rgb[o++] = rgba[i + 1]; rgb[o++] = rgba[i + 2]; }
  return { width: bitmap.width, height: bitmap.height, rgb };
}

// Pillow's resampling (src/libImaging/Resample.c), ported to get the Python runtime's pixels exactly:
// the two-pass separable filter, horizontal first, with 8-bit images in 22-bit fixed point.
const FILTERS = {
  bicubic: { support: 2, f: (x) => {
    const a = -0.5; x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  } },
  bilinear: { support: 1, f: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
};
const PRECISION_BITS = 32 - 8 - 2;

function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), inverse = 1 / filterscale;
  const support = filter.support * filterscale, ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * inverse);
      kk[xx * ksize + x] = w; ww += w;
    }
    if (ww !== 0) for (let x = 0; x < xmax; x++) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

// One pass along x (horizontal) or y of `channels`-interleaved data; `fixed`: 8-bit images.
function pass(src, width, height, channels, outSize, horizontal, filter, fixed) {
  const { bounds, kk, ksize } = coefficients(horizontal ? width : height, outSize, filter);
  const ikk = fixed ? Int32Array.from(kk, (k) => Math.trunc(k < 0 ? k * (1 << PRECISION_BITS) - 0.5
                                                                 : k * (1 << PRECISION_BITS) + 0.5)) : kk;
  const outW = horizontal ? outSize : width, outH = horizontal ? height : outSize;
  const out = fixed ? new Uint8Array(outW * outH * channels) : new Float32Array(outW * outH * channels);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const o = horizontal ? x : y, xmin = bounds[o * 2], xmax = bounds[o * 2 + 1];
      for (let ch = 0; ch < channels; ch++) {
        let ss = fixed ? 1 << (PRECISION_BITS - 1) : 0;
        for (let k = 0; k < xmax; k++) {
          const i = horizontal ? (y * width + xmin + k) : ((xmin + k) * width + x);
          ss += src[i * channels + ch] * ikk[o * ksize + k];
        }
        out[(y * outW + x) * channels + ch] = fixed ? Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))))
                                                    : ss;
      }
    }
  }
  return out;
}

// The runtime's resize (runtime/images.py: resample) of an 8-bit (`fixed`) or float image: x pass, then
// y pass, as Pillow < 13 always did (Pillow 13 runs y first for tall photos; the runtime fixes the order).
// Pillow restricts the horizontal pass to the rows the vertical one reads, which changes nothing.
export function resize(src, width, height, channels, outW, outH, filter, fixed) {
  if (width === outW && height === outH) return src;
  let data = src, w = width;
  if (outW !== width) { data = pass(data, w, height, channels, outW, true, FILTERS[filter], fixed); w = outW; }
  if (outH !== height) data = pass(data, w, height, channels, outH, false, FILTERS[filter], fixed);
  return data;
}

// ---- scoring and finding ------------------------------------------------------------------------

export async function find(bundle, image, { withMask = true } = {}) {
  const { ort, size } = bundle;
  const pixels = resize(image.rgb, image.width, image.height, 3, size, size, "bicubic", true);
  const modelOut = await bundle.model.run({ image: new ort.Tensor("uint8", pixels, [1, size, size, 3]) });
  const objects = bundle.store.objects;
  const inputs = scorerInputs(ort, objects);
  if (!bundle.scorer.inputNames.includes("same_category")) delete inputs.same_category;  // exported before it
  const out = await bundle.scorer.run({ embedding: modelOut.embedding, patch_grid: modelOut.patch_grid, ...inputs });
  const j = objects.length, h = bundle.grid.height, w = bundle.grid.width;
  const windows = out.window_boxes.data, nWindows = out.window_boxes.dims[0];
  return objects.map((o, i) => {
    const cell = (k) => out.region_box.data[i * 4 + k];
    const result = {
      name: o.name, threshold: o.threshold,
      score: out.score.data[i], present: Boolean(out.present.data[i]),
      global_score: out.global_score.data[i], region_score: out.region_score.data[i],
      region_box: cellsToPixels([cell(0), cell(1), cell(2), cell(3)], h, w, image.width, image.height),
      similarity: out.similarity_map.data.subarray(i * h * w, (i + 1) * h * w),
      box: null, mask: null,
    };
    if (result.present) {
      const scores = Float32Array.from({ length: nWindows }, (_, n) => out.window_scores.data[n * j + i]);
      const anchor = cellsToPixels(objectWindow(scores, windows), h, w, image.width, image.height);
      Object.assign(result, localize(result.similarity, h, w, image.width, image.height, anchor, withMask));
    }
    return result;
  });
}

const roundHalfEven = (v) => {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;  // Python's round()
};

export function cellsToPixels([x0, y0, x1, y1], h, w, width, height) {
  return [roundHalfEven(x0 * width / w), roundHalfEven(y0 * height / h),
          roundHalfEven(x1 * width / w), roundHalfEven(y1 * height / h)];
}

function objectWindow(scores, cells) {
  let best = 0;
  for (let n = 1; n < scores.length; n++) if (scores[n] > scores[best]) best = n;
  const cx = (cells[best * 4] + cells[best * 4 + 2]) / 2, cy = (cells[best * 4 + 1] + cells[best * 4 + 3]) / 2;
  let largest = -1, chosen = [];
  for (let n = 0; n < scores.length; n++) {
    const [x0, y0, x1, y1] = cells.subarray(n * 4, n * 4 + 4);
    // numpy computes the bound in float32 (scores are float32, the slack a weak Python float)
    if (scores[n] < Math.fround(scores[best] - Math.fround(LOCATE_SLACK)) || x0 > cx || cx > x1 || y0 > cy || cy > y1) {
      continue;
    }
    const area = (x1 - x0) * (y1 - y0);
    if (area > largest) { largest = area; chosen = [n]; } else if (area === largest) chosen.push(n);
  }
  return [0, 1, 2, 3].map((k) => roundHalfEven(chosen.reduce((s, n) => s + cells[n * 4 + k], 0) / chosen.length));
}

// numpy's sum of 256 values: pairwise, in blocks of 128 summed 8 ways (numpy's pairwise_sum)
function numpySum(values, start = 0, n = values.length) {
  if (n < 8) { let s = 0; for (let i = 0; i < n; i++) s += values[start + i]; return s; }
  if (n <= 128) {
    const r = Array.from({ length: 8 }, (_, k) => values[start + k]);
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let k = 0; k < 8; k++) r[k] += values[start + i + k];
    let s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) s += values[start + i];
    return s;
  }
  let half = Math.floor(n / 2); half -= half % 8;
  return numpySum(values, start, half) + numpySum(values, start + half, n - half);
}

// Otsu's cut as runtime/dense.py computes it: numpy's 256-bin histogram over [min, max] (its bin
// index rule and edge corrections included), then the cut maximising the between-class variance
function otsuThreshold(values, bins = 256) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (hi - lo < 1e-12) return hi;
  const step = (hi - lo) / bins;
  const edges = Float64Array.from({ length: bins + 1 }, (_, k) => (k === bins ? hi : k * step + lo));
  const counts = new Float64Array(bins);
  for (const v of values) {
    let i = Math.trunc(((v - lo) / (hi - lo)) * bins);
    if (i === bins) i -= 1;
    if (v < edges[i]) i -= 1;
    else if (v >= edges[i + 1] && i !== bins - 1) i += 1;
    counts[i] += 1;
  }
  const centres = Float64Array.from({ length: bins }, (_, k) => (edges[k] + edges[k + 1]) / 2);
  const products = Float64Array.from(counts, (c, k) => c * centres[k]);
  const total = numpySum(counts), weighted = numpySum(products);
  let w0 = 0, s0 = 0, best = -Infinity, cut = edges[1];
  for (let k = 0; k < bins - 1; k++) {
    w0 += counts[k]; s0 += products[k];
    const w1 = total - w0, m0 = s0 / Math.max(w0, 1), m1 = (weighted - s0) / Math.max(w1, 1);
    const between = w0 * w1 * ((m0 - m1) * (m0 - m1));
    if (between > best) { best = between; cut = edges[k + 1]; }
  }
  return cut;
}

function morph(mask, w, h, all) {  // 3x3 erosion (all) or dilation (any); the border pads with `all`
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let v = all;
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      const yy = y + dy, xx = x + dx;
      const m = yy < 0 || yy >= h || xx < 0 || xx >= w ? all : mask[yy * w + xx];
      v = all ? v && m : v || m;
    }
    out[y * w + x] = v ? 1 : 0;
  }
  return out;
}

function components(mask, w, h) {  // 4-connected, numbered in raster order of their first pixel
  const labels = new Int32Array(w * h);
  let n = 0;
  for (let start = 0; start < w * h; start++) {
    if (!mask[start] || labels[start]) continue;
    labels[start] = ++n;
    const stack = [start];
    while (stack.length) {
      const p = stack.pop(), x = p % w, y = (p - x) / w;
      for (const q of [x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1, y < h - 1 ? p + w : -1]) {
        if (q >= 0 && mask[q] && !labels[q]) { labels[q] = n; stack.push(q); }
      }
    }
  }
  return { labels, n };
}

export function localize(similarity, h, w, width, height, anchor, withMask) {
  const scale = WORK_SIDE / Math.max(width, height);
  const ww = Math.max(1, roundHalfEven(width * scale)), hh = Math.max(1, roundHalfEven(height * scale));
  const fine = resize(similarity, w, h, 1, ww, hh, "bilinear", false);
  const cut = otsuThreshold(fine);
  let binary = Uint8Array.from(fine, (v) => (v > cut ? 1 : 0));
  binary = morph(morph(morph(morph(binary, ww, hh, 1), ww, hh, 0), ww, hh, 0), ww, hh, 1);
  const minArea = Math.max(1, roundHalfEven(MIN_BLOB_PIXELS * (ww * hh) / (width * height)));
  const [ax0, ay0, ax1, ay1] = anchor.map((v) => roundHalfEven(v * scale));
  const inAnchor = (x, y) => x >= ax0 && x < Math.max(ax1, ax0 + 1) && y >= ay0 && y < Math.max(ay1, ay0 + 1);
  const { labels, n } = components(binary, ww, hh);
  const areas = new Float64Array(n + 1), overlap = new Float64Array(n + 1);
  for (let p = 0; p < ww * hh; p++) {
    if (!labels[p]) continue;
    areas[labels[p]] += 1;
    if (inAnchor(p % ww, Math.floor(p / ww))) overlap[labels[p]] += 1;
  }
  let maxArea = 0;
  for (let k = 1; k <= n; k++) { if (areas[k] < minArea) { areas[k] = 0; overlap[k] = 0; } maxArea = Math.max(maxArea, areas[k]); }
  const anyOverlap = overlap.some((v) => v > 0);
  let chosen = 0, bestRank = 0;
  for (let k = 1; k <= n; k++) {
    const rank = anyOverlap ? overlap[k] * (maxArea + 1) + areas[k] : areas[k];
    if (rank > bestRank) { bestRank = rank; chosen = k; }
  }
  let blob = Uint8Array.from(labels, (l, p) => (chosen && l === chosen && inAnchor(p % ww, Math.floor(p / ww)) ? 1 : 0));
  if (!blob.some((v) => v)) blob = Uint8Array.from(labels, (_, p) => (inAnchor(p % ww, Math.floor(p / ww)) ? 1 : 0));
  let x0 = ww, y0 = hh, x1 = -1, y1 = -1;
  blob.forEach((v, p) => {
    if (!v) return;
    const x = p % ww, y = Math.floor(p / ww);
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + 1); y1 = Math.max(y1, y + 1);
  });
  if (x1 < 0) return { box: null, mask: null };
  const sx = width / ww, sy = height / hh;
  const box = [Math.floor(x0 * sx), Math.floor(y0 * sy), Math.min(width, Math.ceil(x1 * sx)), Math.min(height, Math.ceil(y1 * sy))];
  let mask = null;
  if (withMask) {
    const big = resize(Uint8Array.from(blob, (v) => v * 255), ww, hh, 1, width, height, "bilinear", true);
    mask = Uint8Array.from(big, (v) => (v >= 128 ? 1 : 0));
  }
  return { box, mask };
}
