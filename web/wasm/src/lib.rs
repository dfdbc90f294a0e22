//! The browser demo's bindings: the memlayers library's async API, exposed to the page's
//! JavaScript. No kernel or model code lives here; this file only converts between
//! JavaScript values and the library's types.
//!
//! Every method that touches the GPU returns a Promise. One call runs at a time: a call made
//! while another is still running is rejected with a "busy" error (the page queues them), so
//! a click never aborts the module.

use memlayers::demo::{self, DemoModel, Fact, KnowledgeBase, MemoryShape};
use memlayers::io::hf::retrofit::{retrofit_config, retrofitted_weights, MemorySizes};
use memlayers::io::hf::{HfFolder, TextStream};
use memlayers::io::lingua::{self, LinguaParams};
use memlayers::io::TensorFile;
use memlayers::model::{LMTransformerArgs, MemoryPlacement, Model, ModelWeights, WeightPrecision};
use memlayers::rng::Rng;
use memlayers::teach::{
    encode_facts, fact_batch, greedy_continuations, probe_lines, row_len, score_token_facts,
    text_slot_counts, Method, ReadsAt, TeachConfig, Teacher, CONTINUATION_TOKENS, DEFAULT_PROBE,
};
use memlayers::tokenizer::TokenizerKind;
use memlayers::train::{Trainer, ValueOptimizer};
use memlayers::{Gpu, MemoryConfig, ValueDtype};
use serde_json::json;
use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// The page's model: byte-level, 2 blocks of width 32, the last block's feed-forward a
/// Memory+ layer of 32^2 = 1024 values (2 heads, 8 slots each): small enough to train in a
/// browser on a CPU WebGPU implementation, large enough to store the built-in facts.
pub const PAGE_MODEL: DemoModel = DemoModel {
    dim: 32,
    layers: 2,
    seq: 48,
    seed: 0,
    memory: Some(MemoryShape {
        n_keys: 32,
        heads: 2,
        knn: 8,
        k_dim: 32,
        peer: false,
    }),
    moe: None,
};
const BATCH: usize = 16;
/// Recall is measured on at most this many facts while training.
const RECALL_SAMPLE: usize = 200;
const MAX_ANSWER_BYTES: usize = 24;
/// Teaching one fact: sparse memory fine-tuning with `memlayers teach`'s defaults, at most
/// this many value rows a step; recall of the fact checked every `TEACH_CHECK_EVERY` steps.
const TEACH_SLOTS: usize = 256;
const TEACH_CHECK_EVERY: u32 = 5;
/// Rows a teaching step packs with the one fact.
const TEACH_BATCH: usize = 4;
/// Background batches (of `BATCH` rows of the facts) whose reads rank the rows to teach.
const BACKGROUND_BATCHES: usize = 8;
/// Seeds of the page's random draws. Any fixed values would do: they make a run of the page
/// repeat exactly. The background's is the one `memlayers train` uses for the same purpose.
const TRAINING_DATA_SEED: u64 = 0xDA7A;
const BACKGROUND_SEED: u64 = 0x5107;
const TEACHING_DATA_SEED: u64 = 0x7EAC;
/// Probe prompts whose continuations the page shows before and after teaching a Hugging Face
/// model (of the 32 built in): enough to see forgetting, few enough to decode quickly on a
/// CPU implementation of WebGPU.
const PAGE_PROBES: usize = 8;
/// Teaching a Hugging Face model updates at most this share (1 / n) of its value rows a step
/// (and at most `TEACH_SLOTS`): a retrofitted memory's default table on a tiny model holds
/// 256 rows, where 256 a step would be dense fine-tuning of the whole table. A quarter still
/// teaches the test fixture's random model a fact within 300 steps (a sixteenth did not).
const HF_TEACH_TABLE_SHARE: usize = 4;

enum Net {
    Training(Box<Trainer>),
    Loaded(Box<Model>, Box<ModelWeights>),
    /// A model being taught new facts (from either of the others).
    Taught(Box<Teacher>),
}

impl Net {
    fn model(&self) -> &Model {
        match self {
            Net::Training(t) => &t.model,
            Net::Loaded(m, _) => m,
            Net::Taught(t) => &t.trainer.model,
        }
    }
}

