//! `memlayers teach` on a Hugging Face folder (a retrofitted one for the memory methods): the
//! facts tokenized by the folder's tokenizer, one a row; what the model knew before measured
//! on probe prompts, as the share whose greedy continuation (16 tokens or to the EOS) is unchanged and as the
//! loss on them, beside the new facts' recall.

use super::super::model_dir::{lines_or_probe, link_or_copy, write_new_folder};
use super::super::progress::Progress;
use super::{compared_methods, read_facts, step_finite, teach_config, Args};
use memlayers::demo::{Fact, KnowledgeBase};
use memlayers::io::hf::names::hf_tensors;
use memlayers::io::hf::weights::{model_files, MEMORY_FILE};
use memlayers::io::hf::HfFolder;
use memlayers::io::{write_atomic, TensorFile};
use memlayers::model::{Model, ModelWeights, SlotCounts, SLOT_COUNTS_FILE};
use memlayers::rng::Rng;
use memlayers::teach::{
    encode_facts, fact_batch, greedy_continuations, kept_continuations, row_len, score_token_facts,
    text_loss, Method, TeachConfig, Teacher, TokenFact, CONTINUATION_TOKENS,
};
use memlayers::{Error, Gpu, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// The probe prompts, their original continuations, and what the model scored before.
struct Probe {
    prompts: Vec<Vec<u32>>,
    continuations: Vec<Vec<u32>>,
    loss_before: f32,
    /// The share kept by the untaught model itself: 1 unless the cached decoding and the
    /// one-forward check disagree on a near tie (measured, not assumed).
    kept_before: f32,
    source: String,
}

/// Facts as text and as tokens: the ones being taught, or the model's own.
struct NewFacts {
    facts: Vec<Fact>,
    encoded: Vec<TokenFact>,
}

struct Run {
    method: Method,
    config: TeachConfig,
    new_recall: f32,
    kept: f32,
    probe_loss: f32,
    /// Recall of the model's original facts after teaching (where it has them).
    old_recall: Option<f32>,
    /// `(step, new recall, kept continuations)`.
    curve: Vec<(u32, f32, f32)>,
    rows_per_step: f64,
    seconds: f64,
    weights: Option<ModelWeights>,
    /// LoRA's adapters as PEFT saves them, and their adapter_config.json.
    adapters: Option<(TensorFile, Value)>,
}

impl Run {
    fn json(&self, new_before: f32, probe: &Probe) -> Value {
        json!({
            "method": self.method.name(),
            "steps": self.config.steps,
            "lr": self.config.lr,
            "slots": (self.method == Method::SparseMemory).then_some(self.config.slots),
            "rank": (self.method == Method::SparseMemory).then_some(match self.config.ranking {
                memlayers::teach::SlotRanking::TfIdf => "tfidf",
                memlayers::teach::SlotRanking::Kl => "kl",
            }),
            "rows_updated_per_step": self.rows_per_step,
            "new_recall_before": new_before,
            "new_recall": self.new_recall,
            "kept_continuations": self.kept,
            "kept_continuations_before": probe.kept_before,
            "probe_loss_before": probe.loss_before,
            "probe_loss_after": self.probe_loss,
            "probe": probe.source,
            "old_recall_after": self.old_recall,
            "wall_seconds": self.seconds,
            "curve": self.curve.iter().map(|&(s, n, k)| json!({"step": s, "new_recall": n, "kept_continuations": k})).collect::<Vec<_>>(),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn teach(
    gpu: &Gpu,
    a: &Args,
    config: TeachConfig,
    weights: &ModelWeights,
    background: Option<&SlotCounts>,
    new: &NewFacts,
    probe: &Probe,
    old: Option<&NewFacts>,
    (pad, new_before): (u32, f32),
    keep: Option<&Path>,
) -> Result<Run> {
    // `keep`: the run whose weights are kept, with the folder of the model (LoRA's base).
    let keep_weights = keep.is_some();
    let method = config.method;
    let seq = row_len(&new.encoded);
    let batch = a.batch.min(new.encoded.len()).max(1);
    let trainer = super::super::devices::trainer(gpu, a.devices.as_deref(), weights, config.train_config())?;
    let mut teacher = Teacher::with_trainer(gpu, trainer, config.clone(), background)?;
    let mut rng = Rng::new(a.seed ^ 0x7EAC);
    let started = Instant::now();
    let mut curve = vec![(0, new_before, probe.kept_before)];
    let mut rows = 0usize;
    let mut progress = Progress::new(method.name(), config.steps as u64);
    let recall = |t: &Teacher| -> Result<f32> {
        let scores = pollster::block_on(score_token_facts(
            &t.trainer.model,
            gpu,
            &new.facts,
            &new.encoded,
            pad,
        ))?;
        Ok(scores.recall())
    };
    let kept = |model: &Model| {
        pollster::block_on(kept_continuations(
            model,
            gpu,
            &probe.prompts,
            &probe.continuations,
            pad,
        ))
    };
    while teacher.trainer.step < config.steps {
        let (x, y) = fact_batch(&new.encoded, &mut rng, batch, seq, pad);
        let loss = step_finite(&mut teacher, gpu, (&x, &y), (batch, seq))?;
        rows += teacher.rows_updated;
        let step = teacher.trainer.step;
        if step % a.eval_every == 0 || step == config.steps {
            let (n, k) = (recall(&teacher)?, kept(&teacher.trainer.model)?);
            curve.push((step, n, k));
            progress.update(
                step as u64,
                format!("loss {loss:.3} new recall {n:.2} kept {k:.2}"),
            );
        }
    }
    let (new_recall, kept_after) = curve.last().map_or((0.0, 0.0), |c| (c.1, c.2));
    let probe_loss = pollster::block_on(text_loss(&teacher.trainer.model, gpu, &probe_texts(probe), pad))?;
    let old_recall = match old {
        Some(o) => Some(
            pollster::block_on(score_token_facts(
                &teacher.trainer.model,
                gpu,
                &o.facts,
                &o.encoded,
                pad,
            ))?
            .recall(),
        ),
        None => None,
    };
    let seconds = started.elapsed().as_secs_f64();
    progress.finish(format!(
        "new recall {new_recall:.3}, kept continuations {kept_after:.3}, probe loss {:.4} -> {probe_loss:.4} | {seconds:.0}s",
        probe.loss_before
    ));
    let weights = match keep_weights {
        true => Some(ModelWeights::from_tensors(
            &weights.config,
            &teacher.trainer.weights_blocking(gpu)?,
        )?),
        false => None,
    };
    let adapters = match (&teacher.lora, keep_weights) {
        (Some(lora), true) => Some((
            pollster::block_on(lora.peft_tensors(gpu))?,
            lora.peft_config(
                &std::fs::canonicalize(keep.unwrap_or(&a.model))?
                    .display()
                    .to_string(),
            ),
        )),
        _ => None,
    };
    Ok(Run {
        method,
        new_recall,
        kept: kept_after,
        probe_loss,
        old_recall,
        curve,
        rows_per_step: rows as f64 / config.steps as f64,
        seconds,
        weights,
        adapters,
        config,
    })
}

/// The probe prompts with their original continuations: the texts the probe loss is taken on.
fn probe_texts(probe: &Probe) -> Vec<Vec<u32>> {
    probe
        .prompts
        .iter()
        .zip(&probe.continuations)
        .map(|(p, c)| p.iter().chain(c).copied().collect())
        .collect()
}

/// The taught model as a Hugging Face folder at `out`: the source folder's files, with the
/// memory's tensors replaced (memory methods) or every tensor rewritten (full; lora, its
/// adapters merged).
fn save_model(
    source: &Path,
    folder: &HfFolder,
    out: &Path,
    weights: &ModelWeights,
    method: Method,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let (model, memory) = hf_tensors(weights)?;
    // A source that keeps only a memory takes its model's files from its base; the taught
    // folder then holds them itself.
    let base = model_folder(source, folder);
    let originals = model_files(&base)?;
    let index = base.join(memlayers::io::hf::weights::INDEX_FILE);
    let all = matches!(method, Method::Full | Method::Lora);
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in [&base, &source.to_path_buf()] {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            // The source's own config.json and slot counts win over the base's.
            let from_source = name == "config.json" || name == SLOT_COUNTS_FILE;
            if path.is_file() && (dir == &base) != from_source || base == source {
                files.push(path);
            }
        }
        if base == source {
            break;
        }
    }
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let rewritten = name == MEMORY_FILE || all && (originals.contains(&path) || path == index);
        if !path.is_file() || rewritten {
            continue;
        }
        if name == "config.json" && base != source {
            // The weights and tokenizer are here now: no base to name.
            let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .map_err(|e| Error::Format(format!("config.json: {e}")))?;
            if let Some(m) = json.get_mut("memory").and_then(|m| m.as_object_mut()) {
                m.remove("base");
            }
            write_atomic(
                &out.join("config.json"),
                serde_json::to_string_pretty(&json).unwrap_or_default().as_bytes(),
            )?;
            continue;
        }
        link_or_copy(&path, &out.join(&name))?;
    }
    if all {
        model.write(&out.join(memlayers::io::hf::weights::WEIGHTS_FILE))?;
    }
    if !memory.tensors.is_empty() {
        memory.write(&out.join(MEMORY_FILE))?;
    }
    Ok(())
}

/// The folder holding the model of `source`: its `memory.base` where it keeps only a memory.
fn model_folder(source: &Path, folder: &HfFolder) -> std::path::PathBuf {
    match folder.hf.memory.as_ref().and_then(|m| m.base.as_ref()) {
        Some(b) => source.join(b),
        None => source.to_path_buf(),
    }
}

/// The taught memory alone at `out`: `config.json` naming the folder with the model as its
/// base, `memory.safetensors` and the source's slot counts.
fn save_delta(source: &Path, folder: &HfFolder, out: &Path, weights: &ModelWeights) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let (_, memory) = hf_tensors(weights)?;
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(source.join("config.json"))?)
        .map_err(|e| Error::Format(format!("config.json: {e}")))?;
    // The model's folder: the source's own base where the source is itself a delta.
    let base = model_folder(source, folder);
    json["memory"]["base"] = Value::String(std::fs::canonicalize(&base)?.display().to_string());
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default().as_bytes(),
    )?;
    memory.write(&out.join(MEMORY_FILE))?;
    if source.join(SLOT_COUNTS_FILE).is_file() {
        link_or_copy(&source.join(SLOT_COUNTS_FILE), &out.join(SLOT_COUNTS_FILE))?;
    }
    Ok(())
}

