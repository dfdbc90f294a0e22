//! `memlayers teach`: continue training a model on new facts and measure what it forgets.
//! Recall of the new facts, recall and answer loss of the model's original facts before and
//! after; with `--compare`, every method on the same new facts and `forgetting.png` (old-fact
//! recall against new-fact recall along training: the Pareto picture of Lin et al. 2025).

mod hf;

use super::plot::{line_chart, Series};
use super::progress::Progress;
use memlayers::demo::{score, training_batch, Fact, KnowledgeBase};
use memlayers::io::{write_atomic, TensorFile};
use memlayers::model::{ModelWeights, SlotCounts, SLOT_COUNTS_FILE};
use memlayers::rng::Rng;
use memlayers::teach::{Method, ReadsAt, TeachConfig, Teacher};
use memlayers::train::ValueOptimizer;
use memlayers::{Error, Gpu, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder from `memlayers demo` or `memlayers train` (byte-level), or a Hugging
    /// Face folder (retrofitted with `memlayers retrofit` for the memory methods).
    #[arg(long)]
    pub model: PathBuf,
    /// The new facts: subject<TAB>relation<TAB>object lines (the demo's format).
    #[arg(long, conflicts_with = "new_people")]
    pub facts: Option<PathBuf>,
    /// Instead of --facts: this many new fictional people (4 facts each, none of them in the
    /// old facts), drawn from --seed; written to OUT/new_facts.tsv.
    #[arg(long)]
    pub new_people: Option<usize>,
    /// Output folder: the taught model, teach.json, forgetting.png.
    #[arg(long, default_value = "teach-out")]
    pub out: PathBuf,
    /// sparse-memory (the TF-IDF-ranked value rows the batch reads), memory (every value row
    /// the batch reads), full (every parameter) or lora (rank-r adapters on the attention and
    /// feed-forward projections).
    #[arg(long, default_value = "sparse-memory", value_parser = ["sparse-memory", "memory", "full", "lora"])]
    pub method: String,
    /// How sparse-memory ranks the rows a batch read: tfidf (Lin et al.) or kl (each row's
    /// term of the KL divergence of the batch's reads from the background's; Goyal et al.).
    #[arg(long, default_value = "tfidf", value_parser = ["tfidf", "kl"])]
    pub rank: String,
    /// LoRA's rank.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// LoRA's alpha (the adapters' product is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f32,
    /// Value rows updated per step and table (sparse-memory).
    #[arg(long, default_value_t = DEFAULT_SLOTS)]
    pub slots: usize,
    /// Teaching steps.
    #[arg(long, default_value_t = 300)]
    pub steps: u32,
    /// Learning rate of --method (with --compare the others keep theirs) [sparse-memory and
    /// memory: AdamW 2e-2 (a retrofitted memory: 0.3) or SGD 100 on the value rows; full:
    /// 1e-3, the value tables at 10x; lora: 1e-3].
    #[arg(long)]
    pub lr: Option<f32>,
    /// The value rows' optimiser in the memory methods (AdamW forgot a little less than SGD
    /// at the same new-fact recall here, unlike in the paper: docs/results.md).
    #[arg(long, default_value = "adamw", value_parser = ["adamw", "sgd"])]
    pub optimizer: String,
    /// Where sparse-memory counts the batch's reads: at the answer bytes the model still gets
    /// wrong, or at every answer byte (the memory method always uses every answer byte).
    #[arg(long, default_value = "mistakes", value_parser = ["mistakes", "answers"])]
    pub reads_at: String,
    /// Rows of the model's context per step (facts packed whole).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// The model's original facts, for the forgetting measures [MODEL/facts.tsv, which
    /// `memlayers demo` writes].
    #[arg(long)]
    pub old: Option<PathBuf>,
    /// Run every method on the same new facts (the taught model saved is --method's) and draw
    /// forgetting.png.
    #[arg(long)]
    pub compare: bool,
    /// Seed of the data order (and of --new-people).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recall of the new facts and of a sample of the old ones every this many steps.
    #[arg(long, default_value_t = 10)]
    pub eval_every: u32,
    /// Hugging Face folders, memory methods: save only the taught memory (model/ holds
    /// config.json, memory.safetensors and the slot counts, and names the original folder as
    /// its base), so that one base model serves many taught memories.
    #[arg(long)]
    pub delta: bool,
    /// Hugging Face models: the probe prompts, one a line, whose greedy continuations and loss
    /// measure what the model knew before [32 built-in general-knowledge openings].
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Shard the memory's value tables by columns over these adapters (indices as
    /// `memlayers info` lists them; one may repeat); the first holds the rest of the model.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
}

