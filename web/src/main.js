// The page: WebGPU check, training with a live chart, questions with a heatmap of the memory
// reads, teaching a new fact (sparse memory fine-tuning), loading a natively trained model,
// opening a Hugging Face folder, streaming its generated text and teaching it a fact, and the
// forward benchmark. All model work happens
// in the memlayers library (pkg/, built from web/wasm); this file only drives it.
//
// URL parameters (used by the tests): subjects (built-in people, 4 facts each), steps, eval
// (recall every this many steps), variants (override the kernel variants: "cpu", "gpu", then
// e.g. ",bag_columns_per_invocation=1,topk_workgroup=64", Tuning's field names; see Demo.set_kernel_variants).
import init, { Demo } from "./pkg/memlayers_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SUBJECTS = Number(params.get("subjects") || 50);
const EVAL_EVERY = Number(params.get("eval") || 25);
if (params.get("steps")) $("steps").value = params.get("steps");

function setStatus(el, text, kind = "") {
  el.textContent = text;
  el.className = "status " + kind;
}

// One library call at a time: the library rejects overlapping calls, so the page queues them.
let chain = Promise.resolve();
function exclusive(f) {
  const p = chain.then(f, f);
  chain = p.catch(() => {});
  return p;
}

let demo = null;
let facts = [];