pub fn run(a: &Args, method: Method) -> Result<()> {
    let total = Instant::now();
    let lesson = Lesson::read(a, method)?;
    let has_memory = lesson.weights.config.memory.is_some();
    let configs: Vec<TeachConfig> = compared_methods(a, method)
        .into_iter()
        .filter(|&m| !m.uses_memory() || has_memory)
        .map(|m| teach_config(a, m, memlayers::teach::RETROFIT_VALUE_ROWS_ADAMW_LR))
        .collect::<Result<_>>()?;
    let gpu = super::super::devices::main(a.devices.as_deref())?;
    let before = lesson.measure_before(&gpu, a)?;
    if let (Some(o), Some(r)) = (&lesson.old, before.old_recall) {
        println!("the model's own facts ({}): recall {r:.3}", o.facts.len());
    }
    println!(
        "{} new facts, {} probe prompts ({}); adapter {}; before: new recall {:.3}, probe loss {:.4}",
        lesson.new.facts.len(),
        before.probe.prompts.len(),
        before.probe.source,
        gpu.adapter_name(),
        before.new_recall,
        before.probe.loss_before
    );
    let base = model_folder(&a.model, &lesson.folder);
    let runs = write_new_folder(&a.out, "teach", |tmp| {
        let mut runs = Vec::new();
        for (i, c) in configs.into_iter().enumerate() {
            runs.push(teach(
                &gpu,
                a,
                c,
                &lesson.weights,
                lesson.background.as_ref(),
                &lesson.new,
                &before.probe,
                lesson.old.as_ref(),
                (lesson.pad, before.new_recall),
                (i == 0).then_some(base.as_path()),
            )?);
        }
        lesson.write(tmp, a, &runs, &before)?;
        Ok(runs)
    })?;
    print_summary(a, &runs, &before, total);
    Ok(())
}