/// Rows a sparse-memory step updates per table. A batch of 16 rows of the demo's facts reads
/// about 1,000 to 2,000 distinct rows of a 4,096-row table at its answer positions; the paper
/// updated a few hundred to thousands of a million-slot memory. 256 keeps to the rows most
/// specific to the batch while leaving enough of them to carry its facts (the sweep:
/// docs/results.md).
const DEFAULT_SLOTS: usize = 256;

/// Old facts in the recall sample evaluated along training (all at the start and the end).
const CURVE_SAMPLE: usize = 400;

pub(super) fn read_facts(path: &Path) -> Result<KnowledgeBase> {
    KnowledgeBase::parse_tsv(
        &std::fs::read_to_string(path)
            .map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?,
    )
}

/// One method's run.
struct Taught {
    method: Method,
    config: TeachConfig,
    new_recall: f32,
    old_recall: f32,
    old_loss: f32,
    /// `(step, new recall, old recall on the sample)`.
    curve: Vec<(u32, f32, f32)>,
    rows_per_step: f64,
    seconds: f64,
    /// The taught weights, read back for the run that is saved only.
    weights: Option<TensorFile>,
}

struct Before {
    new_recall: f32,
    old_recall: f32,
    old_loss: f32,
    sample_recall: f32,
}

impl Taught {
    fn json(&self, before: &Before) -> Value {
        json!({
            "method": self.method.name(),
            "steps": self.config.steps,
            "lr": self.config.lr,
            "optimizer": match (self.method, self.config.optimizer) {
                (Method::Full, _) | (_, ValueOptimizer::AdamW) => "adamw",
                (_, ValueOptimizer::Sgd) => "sgd",
            },
            "slots": (self.method == Method::SparseMemory).then_some(self.config.slots),
            "rank": (self.method == Method::SparseMemory).then_some(match self.config.ranking {
                memlayers::teach::SlotRanking::TfIdf => "tfidf",
                memlayers::teach::SlotRanking::Kl => "kl",
            }),
            "reads_at": (self.method == Method::SparseMemory).then_some(match self.config.reads_at {
                ReadsAt::Answers => "answers",
                ReadsAt::Mistakes => "mistakes",
            }),
            "rows_updated_per_step": self.rows_per_step,
            "new_recall_before": before.new_recall,
            "new_recall": self.new_recall,
            "old_recall_before": before.old_recall,
            "old_recall_after": self.old_recall,
            "old_loss_before": before.old_loss,
            "old_loss_after": self.old_loss,
            "wall_seconds": self.seconds,
            "curve": self.curve.iter().map(|&(s, n, o)| json!({"step": s, "new_recall": n, "old_recall_sample": o})).collect::<Vec<_>>(),
        })
    }

    /// The old-fact recall (sample) when the new-fact recall first reached `level`.
    fn old_recall_at(&self, level: f32) -> Option<f32> {
        self.curve.iter().find(|c| c.1 >= level).map(|c| c.2)
    }
}

/// The teaching configuration of `method`: `--lr` for `--method` (every method's default for
/// the others in `--compare`, whose rates differ by orders of magnitude); `value_rows_lr`
/// the memory methods' AdamW default.
pub(super) fn teach_config(a: &Args, method: Method, value_rows_lr: f32) -> Result<TeachConfig> {
    let optimizer = match a.optimizer.as_str() {
        "adamw" => ValueOptimizer::AdamW,
        _ => ValueOptimizer::Sgd,
    };
    let chosen = Method::parse(&a.method)? == method;
    let lr = a.lr.filter(|_| chosen).unwrap_or(match (method, optimizer) {
        (Method::Full, _) => memlayers::teach::FULL_LR,
        (Method::Lora, _) => memlayers::teach::LORA_LR,
        (_, ValueOptimizer::Sgd) => memlayers::teach::VALUE_ROWS_SGD_LR,
        (_, ValueOptimizer::AdamW) => value_rows_lr,
    });
    if a.steps == 0 || a.batch == 0 || a.eval_every == 0 || !lr.is_finite() || lr <= 0.0 {
        return Err(Error::Config(
            "teach: --steps, --batch, --eval-every and --lr must be positive".into(),
        ));
    }
    Ok(TeachConfig {
        method,
        slots: a.slots,
        steps: a.steps,
        lr,
        optimizer,
        reads_at: match a.reads_at.as_str() {
            "answers" => ReadsAt::Answers,
            _ => ReadsAt::Mistakes,
        },
        lora: memlayers::teach::LoraConfig {
            rank: a.lora_rank,
            alpha: a.lora_alpha,
        },
        ranking: match a.rank.as_str() {
            "kl" => memlayers::teach::SlotRanking::Kl,
            _ => memlayers::teach::SlotRanking::TfIdf,
        },
    })
}