async function main() {
  if (!("gpu" in navigator)) {
    setStatus($("gpu-status"),
      "This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or " +
      "Firefox with WebGPU enabled; on Linux, Chrome needs --enable-unsafe-webgpu.", "error");
    return;
  }
  try {
    await init();
    demo = await Demo.create(SUBJECTS);
  } catch (e) {
    setStatus($("gpu-status"), "WebGPU is there, but no usable GPU adapter: " + message(e), "error");
    return;
  }
  if (params.get("variants")) demo.set_kernel_variants(params.get("variants"));
  const a = JSON.parse(demo.adapter());
  // Browsers leave wgpu's adapter name empty; WebGPU's own adapter info names the vendor
  // and architecture (e.g. "google swiftshader").
  let name = a.name;
  if (!name) {
    const info = (await navigator.gpu.requestAdapter())?.info;
    name = info ? [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") : "";
  }
  setStatus($("gpu-status"),
    `Adapter: ${name || "(unnamed)"} — ${a.backend}, ${a.device_type}; ${a.kernel_variants} kernel variants`, "ok");
  const table = $("limits");
  for (const [k, v] of Object.entries(a.limits)) {
    const row = table.insertRow();
    row.insertCell().textContent = k;
    row.insertCell().textContent = String(v);
  }
  table.hidden = false;

  facts = JSON.parse(demo.facts());
  const subjects = [...new Set(facts.map((f) => f[0]))];
  const relations = [...new Set(facts.map((f) => f[1]))];
  $("facts-summary").textContent =
    `${facts.length} facts about ${subjects.length} fictional people, e.g. “${facts[0].join(" ")}.” ` +
    `The model sees each fact as a sentence and learns to complete “subject relation” with the object.`;
  for (const s of subjects) {
    const o = document.createElement("option");
    o.value = s;
    $("subjects").append(o);
  }
  for (const r of relations) {
    $("relation").append(new Option(r, r));
    $("relations").append(new Option(r, r));
  }
  $("subject").value = subjects[0];
  $("app").hidden = false;
  wire();
  document.body.dataset.ready = "1";
}

function message(e) {
  return e && e.message ? e.message : String(e);
}

// --- training ---------------------------------------------------------------------------
let stopRequested = false;
let curve = { loss: [], recall: [], denseRecall: [] };

async function recallNow(step) {
  const r = JSON.parse(await exclusive(() => demo.recall()));
  curve.recall.push([step, r.memory]);
  if (r.dense !== null) curve.denseRecall.push([step, r.dense]);
}

async function train() {
  const steps = Math.max(1, Math.floor(Number($("steps").value)));
  const lr = Number($("lr").value);
  $("train").disabled = true;
  $("stop").disabled = false;
  stopRequested = false;
  curve = { loss: [], recall: [], denseRecall: [] };
  document.body.dataset.training = "running";
  try {
    const info = JSON.parse(await exclusive(() => demo.new_model(steps, lr)));
    $("models-summary").textContent =
      `Memory model: ${info.params.toLocaleString()} params (${info.memory.values} memory values), ` +
      `${Math.round(info.flops_per_token).toLocaleString()} FLOPs/token. Dense model beside it: ` +
      `${info.dense.params.toLocaleString()} params, ${Math.round(info.dense.flops_per_token).toLocaleString()} ` +
      "FLOPs/token. Both see the same batches.";
    const started = performance.now();
    await recallNow(0);
    let step = 0, loss = NaN;
    while (!stopRequested && step < steps) {
      const r = JSON.parse(await exclusive(() => demo.train(1)));
      step = r.step;
      loss = r.loss;
      curve.loss.push([step, loss]);
      if (step % EVAL_EVERY === 0 || step === steps) await recallNow(step);
      const secs = (performance.now() - started) / 1000;
      setStatus($("train-status"), `step ${step}/${steps}  loss ${loss.toFixed(3)}  ${recallText()}  (${secs.toFixed(0)} s)`);
      drawChart();
    }
    if (stopRequested && curve.recall[curve.recall.length - 1][0] !== step) {
      await recallNow(step);
      drawChart();
    }
    setStatus($("train-status"),
      `${stopRequested ? "stopped" : "done"} at step ${step}: loss ${loss.toFixed(3)}, ${recallText()}`, "ok");
    document.body.dataset.training = "done";
  } catch (e) {
    setStatus($("train-status"), "Training failed: " + message(e), "error");
    document.body.dataset.training = "failed";
  } finally {
    $("train").disabled = false;
    $("stop").disabled = true;
  }
}

function recallText() {
  const last = (pts) => pts[pts.length - 1][1].toFixed(2);
  return `recall ${last(curve.recall)}` + (curve.denseRecall.length ? ` (dense ${last(curve.denseRecall)})` : "");
}

function drawChart() {
  const c = $("chart"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 50, R = 50, T = 20, B = 30;
  g.clearRect(0, 0, W, H);
  const steps = Math.max(1, Number($("steps").value));
  const maxLoss = Math.max(1e-6, ...curve.loss.map((p) => p[1]).filter(Number.isFinite));
  const x = (s) => L + (W - L - R) * s / steps;
  const yLoss = (v) => T + (H - T - B) * (1 - v / maxLoss);
  const yRec = (v) => T + (H - T - B) * (1 - v);
  g.strokeStyle = "#999"; g.lineWidth = 1;
  g.strokeRect(L, T, W - L - R, H - T - B);
  g.fillStyle = "#333"; g.font = "12px sans-serif";
  g.fillText("step", W / 2, H - 8);
  g.fillText("0", L - 4, H - B + 14);
  g.fillText(String(steps), W - R - 20, H - B + 14);
  g.fillStyle = "#d1495b"; g.fillText(`memory loss (max ${maxLoss.toFixed(2)})`, L + 6, T + 14);
  g.fillStyle = "#1b5fbf"; g.fillText("memory recall", W - R - 170, T + 14);
  g.fillStyle = "#888"; g.fillText("dense recall", W - R - 80, T + 14);
  const line = (pts, y, color, dash = []) => {
    g.strokeStyle = color; g.lineWidth = 2; g.setLineDash(dash); g.beginPath();
    pts.forEach(([s, v], i) => (i ? g.lineTo(x(s), y(v)) : g.moveTo(x(s), y(v))));
    g.stroke();
    g.setLineDash([]);
  };
  line(curve.loss, yLoss, "#d1495b");
  line(curve.denseRecall, yRec, "#888", [6, 4]);
  line(curve.recall, yRec, "#1b5fbf");
  c.dataset.points = String(curve.loss.length);
  c.dataset.recallSeries = String(curve.denseRecall.length ? 2 : 1);
}

// --- asking -----------------------------------------------------------------------------
async function ask() {
  const subject = $("subject").value, relation = $("relation").value;
  setStatus($("answer"), "…");
  try {
    const r = JSON.parse(await exclusive(() => demo.ask(subject, relation)));
    const mark = (a) => (r.expected === null ? "" : a === r.expected ? " ✓" : " ✗");
    let text = `${r.prompt}→ “${r.answer}”${mark(r.answer)}`;
    if (r.dense_answer !== null) text = `${r.prompt}→ memory “${r.answer}”${mark(r.answer)} · dense “${r.dense_answer}”${mark(r.dense_answer)}`;
    if (r.expected !== null) text += r.answer === r.expected ? "  (correct)" : `  (the fact: “${r.expected}”)`;
    setStatus($("answer"), text, r.answer === r.expected ? "ok" : "");
    $("answer").dataset.models = r.dense_answer === null ? "1" : "2";
    drawHeatmap(r.reads);
    $("answer").dataset.answered = "1";
  } catch (e) {
    setStatus($("answer"), "Could not ask: " + message(e), "error");
  }
}

function drawHeatmap(reads) {
  const c = $("heatmap");
  const rows = Math.max(1, reads.length);
  const knn = Math.max(1, ...reads.map((r) => r.slots.length));
  const label = 120, cellH = 34;
  c.height = rows * cellH + 24;
  const cellW = (c.width - label) / knn;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.font = "11px sans-serif";
  if (reads.length === 0) {
    g.fillStyle = "#333";
    g.fillText("This model has no memory layer.", 8, 20);
  }
  reads.forEach((r, row) => {
    g.fillStyle = "#333";
    g.fillText(`layer ${r.layer} head ${r.head}`, 4, row * cellH + cellH / 2 + 4);
    const max = Math.max(...r.weights);
    r.slots.forEach((slot, k) => {
      const w = r.weights[k];
      g.fillStyle = heat(w / (max || 1));
      const x = label + k * cellW, y = row * cellH;
      g.fillRect(x, y + 1, cellW - 1, cellH - 2);
      g.fillStyle = w / (max || 1) > 0.55 ? "#fff" : "#000";
      if (cellW > 34) {
        g.fillText(String(slot), x + 3, y + 14);
        g.fillText(w.toFixed(2), x + 3, y + 27);
      }
    });
  });
  g.fillStyle = "#666";
  g.fillText("slots ranked by score, left to right; cell: slot id and weight", label, rows * cellH + 16);
  c.dataset.heads = String(reads.length);
  c.dataset.cells = String(reads.reduce((n, r) => n + r.slots.length, 0));
}

// White to dark blue.
function heat(t) {
  const u = Math.min(1, Math.max(0, t));
  const mix = (a, b) => Math.round(a + (b - a) * u);
  return `rgb(${mix(240, 16)}, ${mix(244, 52)}, ${mix(255, 140)})`;
}

// --- teaching --------------------------------------------------------------------------
const TEACH_MAX_STEPS = 200;

async function teach() {
  const subject = $("teach-subject").value.trim(), relation = $("teach-relation").value.trim();
  const object = $("teach-object").value.trim();
  $("teach").disabled = true;
  delete $("teach-status").dataset.taught;
  setStatus($("teach-status"), `Teaching “${subject} ${relation} ${object}.”…`);
  try {
    const started = performance.now();
    const r = JSON.parse(await exclusive(() => demo.teach(subject, relation, object, TEACH_MAX_STEPS)));
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    const outcome = r.learned ? `Learned in ${r.steps} steps` : `Not learned after ${r.steps} steps`;
    setStatus($("teach-status"),
      `${outcome} (${secs} s, ${Math.round(r.rows_per_step)} memory rows updated a step). ` +
      `Recall of the other facts: ${r.old_recall_before.toFixed(2)} before, ${r.old_recall_after.toFixed(2)} after. ` +
      "Ask it above.", r.learned ? "ok" : "");
    // The fact can now be asked back.
    if (![...$("relation").options].some((o) => o.value === relation)) $("relation").append(new Option(relation, relation));
    if (![...$("subjects").options].some((o) => o.value === subject)) {
      const o = document.createElement("option");
      o.value = subject;
      $("subjects").append(o);
    }
    $("subject").value = subject;
    $("relation").value = relation;
    $("teach-status").dataset.taught = r.learned ? "1" : "0";
  } catch (e) {
    setStatus($("teach-status"), "Could not teach: " + message(e), "error");
    $("teach-status").dataset.taught = "failed";
  } finally {
    $("teach").disabled = false;
  }
}

// --- loading a native model -------------------------------------------------------------
async function load(fileList) {
  const files = [...fileList];
  const config = files.find((f) => f.name.endsWith(".json"));
  // A memlayers model (weights.safetensors) or a lingua consolidated folder (consolidated.pth).
  const weights = files.find((f) => f.name.endsWith(".safetensors") || f.name.endsWith(".pth"));
  if (!config || !weights) {
    setStatus($("load-status"),
      "Choose both files of the model folder: config.json and weights.safetensors, or lingua's " +
      "params.json and consolidated.pth (got: " +
      (files.map((f) => f.name).join(", ") || "nothing") + ").", "error");
    return;
  }
  setStatus($("load-status"), "Loading…");
  try {
    const text = await config.text();
    const bytes = new Uint8Array(await weights.arrayBuffer());
    const lingua = weights.name.endsWith(".pth");
    const info = JSON.parse(await exclusive(() => lingua ? demo.load_lingua(text, bytes) : demo.load_model(text, bytes)));
    const mem = info.memory ? `, memory of ${info.memory.values} values in layer ${info.memory.layers.join(", ")}` : ", no memory layer";
    setStatus($("load-status"),
      `Loaded ${weights.name}: ${info.layers} layers of width ${info.dim}, ${info.params.toLocaleString()} params${mem}. Ask it above.`, "ok");
    $("load-status").dataset.loaded = "1";
  } catch (e) {
    setStatus($("load-status"), `Could not load ${config.name} + ${weights.name}: ${message(e)}`, "error");
  }
}

// --- a Hugging Face folder ---------------------------------------------------------------
// A page's WebAssembly memory holds at most 4 GiB, the model's files included.
const MAX_FOLDER_BYTES = 3.5 * 2 ** 30;

// The files a folder's reader takes (others, and anything in a subfolder, are not read).
const HF_FILES = /^(config\.json|tokenizer\.json|tokenizer_config\.json|generation_config\.json|model\.safetensors\.index\.json|.*\.safetensors)$/;

async function openHf(fileList) {
  // A picked folder lists its subfolders' files too (e.g. onnx/): the top level only.
  const files = [...fileList].filter((f) =>
    HF_FILES.test(f.name) && (f.webkitRelativePath || f.name).split("/").length <= 2);
  const bytes = files.reduce((n, f) => n + f.size, 0);
  const status = $("hf-status");
  delete status.dataset.opened;
  if (!files.some((f) => f.name === "config.json")) {
    setStatus(status, "Choose a Hugging Face model folder, or its files: no config.json among " +
      (files.map((f) => f.name).join(", ") || "nothing") + ".", "error");
    return;
  }
  if (bytes > MAX_FOLDER_BYTES) {
    setStatus(status, `These files are ${(bytes / 2 ** 30).toFixed(1)} GiB; this page holds at most ` +
      `${(MAX_FOLDER_BYTES / 2 ** 30).toFixed(1)} GiB (WebAssembly's memory). Use the memlayers command line for it.`, "error");
    return;
  }
  const folder = (files[0].webkitRelativePath || "").split("/")[0] || "the chosen files";
  setStatus(status, `Opening ${folder} (${(bytes / 2 ** 20).toFixed(1)} MiB)…`);
  $("hf-generate").disabled = true;
  try {
    const contents = await Promise.all(files.map(async (f) => new Uint8Array(await f.arrayBuffer())));
    const q8 = $("hf-q8").checked;
    const info = JSON.parse(await exclusive(() => demo.open_hf(folder, files.map((f) => f.name), contents, q8)));
    setStatus(status, `Opened ${folder}: ${info.architecture}, ${info.layers} layers of width ${info.dim}, ` +
      `${info.params.toLocaleString()} parameters, vocabulary ${info.vocab.toLocaleString()}, ${info.weights} weights` +
      (info.chat ? "; it has a chat template" : "") + ".", "ok");
    $("hf-chat").checked = info.chat;
    $("hf-generate").disabled = false;
    $("hf-teach").disabled = false;
    $("hf-files").value = "";
    $("hf-folder").value = "";
    $("hf-probes").hidden = true;
    setStatus($("hf-teach-status"), "");
    status.dataset.opened = "1";
  } catch (e) {
    // The previous model is gone (the library drops it before reading the next).
    $("hf-teach").disabled = true;
    setStatus(status, `Could not open ${folder}: ${message(e)}`, "error");
  }
}

async function generateHf() {
  const out = $("hf-output");
  out.textContent = "";
  delete out.dataset.generated;
  $("hf-generate").disabled = true;
  try {
    const max = Number($("hf-max").value) || 32;
    const r = JSON.parse(await exclusive(() =>
      demo.generate($("hf-prompt").value, max, $("hf-chat").checked, (piece) => { out.textContent += piece; })));
    const speed = r.tokens_per_s ? `, ${r.tokens_per_s.toFixed(1)} tokens/s` : "";
    setStatus($("hf-status"), `prompt ${r.prompt_tokens} tokens, ${r.new_tokens} new` +
      (r.eos ? " (ended at an end-of-sequence token)" : "") + speed, "ok");
    out.dataset.generated = "1";
  } catch (e) {
    setStatus($("hf-status"), "Could not generate: " + message(e), "error");
    out.dataset.generated = "failed";
  } finally {
    $("hf-generate").disabled = false;
  }
}

async function teachHf() {
  const status = $("hf-teach-status");
  delete status.dataset.taught;
  $("hf-teach").disabled = true;
  setStatus(status, "teaching…");
  try {
    const r = JSON.parse(await exclusive(() => demo.teach_hf(
      $("hf-teach-subject").value, $("hf-teach-relation").value, $("hf-teach-object").value, 300)));
    setStatus(status,
      (r.retrofitted ? "A memory was added beside the middle layer. " : "") +
      (r.learned ? `Learned in ${r.steps} steps` : `Not learned in ${r.steps} steps`) +
      ` (${Math.round(r.rows_per_step)} memory rows updated a step): it answers “${r.answer.trim()}”. ` +
      `${r.kept} of ${r.probes.length} probe continuations unchanged.`, r.learned ? "ok" : "error");
    const table = $("hf-probes");
    table.replaceChildren();
    const head = table.insertRow();
    for (const h of ["probe prompt", "before", "after"]) head.insertCell().textContent = h;
    for (const p of r.probes) {
      const row = table.insertRow();
      row.insertCell().textContent = p.prompt;
      row.insertCell().textContent = p.before;
      row.insertCell().textContent = (p.after === p.before ? "= " : "≠ ") + p.after;
    }
    table.hidden = false;
    status.dataset.taught = r.learned ? "1" : "0";
    status.dataset.kept = String(r.kept);
  } catch (e) {
    setStatus(status, "Could not teach: " + message(e), "error");
    status.dataset.taught = "failed";
  } finally {
    $("hf-teach").disabled = false;
  }
}

// --- benchmark --------------------------------------------------------------------------
async function bench() {
  setStatus($("bench-status"), "running…");
  try {
    const r = JSON.parse(await exclusive(() => demo.bench_forward(512, 5)));
    const kernels = r.kernels.map(([label, ms]) => `${label} ${ms.toFixed(2)} ms`).join(", ");
    setStatus($("bench-status"),
      `forward: ${Math.round(r.tokens_per_s)} tokens/s` + (kernels ? ` (GPU time: ${kernels})` : ""), "ok");
    $("bench-status").dataset.tokensPerS = String(r.tokens_per_s);
    $("bench-status").dataset.kernels = JSON.stringify(r.kernels);
  } catch (e) {
    setStatus($("bench-status"), "Benchmark failed: " + message(e), "error");
  }
}

function wire() {
  $("train").onclick = train;
  $("stop").onclick = () => { stopRequested = true; };
  $("ask").onclick = ask;
  $("teach").onclick = teach;
  $("bench").onclick = bench;
  $("hf-folder").onchange = (e) => openHf(e.target.files);
  $("hf-files").onchange = (e) => openHf(e.target.files);
  $("hf-generate").onclick = generateHf;
  $("hf-teach").onclick = teachHf;
  $("files").onchange = (e) => load(e.target.files);
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); load(e.dataTransfer.files); };
}

main().catch((e) => setStatus($("gpu-status"), "The page failed to start: " + message(e), "error"));