/// A Hugging Face folder and what it is taught: its weights and tokenizer, the new facts, its
/// own facts where it has them, the probe prompts, and its slot counts.
struct Lesson {
    folder: HfFolder,
    weights: ModelWeights,
    /// The token that pads a row (the first EOS id).
    pad: u32,
    /// The new facts as `KnowledgeBase` (written to OUT/new_facts.tsv) and tokenized.
    new_kb: KnowledgeBase,
    new: NewFacts,
    /// The model's own facts (an exported demo model keeps its facts.tsv), or `--old`'s.
    old: Option<NewFacts>,
    /// The probe prompts, tokenized, each cut to its last tokens where the context is short.
    prompts: Vec<Vec<u32>>,
    /// Where the probe prompts come from.
    source: String,
    background: Option<SlotCounts>,
}

/// What the untaught model scored: the new facts' recall, its continuations of the probe
/// prompts and their loss, its own facts' recall.
struct Before {
    new_recall: f32,
    probe: Probe,
    old_recall: Option<f32>,
}

impl Lesson {
    /// Reads the folder and the facts and checks the arguments, before any teaching.
    fn read(a: &Args, method: Method) -> Result<Self> {
        let folder = HfFolder::open(&a.model)?;
        let weights = folder.read_weights()?;
        let config = &weights.config;
        if method.uses_memory() && !a.compare && config.memory.is_none() {
            return Err(Error::Config(format!(
                "teach --method {}: {} has no memory; add one with memlayers retrofit (or use --method full)",
                method.name(),
                a.model.display()
            )));
        }
        if a.delta && !method.uses_memory() {
            return Err(Error::Config(format!(
                "teach --delta saves a taught memory; --method {} changes the model itself",
                method.name()
            )));
        }
        // Checked again when writing; said here before any teaching.
        if a.out.exists() {
            return Err(Error::Config(format!(
                "{} exists: teach writes a new folder",
                a.out.display()
            )));
        }
        let pad = folder.eos_ids.first().copied().unwrap_or(0);
        let new_kb = match (&a.facts, a.new_people) {
            (Some(path), _) => read_facts(path)?,
            (None, Some(n)) if n > 0 => {
                KnowledgeBase::new_people(n, a.seed ^ 0x4E3E, &KnowledgeBase { facts: Vec::new() })
            }
            _ => {
                return Err(Error::Config(
                    "teach: give --facts NEW.tsv or --new-people N".into(),
                ))
            }
        };
        let new = NewFacts {
            encoded: encode_facts(&new_kb.facts, &folder.tokenizer)?,
            facts: new_kb.facts.clone(),
        };
        if row_len(&new.encoded) + 1 > config.max_seqlen {
            return Err(Error::Config(format!(
                "the longest fact has {} tokens; this model's context is {}",
                row_len(&new.encoded) + 1,
                config.max_seqlen
            )));
        }
        let old_path = a
            .old
            .clone()
            .unwrap_or_else(|| a.model.join(super::super::model_dir::FACTS_FILE));
        let old = match old_path.is_file() {
            true => {
                let kb = read_facts(&old_path)?;
                Some(NewFacts {
                    encoded: encode_facts(&kb.facts, &folder.tokenizer)?,
                    facts: kb.facts,
                })
            }
            false if a.old.is_some() => {
                return Err(Error::Config(format!("{} does not exist", old_path.display())));
            }
            false => None,
        };
        let (probe_prompts, source) = lines_or_probe(a.probe.as_deref())?;
        // As generation does: a prompt longer than the context leaves for its continuation
        // keeps its last tokens.
        let keep = config.max_seqlen.saturating_sub(CONTINUATION_TOKENS).max(1);
        let prompts: Vec<Vec<u32>> = probe_prompts
            .iter()
            .map(|l| {
                let ids = folder.tokenizer.encode(l, true)?;
                Ok(ids[ids.len().saturating_sub(keep)..].to_vec())
            })
            .collect::<Result<_>>()?;
        let background = match a.model.join(SLOT_COUNTS_FILE).is_file() {
            true => Some(SlotCounts::from_tensors(
                &TensorFile::read(&a.model.join(SLOT_COUNTS_FILE))?,
                &config.memory_layers,
                config.memory.as_ref().map_or(0, |m| m.n_values()),
            )?),
            false => None,
        };
        Ok(Lesson {
            folder,
            weights,
            pad,
            new_kb,
            new,
            old,
            prompts,
            source,
            background,
        })
    }