struct State {
    gpu: Gpu,
    kb: KnowledgeBase,
    net: Option<Net>,
    /// The dense model trained beside the page's memory model (same facts, batches, steps and
    /// FLOPs per token within 10%); None for loaded models.
    dense: Option<Box<Trainer>>,
    args: Option<LMTransformerArgs>,
    rng: Rng,
    /// A Hugging Face model opened from its folder's files, with its tokenizer.
    hf: Option<HfModel>,
}

/// A Hugging Face model opened in the page: as loaded, or being taught (with a memory
/// retrofitted where it had none).
struct HfModel {
    folder: Box<HfFolder>,
    net: HfNet,
    /// Made when it is first taught.
    probe: Option<Probe>,
}

/// The probe prompts (token ids) and the untaught model's greedy continuations of them.
struct Probe {
    prompts: Vec<Vec<u32>>,
    before: Vec<Vec<u32>>,
}

enum HfNet {
    Loaded(Box<Model>),
    Taught(Box<Teacher>),
}

impl HfModel {
    fn model(&self) -> &Model {
        match &self.net {
            HfNet::Loaded(m) => m,
            HfNet::Taught(t) => &t.trainer.model,
        }
    }
}

fn err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The demo session: one GPU device, the facts, and the model being trained or loaded.
#[wasm_bindgen]
pub struct Demo {
    state: Rc<RefCell<State>>,
}

/// Whether this adapter is a CPU implementation of WebGPU (SwiftShader, llvmpipe), where the
/// library's CPU kernel variants are faster.
fn cpu_adapter(info: &wgpu::AdapterInfo) -> bool {
    let text = format!("{} {} {}", info.name, info.driver, info.driver_info).to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["swiftshader", "llvmpipe", "lavapipe"]
            .iter()
            .any(|s| text.contains(s))
}

#[wasm_bindgen]
impl Demo {
    /// Opens the GPU (WebGPU) and builds the built-in facts (`subjects` people, 4 facts each).
    pub async fn create(subjects: u32) -> Result<Demo, JsValue> {
        std::panic::set_hook(Box::new(|info| {
            web_log(&format!("memlayers panicked: {info}"));
        }));
        let mut gpu = Gpu::new().await.map_err(err)?;
        if let Some(info) = gpu.adapter_info().cloned() {
            if cpu_adapter(&info) {
                gpu.set_tuning(memlayers::kernels::Tuning::CPU);
            }
        }
        Ok(Demo {
            state: Rc::new(RefCell::new(State {
                gpu,
                kb: KnowledgeBase::synthetic(subjects.max(1) as usize, 0),
                net: None,
                dense: None,
                args: None,
                rng: Rng::new(TRAINING_DATA_SEED),
                hf: None,
            })),
        })
    }