/// One teaching step on `tokens`/`targets` (`[batch, seq]`): its loss, or an error saying
/// the run diverged.
pub(super) fn step_finite(
    teacher: &mut Teacher,
    gpu: &Gpu,
    (tokens, targets): (&[u32], &[u32]),
    (batch, seq): (usize, usize),
) -> Result<f32> {
    let loss = teacher.step_blocking(gpu, tokens, targets, batch, seq)?;
    match loss.is_finite() {
        true => Ok(loss),
        false => Err(Error::Config(format!(
            "teach {}: the loss diverged by step {} (lr {})",
            teacher.config.method.name(),
            teacher.trainer.step,
            teacher.config.lr
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn teach(
    gpu: &Gpu,
    a: &Args,
    config: TeachConfig,
    weights: &ModelWeights,
    background: Option<&SlotCounts>,
    new: &[Fact],
    old: &[Fact],
    sample: &[Fact],
    before: &Before,
    keep_weights: bool,
) -> Result<Taught> {
    let seq = weights.config.max_seqlen;
    let method = config.method;
    let trainer = super::devices::trainer(gpu, a.devices.as_deref(), weights, config.train_config())?;
    let mut teacher = Teacher::with_trainer(gpu, trainer, config.clone(), background)?;
    let mut rng = Rng::new(a.seed ^ 0x7EAC);
    let started = Instant::now();
    let mut curve = vec![(0, before.new_recall, before.sample_recall)];
    let mut rows = 0usize;
    let mut progress = Progress::new(method.name(), config.steps as u64);
    let eval = |t: &Teacher, facts: &[Fact]| pollster::block_on(score(&t.trainer.model, gpu, facts));
    let both: Vec<Fact> = new.iter().chain(sample).cloned().collect();
    while teacher.trainer.step < config.steps {
        let (x, y) = training_batch(new, &mut rng, a.batch, seq);
        let loss = step_finite(&mut teacher, gpu, (&x, &y), (a.batch, seq))?;
        rows += teacher.rows_updated;
        let step = teacher.trainer.step;
        if step % a.eval_every == 0 || step == config.steps {
            // One pass over both sets: the new facts, then the old sample.
            let scores = eval(&teacher, &both)?;
            let (n, o) = (
                scores.recall_of(0..new.len()),
                scores.recall_of(new.len()..both.len()),
            );
            curve.push((step, n, o));
            progress.update(
                step as u64,
                format!("loss {loss:.3} new recall {n:.2} old recall {o:.2}"),
            );
        }
    }
    let new_recall = curve.last().map_or(0.0, |c| c.1);
    let old_scores = eval(&teacher, old)?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish(format!(
        "new recall {new_recall:.3}, old recall {:.3} | {seconds:.0}s",
        old_scores.recall()
    ));
    Ok(Taught {
        method,
        new_recall,
        old_recall: old_scores.recall(),
        old_loss: old_scores.loss,
        curve,
        rows_per_step: rows as f64 / config.steps as f64,
        seconds,
        weights: match keep_weights {
            true => Some(teacher.trainer.weights_blocking(gpu)?),
            false => None,
        },
        config,
    })
}

pub fn run(a: &Args) -> Result<()> {
    let total = Instant::now();
    let method = Method::parse(&a.method)?;
    if memlayers::io::hf::is_hf_folder(&a.model) {
        return hf::run(a, method);
    }
    if a.delta || a.probe.is_some() {
        return Err(Error::Config(
            "teach: --delta and --probe are for Hugging Face folders (a byte-level model's forgetting is measured on its own facts)".into(),
        ));
    }
    let lesson = Lesson::read(a)?;
    let configs: Vec<TeachConfig> = compared_methods(a, method)
        .into_iter()
        .map(|m| teach_config(a, m, memlayers::teach::VALUE_ROWS_ADAMW_LR))
        .collect::<Result<_>>()?;
    let gpu = super::devices::main(a.devices.as_deref())?;
    let sample = lesson.old.sample_questions(CURVE_SAMPLE, a.seed ^ 0x5A3E);
    let before = lesson.measure_before(&gpu, a, &sample)?;
    println!(
        "{} new facts, {} old facts; adapter {}; before: new recall {:.3}, old recall {:.3}, old answer loss {:.3}",
        lesson.new.facts.len(),
        lesson.old.facts.len(),
        gpu.adapter_name(),
        before.new_recall,
        before.old_recall,
        before.old_loss
    );
    let mut runs = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        runs.push(teach(
            &gpu,
            a,
            config,
            &lesson.weights,
            lesson.background.as_ref(),
            &lesson.new.facts,
            &lesson.old.facts,
            &sample,
            &before,
            i == 0,
        )?);
    }
    lesson.write(a, &runs, &before)?;
    print_summary(a, &runs, &before, total);
    Ok(())
}

/// `--method` first, then with `--compare` every other method.
pub(super) fn compared_methods(a: &Args, method: Method) -> Vec<Method> {
    match a.compare {
        true => std::iter::once(method)
            .chain(Method::ALL.into_iter().filter(|&m| m != method))
            .collect(),
        false => vec![method],
    }
}

/// A byte-level model and what it is taught: its folder, weights and slot counts, its
/// original facts and the new ones.
struct Lesson {
    args: memlayers::model::LMTransformerArgs,
    weights: ModelWeights,
    /// The model's `slot_counts.safetensors` (copied beside the taught model).
    counts_path: PathBuf,
    old: KnowledgeBase,
    new: KnowledgeBase,
    /// The slot counts `memlayers demo` measured on the model's training data, if any.
    background: Option<SlotCounts>,
}

impl Lesson {
    /// Reads the model and the facts, and checks that they fit it (`--new-people` writes
    /// its facts to OUT/new_facts.tsv).
    fn read(a: &Args) -> Result<Self> {
        let (args, file) = super::model_dir::load_memlayers(&a.model)?;
        let config = args.resolve()?;
        let weights = ModelWeights::from_tensors(&config, &file)?;
        if config.vocab < 256 {
            return Err(Error::Config(format!(
                "teach works on byte-level models (vocab_size >= 256); this one has {}",
                config.vocab
            )));
        }
        let model_dir = super::model_dir::checkpoint_dir(&a.model);
        let old_path = a
            .old
            .clone()
            .unwrap_or_else(|| model_dir.join(super::model_dir::FACTS_FILE));
        if !old_path.is_file() {
            return Err(Error::Config(format!(
                "the model's original facts: {} does not exist (memlayers demo writes it; give --old FILE.tsv)",
                old_path.display()
            )));
        }
        let old = read_facts(&old_path)?;
        std::fs::create_dir_all(&a.out)?;
        let new = match (&a.facts, a.new_people) {
            (Some(path), _) => read_facts(path)?,
            (None, Some(n)) if n > 0 => {
                let kb = KnowledgeBase::new_people(n, a.seed ^ 0x4E3E, &old);
                write_atomic(&a.out.join("new_facts.tsv"), kb.to_tsv().as_bytes())?;
                kb
            }
            _ => {
                return Err(Error::Config(
                    "teach: give --facts NEW.tsv or --new-people N".into(),
                ))
            }
        };
        let seq = config.max_seqlen;
        let longest = new.longest().max(old.longest());
        if longest + 1 > seq {
            return Err(Error::Config(format!(
                "the longest fact has {longest} bytes; this model's context is {seq} (at least {} needed)",
                longest + 1
            )));
        }
        let counts_path = model_dir.join(SLOT_COUNTS_FILE);
        let background = match counts_path.is_file() {
            true => {
                let m = config.memory.as_ref();
                Some(SlotCounts::from_tensors(
                    &TensorFile::read(&counts_path)?,
                    &config.memory_layers,
                    m.map_or(0, |m| m.n_values()),
                )?)
            }
            false => None,
        };
        Ok(Lesson {
            args,
            weights,
            counts_path,
            old,
            new,
            background,
        })
    }

    /// Recall of the new facts, recall and answer loss of the old ones, and recall of the
    /// old facts' sample, before teaching.
    fn measure_before(&self, gpu: &Gpu, a: &Args, sample: &[Fact]) -> Result<Before> {
        let model = super::devices::model(gpu, a.devices.as_deref(), &self.weights)?;
        let eval = |facts: &[Fact]| pollster::block_on(score(&model, gpu, facts));
        let old_scores = eval(&self.old.facts)?;
        Ok(Before {
            new_recall: eval(&self.new.facts)?.recall(),
            old_recall: old_scores.recall(),
            old_loss: old_scores.loss,
            sample_recall: eval(sample)?.recall(),
        })
    }

    /// Writes the taught model (`--method`'s, the first run) with all its facts, the old and
    /// the new, its slot counts, `teach.json` and `forgetting.png`.
    fn write(&self, a: &Args, runs: &[Taught], before: &Before) -> Result<()> {
        let chosen = &runs[0];
        let out_model = a.out.join("model");
        std::fs::create_dir_all(&out_model)?;
        write_atomic(&out_model.join("config.json"), self.args.to_json().as_bytes())?;
        chosen
            .weights
            .as_ref()
            .expect("the first run keeps its weights")
            .write(&out_model.join("weights.safetensors"))?;
        let mut all = self.old.clone();
        all.facts.extend(self.new.facts.iter().cloned());
        write_atomic(
            &out_model.join(super::model_dir::FACTS_FILE),
            all.to_tsv().as_bytes(),
        )?;
        if self.counts_path.is_file() {
            std::fs::copy(&self.counts_path, out_model.join(SLOT_COUNTS_FILE))?;
        }
        let mut result = chosen.json(before);
        if a.compare {
            result["compare"] = Value::Array(runs.iter().map(|r| r.json(before)).collect());
        }
        write_atomic(
            &a.out.join("teach.json"),
            serde_json::to_string_pretty(&result)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let series: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                label: format!(
                    "{} (new {:.2}, old {:.2})",
                    r.method.name(),
                    r.new_recall,
                    r.old_recall
                ),
                points: r.curve.iter().map(|&(_, n, o)| (n as f64, o as f64)).collect(),
            })
            .collect();
        line_chart(
            &a.out.join("forgetting.png"),
            &format!(
                "Teaching {} new facts: what each method forgets",
                self.new.facts.len()
            ),
            "new-fact recall",
            "old-fact recall (sample)",
            &series,
            false,
            true,
        )
    }
}

/// The table of runs, and with `--compare` each method's old-fact recall at the same
/// new-fact recall.
fn print_summary(a: &Args, runs: &[Taught], before: &Before, total: Instant) {
    let chosen = &runs[0];
    println!(
        "\n{:<14} {:>6} {:>10} {:>10} {:>18} {:>16} {:>7}",
        "method", "steps", "rows/step", "new recall", "old recall", "old answer loss", "time"
    );
    for r in runs {
        println!(
            "{:<14} {:>6} {:>10.0} {:>10.3} {:>8.3} -> {:<6.3} {:>7.3} -> {:<6.3} {:>6.0}s",
            r.method.name(),
            r.config.steps,
            r.rows_per_step,
            r.new_recall,
            before.old_recall,
            r.old_recall,
            before.old_loss,
            r.old_loss,
            r.seconds
        );
    }
    if a.compare {
        let level = chosen.new_recall.min(0.9);
        let at: Vec<String> = runs
            .iter()
            .map(|r| match r.old_recall_at(level) {
                Some(o) => format!("{} {o:.3}", r.method.name()),
                None => format!("{} never got there", r.method.name()),
            })
            .collect();
        println!(
            "\nold-fact recall (sample, {:.3} before) when new-fact recall first reached {level:.2}: {}",
            before.sample_recall,
            at.join(", ")
        );
    }
    println!(
        "\nkept {:.0}% of the old-fact recall; total {:.0}s; wrote {}",
        100.0 * chosen.old_recall / before.old_recall.max(1e-6),
        total.elapsed().as_secs_f64(),
        a.out.display()
    );
}