    fn measure_before(&self, gpu: &Gpu, a: &Args) -> Result<Before> {
        let model = super::super::devices::model(gpu, a.devices.as_deref(), &self.weights)?;
        let pad = self.pad;
        let old_recall = match &self.old {
            Some(o) => {
                Some(pollster::block_on(score_token_facts(&model, gpu, &o.facts, &o.encoded, pad))?.recall())
            }
            None => None,
        };
        let new = &self.new;
        let new_recall =
            pollster::block_on(score_token_facts(&model, gpu, &new.facts, &new.encoded, pad))?.recall();
        let continuations = pollster::block_on(greedy_continuations(
            &model,
            gpu,
            &self.prompts,
            CONTINUATION_TOKENS,
            &self.folder.eos_ids,
        ))?;
        let mut probe = Probe {
            prompts: self.prompts.clone(),
            continuations,
            loss_before: 0.0,
            kept_before: 0.0,
            source: self.source.clone(),
        };
        probe.loss_before = pollster::block_on(text_loss(&model, gpu, &probe_texts(&probe), pad))?;
        probe.kept_before = pollster::block_on(kept_continuations(
            &model,
            gpu,
            &probe.prompts,
            &probe.continuations,
            pad,
        ))?;
        Ok(Before {
            new_recall,
            probe,
            old_recall,
        })
    }

