// The page: pick a bundle folder (or ?bundle=URL), then photos or the camera; each photo is shown with
// every enrolled object's score, present/absent, box and similarity heat-map. ?photos=URL,URL runs
// those photos at once and leaves the answers in window.edgePersrepResults (what tests/test_web.py reads).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.min.mjs";
import { decodePhoto, find, fromBitmap, loadBundle, verifyStore } from "./edge-persrep.js";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation headers a static host may not send

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };
let bundle = null;

async function open(read, where) {
  status(`Loading ${where} ...`);
  bundle = await loadBundle(ort, read);
  await verifyStore(bundle);
  const names = bundle.store.objects.map((o) => o.name).join(", ");
  status(`Bundle ${where}: ${bundle.manifest.backbone.name}, ${bundle.size} px; objects: ${names}`);
  $("photos").disabled = false;
  if (navigator.mediaDevices?.getUserMedia) { $("camera").hidden = false; $("camera").disabled = false; }
}

function show(image, results, title) {
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d");
  const rgba = new ImageData(image.width, image.height);
  for (let i = 0, o = 0; o < rgba.data.length; i += 3, o += 4) {
    rgba.data.set([image.rgb[i], image.rgb[i + 1], image.rgb[i + 2], 255], o);
  }
  context.putImageData(rgba, 0, 0);
  const line = Math.max(2, image.width / 200);
  for (const r of results.filter((x) => x.present)) {
    if ($("heatmap").checked) heatmap(context, r.similarity, bundle.grid, image);
    if (r.box) {
      context.strokeStyle = "#2f2"; context.lineWidth = line;
      context.strokeRect(r.box[0], r.box[1], r.box[2] - r.box[0], r.box[3] - r.box[1]);
      const size = Math.max(12, image.width / 40), label = `${r.name} ${r.score.toFixed(2)}`;
      context.font = `${size}px sans-serif`;
      context.fillStyle = "#000";
      context.fillRect(r.box[0], r.box[1], context.measureText(label).width + 2 * line, size + 2 * line);
      context.fillStyle = "#fff";
      context.fillText(label, r.box[0] + line, r.box[1] + size);
    }
  }
  const rows = results.map((r) => `<tr><td>${r.name}</td><td>${r.score.toFixed(3)}</td><td>${r.threshold.toFixed(3)}</td>`
    + `<td class="${r.present ? "present" : "absent"}">${r.present ? "present" : "absent"}</td></tr>`).join("");
  const block = document.createElement("div");
  block.className = "photo";
  block.innerHTML = `<div><b>${title}</b><table><tr><th>object</th><th>score</th><th>threshold</th><th></th></tr>${rows}</table></div>`;
  block.prepend(canvas);
  $("results").prepend(block);
}

function heatmap(context, similarity, grid, image) {
  const cw = image.width / grid.width, ch = image.height / grid.height;
  let lo = Infinity, hi = -Infinity;
  for (const v of similarity) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (let y = 0; y < grid.height; y++) {
    for (let x = 0; x < grid.width; x++) {
      const t = (similarity[y * grid.width + x] - lo) / Math.max(hi - lo, 1e-6);
      context.fillStyle = `rgba(255, ${Math.round(200 * (1 - t))}, 0, ${0.45 * t})`;
      context.fillRect(x * cw, y * ch, cw + 1, ch + 1);
    }
  }
}

async function run(image, title) {
  const started = performance.now();
  const results = await find(bundle, image);
  show(image, results, `${title} (${Math.round(performance.now() - started)} ms)`);
  return results;
}

$("bundle").addEventListener("change", async (event) => {
  const files = new Map([...event.target.files].map((f) => [f.name, f]));
  const read = async (name) => (files.has(name) ? { ok: true, arrayBuffer: () => files.get(name).arrayBuffer() } : null);
  try { await open(read, event.target.files[0]?.webkitRelativePath.split("/")[0] || "folder"); }
  catch (error) { status(`Cannot use this bundle: ${error.message}`); }
});

$("photos").addEventListener("change", async (event) => {
  for (const file of event.target.files) {
    try { await run(await decodePhoto(file), file.name); } catch (error) { status(`${file.name}: ${error.message}`); }
  }
});

$("camera").addEventListener("click", async () => {
  const video = $("video");
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
  video.style.display = "block";
  const frame = async () => {
    if (video.videoWidth) await run(fromBitmap(await createImageBitmap(video)), "camera");
    setTimeout(frame, 500);
  };
  frame();
});

const params = new URLSearchParams(location.search);
if (params.get("bundle")) {
  const base = new URL(params.get("bundle").replace(/\/?$/, "/"), location.href);
  try {
    await open((name) => fetch(new URL(name, base)), base.pathname);
    const photos = (params.get("photos") || "").split(",").filter(Boolean);
    const answers = [];
    for (const url of photos) {
      const image = await decodePhoto(await (await fetch(url)).blob());
      const results = await run(image, url.split("/").pop());
      answers.push({ photo: url, width: image.width, height: image.height,
                     results: results.map(({ similarity, mask, ...r }) => ({ ...r, mask_pixels: mask ? mask.reduce((a, b) => a + b, 0) : null })) });
    }
    window.edgePersrepResults = answers;
  } catch (error) {
    status(`Cannot use this bundle: ${error.message}`);
    window.edgePersrepResults = { error: error.message };
  }
}