    /// The adapter and the device's limits, as JSON.
    pub fn adapter(&self) -> Result<String, JsValue> {
        let st = lock(&self.state)?;
        let l = st.gpu.limits();
        let info = st.gpu.adapter_info();
        Ok(json!({
            "name": info.map(|i| i.name.clone()).unwrap_or_default(),
            "backend": info.map(|i| format!("{:?}", i.backend)).unwrap_or_default(),
            "device_type": info.map(|i| format!("{:?}", i.device_type)).unwrap_or_default(),
            "driver": info.map(|i| format!("{} {}", i.driver, i.driver_info)).unwrap_or_default(),
            "kernel_variants": if st.gpu.tuning() == memlayers::kernels::Tuning::CPU { "cpu" } else { "gpu" },
            "limits": {
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_buffer_size": l.max_buffer_size,
                "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            },
        })
        .to_string())
    }

    /// Overrides the kernel variants chosen for this adapter (results do not depend on them,
    /// speed does): `memlayers::kernels::Tuning::with_overrides`'s text, "cpu" or "gpu", then
    /// comma-separated `field=value` with `Tuning`'s own field names, e.g.
    /// "cpu,bag_columns_per_invocation=1,topk_workgroup=64".
    pub fn set_kernel_variants(&self, variants: &str) -> Result<(), JsValue> {
        let mut st = lock(&self.state)?;
        let tuning = st
            .gpu
            .tuning()
            .with_overrides(variants)
            .map_err(|e| err(e.to_string()))?;
        st.gpu.set_tuning(tuning);
        Ok(())
    }

    /// The facts, as JSON: `[[subject, relation, object], ...]`.
    pub fn facts(&self) -> Result<String, JsValue> {
        let st = lock(&self.state)?;
        let rows: Vec<[&str; 3]> = st
            .kb
            .facts
            .iter()
            .map(|f| [f.subject.as_str(), f.relation.as_str(), f.object.as_str()])
            .collect();
        Ok(serde_json::to_string(&rows).expect("strings serialise"))
    }

    /// A fresh memory model (`PAGE_MODEL`) and beside it the same model with a dense
    /// feed-forward block (`PAGE_MODEL` without memory), with the demo's recipe for `steps`
    /// steps at `lr` (the memory's values at 10x). Returns the memory model's description as
    /// JSON, with `dense` (the dense model's) and both models' `flops_per_token`.
    pub fn new_model(&self, steps: u32, lr: f32) -> Result<String, JsValue> {
        let mut st = lock(&self.state)?;
        let args = PAGE_MODEL.args();
        let config = args.resolve().map_err(err)?;
        let weights = ModelWeights::init(&config).map_err(err)?;
        let trainer = Trainer::new(&st.gpu, &weights, demo::train_config(steps, lr, true)).map_err(err)?;
        let dense_args = DemoModel {
            memory: None,
            ..PAGE_MODEL
        }
        .args();
        let dense_config = dense_args.resolve().map_err(err)?;
        let dense_weights = ModelWeights::init(&dense_config).map_err(err)?;
        let dense =
            Trainer::new(&st.gpu, &dense_weights, demo::train_config(steps, lr, false)).map_err(err)?;
        st.net = Some(Net::Training(Box::new(trainer)));
        st.dense = Some(Box::new(dense));
        st.args = Some(args);
        st.rng = Rng::new(TRAINING_DATA_SEED);
        let mut info: serde_json::Value = serde_json::from_str(&describe(&weights, steps)).expect("json");
        info["flops_per_token"] = json!(config.flops_per_token(PAGE_MODEL.seq).map_err(err)?);
        info["dense"] = json!({
            "params": dense_weights.parameter_count(),
            "flops_per_token": dense_config.flops_per_token(PAGE_MODEL.seq).map_err(err)?,
        });
        Ok(info.to_string())
    }

    /// Trains for up to `steps` steps (fewer at the end of the schedule), the dense model on
    /// the same batches. Resolves to JSON `{"step", "steps", "loss", "dense_loss"}` (loss: mean
    /// of the last step's answer bytes).
    pub fn train(&self, steps: u32) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut guard = lock(&state)?;
            let State {
                gpu,
                kb,
                net,
                dense,
                rng,
                ..
            } = &mut *guard;
            let Some(Net::Training(trainer)) = net else {
                return Err(err("no model in training: start one first"));
            };
            let total = trainer.config.steps;
            let (mut loss, mut dense_loss) = (f32::NAN, None);
            for _ in 0..steps {
                if trainer.step >= total {
                    break;
                }
                let (x, y) = demo::training_batch(&kb.facts, rng, BATCH, PAGE_MODEL.seq);
                loss = trainer
                    .step(gpu, &x, &y, BATCH, PAGE_MODEL.seq)
                    .await
                    .map_err(err)?;
                if let Some(d) = dense {
                    dense_loss = Some(d.step(gpu, &x, &y, BATCH, PAGE_MODEL.seq).await.map_err(err)?);
                }
            }
            Ok(
                json!({"step": trainer.step, "steps": total, "loss": loss, "dense_loss": dense_loss})
                    .to_string()
                    .into(),
            )
        })
    }

    /// Exact greedy recall on (a sample of) the facts, in [0, 1]: JSON `{"memory", "dense"}`
    /// (the model's, and the dense model's or null).
    pub fn recall(&self) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = lock(&state)?;
            let net = st.net.as_ref().ok_or_else(|| err("no model yet"))?;
            let n = st.kb.facts.len().min(RECALL_SAMPLE);
            let facts = &st.kb.facts[..n];
            let r = demo::recall(net.model(), &st.gpu, facts).await.map_err(err)?;
            let dense = match &st.dense {
                Some(d) => Some(demo::recall(&d.model, &st.gpu, facts).await.map_err(err)?),
                None => None,
            };
            Ok(json!({"memory": r, "dense": dense}).to_string().into())
        })
    }

    /// Asks the model: resolves to JSON `{"prompt", "answer", "dense_answer", "expected",
    /// "reads": [{"layer", "head", "slots", "weights"}]}` (the reads: every memory head's top-k
    /// at the prompt's last position; `dense_answer`: the dense model's, or null; `expected`
    /// is the known object, or null).
    pub fn ask(&self, subject: String, relation: String) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = lock(&state)?;
            let net = st
                .net
                .as_ref()
                .ok_or_else(|| err("no model yet: train or load one"))?;
            let fact = Fact {
                subject: subject.trim().to_string(),
                relation: relation.trim().to_string(),
                object: String::new(),
            };
            let prompt = fact.prompt();
            let answer = demo::ask(net.model(), &st.gpu, &prompt, MAX_ANSWER_BYTES)
                .await
                .map_err(err)?;
            let dense_answer = match &st.dense {
                Some(d) => Some(
                    demo::ask(&d.model, &st.gpu, &prompt, MAX_ANSWER_BYTES)
                        .await
                        .map_err(err)?
                        .text,
                ),
                None => None,
            };
            let expected = st
                .kb
                .facts
                .iter()
                .find(|f| f.subject == fact.subject && f.relation == fact.relation)
                .map(|f| f.answer());
            let reads: Vec<_> = answer
                .reads
                .iter()
                .map(|r| json!({"layer": r.layer, "head": r.head, "slots": r.slots, "weights": r.weights}))
                .collect();
            Ok(
                json!({"prompt": prompt, "answer": answer.text, "dense_answer": dense_answer, "expected": expected, "reads": reads})
                    .to_string()
                    .into(),
            )
        })
    }

    /// Teaches the model one fact with sparse memory fine-tuning (only the value rows most
    /// specific to the fact change; `memlayers teach`'s recipe), for at most `max_steps` steps,
    /// stopping once the model answers it. The fact then joins the facts (replacing the
    /// object of the same subject and relation). Resolves to JSON `{"learned", "steps",
    /// "rows_per_step", "old_recall_before", "old_recall_after"}` (old recall: on the recall
    /// sample of the other facts).
    pub fn teach(
        &self,
        subject: String,
        relation: String,
        object: String,
        max_steps: u32,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut guard = lock(&state)?;
            let State { gpu, kb, net, .. } = &mut *guard;
            let net = net
                .as_mut()
                .ok_or_else(|| err("no model yet: train or load one"))?;
            let fact = typed_fact(&subject, &relation, &object)?;
            let seq = net.model().config.max_seqlen;
            if fact.sentence_len() + 1 > seq {
                return Err(err(format!(
                    "the fact has {} bytes; this model reads at most {}",
                    fact.sentence_len(),
                    seq - 1
                )));
            }
            let same = |f: &Fact| f.subject == fact.subject && f.relation == fact.relation;
            let n = kb.facts.len().min(RECALL_SAMPLE);
            let old: Vec<Fact> = kb.facts[..n].iter().filter(|f| !same(f)).cloned().collect();
            let before = demo::recall(net.model(), gpu, &old).await.map_err(err)?;
            if !matches!(net, Net::Taught(_)) {
                let weights = match &*net {
                    Net::Training(t) => {
                        ModelWeights::from_tensors(&t.model.config, &t.weights(gpu).await.map_err(err)?)
                            .map_err(err)?
                    }
                    Net::Loaded(_, w) => (**w).clone(),
                    Net::Taught(_) => unreachable!("checked above"),
                };
                if weights.config.memory.is_none() {
                    return Err(err("this model has no memory layer to teach"));
                }
                // The background: the model's reads at the answers of the facts it knows.
                let counts = demo::fact_slot_counts(
                    net.model(),
                    gpu,
                    &kb.facts,
                    (BACKGROUND_SEED, BACKGROUND_BATCHES),
                    (BATCH, seq),
                )
                .await
                .map_err(err)?;
                let config = TeachConfig {
                    method: Method::SparseMemory,
                    slots: TEACH_SLOTS,
                    steps: max_steps.max(1),
                    lr: memlayers::teach::VALUE_ROWS_ADAMW_LR,
                    optimizer: ValueOptimizer::AdamW,
                    reads_at: ReadsAt::Mistakes,
                    lora: Default::default(),
                    ranking: Default::default(),
                };
                *net = Net::Taught(Box::new(
                    Teacher::new(gpu, &weights, config, Some(&counts)).map_err(err)?,
                ));
            }
            let Net::Taught(teacher) = net else {
                unreachable!("made above")
            };
            let mut rng = Rng::new(TEACHING_DATA_SEED);
            let one = [fact.clone()];
            let (mut steps, mut rows, mut learned) = (0u32, 0usize, false);
            while steps < max_steps && !learned {
                for _ in 0..TEACH_CHECK_EVERY.min(max_steps - steps) {
                    let (x, y) = demo::training_batch(&one, &mut rng, TEACH_BATCH, seq);
                    teacher.step(gpu, &x, &y, TEACH_BATCH, seq).await.map_err(err)?;
                    rows += teacher.rows_updated;
                    steps += 1;
                }
                learned = demo::recalled(&teacher.trainer.model, gpu, &one)
                    .await
                    .map_err(err)?[0];
            }
            let after = demo::recall(&teacher.trainer.model, gpu, &old)
                .await
                .map_err(err)?;
            match kb.facts.iter_mut().find(|f| same(f)) {
                Some(f) => f.object = fact.object.clone(),
                None => kb.facts.push(fact),
            }
            Ok(json!({
                "learned": learned,
                "steps": steps,
                "rows_per_step": rows as f64 / steps.max(1) as f64,
                "old_recall_before": before,
                "old_recall_after": after,
            })
            .to_string()
            .into())
        })
    }

    /// Loads a model saved by the native CLI (`memlayers demo` or `train`): its config.json
    /// text and weights.safetensors bytes. Resolves to the model's description as JSON;
    /// rejects with a message naming what is wrong.
    pub fn load_model(&self, config_json: String, weights: Vec<u8>) -> Result<String, JsValue> {
        let mut st = lock(&self.state)?;
        let args = LMTransformerArgs::from_json(&config_json).map_err(err)?;
        let config = args.resolve().map_err(err)?;
        if config.vocab < 256 {
            return Err(err("this page asks byte-level models (vocab_size >= 256)"));
        }
        let file = TensorFile::from_bytes(&weights, "weights.safetensors").map_err(err)?;
        let w = ModelWeights::from_tensors(&config, &file).map_err(err)?;
        let model = Model::new(&st.gpu, &w).map_err(err)?;
        let description = describe(&w, 0);
        st.net = Some(Net::Loaded(Box::new(model), Box::new(w)));
        st.dense = None;
        st.args = Some(args);
        Ok(description)
    }

    /// Loads a lingua consolidated folder with the bytes tokenizer: its params.json text and
    /// consolidated.pth bytes. Resolves to the model's description as JSON; rejects with a
    /// message naming what is wrong.
    pub fn load_lingua(&self, params_json: String, consolidated: Vec<u8>) -> Result<String, JsValue> {
        let mut st = lock(&self.state)?;
        let params = LinguaParams::parse(&params_json, "params.json").map_err(err)?;
        if params.tokenizer.kind != TokenizerKind::Bytes {
            return Err(err(format!(
                "this page asks byte-level models; this one uses lingua's {} tokenizer",
                params.tokenizer.kind.name()
            )));
        }
        let tensors = lingua::read_consolidated_bytes(consolidated, "consolidated.pth").map_err(err)?;
        let w = lingua::model_weights(&params, tensors, "consolidated.pth").map_err(err)?;
        let model = Model::new(&st.gpu, &w).map_err(err)?;
        let description = describe(&w, 0);
        st.net = Some(Net::Loaded(Box::new(model), Box::new(w)));
        st.dense = None;
        st.args = Some(params.model);
        Ok(description)
    }

    /// Opens a Hugging Face model folder given as its files (`names[i]` the file name of
    /// `files[i]`, a Uint8Array; `folder` names it in messages): config.json, tokenizer.json,
    /// the weights and the optional generation and tokenizer configurations, as
    /// `HfFolder::from_files` takes them. `q8`: 8-bit weights (a quarter of f32's memory).
    /// Returns the model's description as JSON `{"architecture", "layers", "dim", "vocab",
    /// "params", "chat"}`; rejects with a message naming what is wrong or too large.
    pub fn open_hf(
        &self,
        folder: String,
        names: Vec<String>,
        files: js_sys::Array,
        q8: bool,
    ) -> Result<String, JsValue> {
        let mut st = lock(&self.state)?;
        if names.len() != files.length() as usize {
            return Err(err("open_hf: a name for each file"));
        }
        let files: Vec<(String, Vec<u8>)> = names
            .into_iter()
            .zip(files.iter())
            .map(|(name, bytes)| (name, js_sys::Uint8Array::new(&bytes).to_vec()))
            .collect();
        // The previous model's buffers go before the next one's are made.
        st.hf = None;
        let opened = HfFolder::from_files(&folder, files).map_err(err)?;
        let precision = if q8 {
            WeightPrecision::Q8
        } else {
            WeightPrecision::F32
        };
        let model = opened.upload(&st.gpu, precision).map_err(err)?;
        let c = opened.config();
        let description = json!({
            "architecture": opened.hf.architectures.first(),
            "layers": c.n_layers,
            "dim": c.dim,
            "vocab": c.vocab,
            "params": memlayers::model::ModelLayout::new(c).map_err(err)?.registry.specs().iter().map(|s| s.len()).sum::<usize>(),
            "chat": opened.chat_template.is_some(),
            "weights": precision.name(),
        })
        .to_string();
        st.hf = Some(HfModel {
            folder: Box::new(opened),
            net: HfNet::Loaded(Box::new(model)),
            probe: None,
        });
        Ok(description)
    }

    /// Greedy generation from the opened Hugging Face model: `prompt` tokenized as
    /// transformers does (`chat`: as one user message in the chat template), then up to
    /// `max_tokens` tokens, each decoded piece passed to `on_text` as soon as it completes a
    /// character, until an EOS id. Resolves to JSON `{"prompt_tokens", "new_tokens",
    /// "tokens_per_s", "eos"}` (tokens_per_s: the decoding steps after the prompt's).
    pub fn generate(
        &self,
        prompt: String,
        max_tokens: u32,
        chat: bool,
        on_text: js_sys::Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = lock(&state)?;
            let hf = st
                .hf
                .as_ref()
                .ok_or_else(|| err("no Hugging Face model opened"))?;
            let (model, folder) = (hf.model(), &hf.folder);
            let ids = folder.prompt_ids(&prompt, chat).map_err(err)?;
            if ids.is_empty() {
                return Err(err("the prompt gives no tokens"));
            }
            let limit = model.config.max_seqlen.saturating_sub(ids.len());
            let max_tokens = (max_tokens as usize).min(limit);
            let mut cache = model.new_cache(&st.gpu);
            let mut stream = TextStream::default();
            let (mut feed, mut produced, mut eos) = (ids.clone(), 0usize, false);
            let mut decode_started = None;
            while produced < max_tokens {
                let logits = model
                    .forward_last_with_cache(&st.gpu, &feed, &mut cache)
                    .await
                    .map_err(err)?;
                if decode_started.is_none() {
                    decode_started = Some((js_sys::Date::now(), produced));
                }
                let next = demo::argmax(&logits);
                produced += 1;
                if folder.eos_ids.contains(&next) {
                    eos = true;
                    break;
                }
                let piece = stream.push(&folder.tokenizer, next).map_err(err)?;
                if !piece.is_empty() {
                    on_text.call1(&JsValue::NULL, &JsValue::from_str(&piece))?;
                }
                feed = vec![next];
            }
            let tokens_per_s = decode_started.and_then(|(t0, n0)| {
                let seconds = (js_sys::Date::now() - t0) / 1000.0;
                (produced > n0 + 1 && seconds > 0.0).then(|| (produced - n0 - 1) as f64 / seconds)
            });
            Ok(json!({"prompt_tokens": ids.len(), "new_tokens": produced, "tokens_per_s": tokens_per_s, "eos": eos})
                .to_string()
                .into())
        })
    }

    /// Teaches the opened Hugging Face model one fact by sparse memory fine-tuning (only the
    /// memory's value rows most specific to the fact change), as `memlayers teach` does. A
    /// model without a memory first gets one beside its middle layer, as `memlayers retrofit`
    /// adds it (value rows zero: the model computes what it did), with its background reads
    /// on the probe prompts. Steps until the model answers the fact, at most `max_steps`.
    /// Resolves to JSON `{"retrofitted", "learned", "steps", "rows_per_step", "answer",
    /// "kept", "probes": [{"prompt", "before", "after"}]}`: `answer` the greedy continuation
    /// of the fact's prompt, `probes` the first `PAGE_PROBES` built-in probe prompts'
    /// 16-token greedy continuations before any teaching and now, `kept` how many are
    /// unchanged. Teaching updates f32 weights: a model opened with 8-bit weights is taught,
    /// and then generates, with its f32 weights (its continuations before are the f32
    /// model's too).
    pub fn teach_hf(
        &self,
        subject: String,
        relation: String,
        object: String,
        max_steps: u32,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut guard = lock(&state)?;
            let State { gpu, hf, .. } = &mut *guard;
            let hf = hf.as_mut().ok_or_else(|| err("no Hugging Face model opened"))?;
            let fact = typed_fact(&subject, &relation, &object)?;
            let eos = hf.folder.eos_ids.clone();
            let pad = eos.first().copied().unwrap_or(0);
            let encoded = encode_facts(std::slice::from_ref(&fact), &hf.folder.tokenizer).map_err(err)?;
            let seq = row_len(&encoded);
            if seq + 1 > hf.model().config.max_seqlen {
                return Err(err("the fact is longer than the model's context"));
            }
            let mut retrofitted = false;
            if let HfNet::Loaded(model) = &hf.net {
                let keep = model.config.max_seqlen.saturating_sub(CONTINUATION_TOKENS).max(1);
                let prompts: Vec<Vec<u32>> = probe_lines(DEFAULT_PROBE, "the built-in probe prompts")
                    .map_err(err)?
                    .iter()
                    .take(PAGE_PROBES)
                    .map(|l| {
                        let ids = hf.folder.tokenizer.encode(l, true)?;
                        Ok(ids[ids.len().saturating_sub(keep)..].to_vec())
                    })
                    .collect::<memlayers::Result<_>>()
                    .map_err(err)?;
                let mut weights = hf.folder.read_weights().map_err(err)?;
                if weights.config.memory.is_none() {
                    let c = &weights.config;
                    let sizes = MemorySizes::default_for(c, weights.parameter_count());
                    let (_, config) =
                        retrofit_config(c, &[c.n_layers / 2], &sizes, MemoryPlacement::Parallel)
                            .map_err(err)?;
                    weights = retrofitted_weights(&weights, &config, 0).map_err(err)?;
                    retrofitted = true;
                }
                // The continuations before teaching, of the f32 model that is taught (a new
                // memory's zero values leave the loaded model's logits as they were; 8-bit
                // weights would differ), and the background: its reads on the probe prompts.
                let with_memory = Model::new(gpu, &weights).map_err(err)?;
                let before = greedy_continuations(&with_memory, gpu, &prompts, CONTINUATION_TOKENS, &eos)
                    .await
                    .map_err(err)?;
                let counts = text_slot_counts(&with_memory, gpu, &prompts, pad)
                    .await
                    .map_err(err)?;
                drop(with_memory);
                let rows = weights.config.memory.as_ref().map_or(0, |m| m.n_values());
                let config = TeachConfig {
                    method: Method::SparseMemory,
                    slots: TEACH_SLOTS.min(rows / HF_TEACH_TABLE_SHARE).max(1),
                    steps: max_steps.max(1),
                    lr: memlayers::teach::RETROFIT_VALUE_ROWS_ADAMW_LR,
                    optimizer: ValueOptimizer::AdamW,
                    reads_at: ReadsAt::Mistakes,
                    lora: Default::default(),
                    ranking: Default::default(),
                };
                let teacher = Teacher::new(gpu, &weights, config, Some(&counts)).map_err(err)?;
                hf.net = HfNet::Taught(Box::new(teacher));
                hf.probe = Some(Probe { prompts, before });
            }
            let HfNet::Taught(teacher) = &mut hf.net else {
                unreachable!("made above")
            };
            let mut rng = Rng::new(TEACHING_DATA_SEED);
            let (mut steps, mut rows, mut learned) = (0u32, 0usize, false);
            while steps < max_steps && !learned {
                for _ in 0..TEACH_CHECK_EVERY.min(max_steps - steps) {
                    let (x, y) = fact_batch(&encoded, &mut rng, TEACH_BATCH, seq, pad);
                    teacher.step(gpu, &x, &y, TEACH_BATCH, seq).await.map_err(err)?;
                    rows += teacher.rows_updated;
                    steps += 1;
                }
                let one = std::slice::from_ref(&fact);
                let scores = score_token_facts(&teacher.trainer.model, gpu, one, &encoded, pad)
                    .await
                    .map_err(err)?;
                learned = scores.recall() == 1.0;
            }
            let model = &teacher.trainer.model;
            let tokenizer = &hf.folder.tokenizer;
            let fact_prompt = [encoded[0].prompt.clone()];
            let answer = greedy_continuations(model, gpu, &fact_prompt, encoded[0].answer.len(), &eos)
                .await
                .map_err(err)?;
            let answer = tokenizer.decode(&answer[0], true).map_err(err)?;
            let Probe { prompts, before } = hf.probe.as_ref().expect("made with the teacher");
            let after = greedy_continuations(model, gpu, prompts, CONTINUATION_TOKENS, &eos)
                .await
                .map_err(err)?;
            let text = |ids: &[u32]| tokenizer.decode(ids, true).map_err(err);
            let probes = prompts
                .iter()
                .zip(before)
                .zip(&after)
                .map(|((p, b), a)| Ok(json!({"prompt": text(p)?, "before": text(b)?, "after": text(a)?})))
                .collect::<Result<Vec<_>, JsValue>>()?;
            let kept = before.iter().zip(&after).filter(|(b, a)| b == a).count();
            Ok(json!({
                "retrofitted": retrofitted,
                "learned": learned,
                "steps": steps,
                "rows_per_step": rows as f64 / steps.max(1) as f64,
                "answer": answer,
                "kept": kept,
                "probes": probes,
            })
            .to_string()
            .into())
        })
    }

    /// The memory layer's forward on this adapter: `memlayers bench`'s small configuration
    /// (d=256, 4 heads, n_keys=128, knn=16, k_dim=128, f32 values), `tokens` per pass, `iters`
    /// timed passes; the same workload as the native bench's (ForwardWorkload). Resolves to
    /// JSON `{"tokens_per_s", "kernels": [[label, ms], ...]}` (kernels: GPU time per kernel,
    /// empty when the browser offers no timestamp queries).
    pub fn bench_forward(&self, tokens: u32, iters: u32) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let st = lock(&state)?;
            let config = MemoryConfig {
                n_keys: 128,
                knn: 16,
                k_dim: 128,
                ..MemoryConfig::memory_plus(256)
            };
            let work =
                memlayers::memory::ForwardWorkload::new(&st.gpu, &config, ValueDtype::F32, tokens as usize)
                    .map_err(err)?;
            let now = || js_sys::Date::now() / 1000.0;
            let tps = work
                .tokens_per_s(&st.gpu, iters as usize, now)
                .await
                .map_err(err)?;
            let kernels: Vec<(&str, f64)> = work
                .kernel_times(&st.gpu, iters as usize)
                .await
                .map_err(err)?
                .into_iter()
                .map(|(label, s)| (label, s * 1e3))
                .collect();
            Ok(json!({"tokens_per_s": tps, "kernels": kernels})
                .to_string()
                .into())
        })
    }
}