    /// Writes into `tmp` (the new folder being made) the taught model (`--method`'s, the
    /// first run; `--delta`: its memory alone), LoRA's adapters as a PEFT folder,
    /// `new_facts.tsv` and `teach.json`.
    fn write(&self, tmp: &Path, a: &Args, runs: &[Run], before: &Before) -> Result<()> {
        let chosen = &runs[0];
        let taught = chosen.weights.as_ref().expect("the first run keeps its weights");
        match a.delta {
            true => save_delta(&a.model, &self.folder, &tmp.join("model"), taught)?,
            false => save_model(&a.model, &self.folder, &tmp.join("model"), taught, chosen.method)?,
        }
        if let Some((tensors, config)) = &chosen.adapters {
            // PEFT's folder: transformers with peft loads the original folder and these.
            let adapter = tmp.join("adapter");
            std::fs::create_dir_all(&adapter)?;
            tensors.write(&adapter.join("adapter_model.safetensors"))?;
            write_atomic(
                &adapter.join("adapter_config.json"),
                serde_json::to_string_pretty(config)
                    .unwrap_or_default()
                    .as_bytes(),
            )?;
        }
        write_atomic(&tmp.join("new_facts.tsv"), self.new_kb.to_tsv().as_bytes())?;
        let json = |r: &Run| {
            let mut v = r.json(before.new_recall, &before.probe);
            v["old_recall_before"] = json!(before.old_recall);
            v
        };
        let mut result = json(chosen);
        if a.compare {
            result["compare"] = Value::Array(runs.iter().map(json).collect());
        }
        write_atomic(
            &tmp.join("teach.json"),
            serde_json::to_string_pretty(&result)
                .unwrap_or_default()
                .as_bytes(),
        )
    }
}

fn print_summary(a: &Args, runs: &[Run], before: &Before, total: Instant) {
    println!(
        "\n{:<14} {:>6} {:>10} {:>10} {:>10} {:>20} {:>16} {:>7}",
        "method", "steps", "rows/step", "new recall", "kept", "probe loss", "own facts", "time"
    );
    for r in runs {
        let own = match (before.old_recall, r.old_recall) {
            (Some(b), Some(a)) => format!("{b:.3} -> {a:.3}"),
            _ => "-".into(),
        };
        println!(
            "{:<14} {:>6} {:>10.0} {:>10.3} {:>10.3} {:>9.4} -> {:<8.4} {:>16} {:>6.0}s",
            r.method.name(),
            r.config.steps,
            r.rows_per_step,
            r.new_recall,
            r.kept,
            before.probe.loss_before,
            r.probe_loss,
            own,
            r.seconds
        );
    }
    println!(
        "\ntotal {:.0}s; wrote {} (the taught model in {}/model)",
        total.elapsed().as_secs_f64(),
        a.out.display(),
        a.out.display()
    );
}