/// The state, or a "busy" rejection when another call is still running.
fn lock(state: &Rc<RefCell<State>>) -> Result<RefMut<'_, State>, JsValue> {
    state
        .try_borrow_mut()
        .map_err(|_| err("busy: another call is still running"))
}

/// The fact a user typed, each part trimmed; all three parts are needed.
fn typed_fact(subject: &str, relation: &str, object: &str) -> Result<Fact, JsValue> {
    let fact = Fact {
        subject: subject.trim().to_string(),
        relation: relation.trim().to_string(),
        object: object.trim().to_string(),
    };
    if fact.subject.is_empty() || fact.relation.is_empty() || fact.object.is_empty() {
        return Err(err("a fact needs a subject, a relation and an object"));
    }
    Ok(fact)
}

fn describe(w: &ModelWeights, steps: u32) -> String {
    let c = &w.config;
    json!({
        "dim": c.dim,
        "layers": c.n_layers,
        "params": w.parameter_count(),
        "memory_params": w.memory_parameter_count(),
        "memory": c.memory.as_ref().map(|m| json!({
            "values": m.n_values(), "heads": m.heads, "knn": m.knn, "k_dim": m.k_dim,
            "layers": c.memory_layers,
        })),
        "steps": steps,
    })
    .to_string()
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn web_log(s: &str);
}
