//! `memlayers train`: byte-level training from a text file, with a progress line, held-out
//! loss, atomic checkpoints and bit-identical `--resume`.

use super::progress::Progress;
use memlayers::io::{write_atomic, TensorFile};
use memlayers::model::{LMTransformerArgs, Model, ModelWeights, SlotCounts, SLOT_COUNTS_FILE};
use memlayers::rng::Rng;
use memlayers::train::{ByteData, TrainConfig, Trainer};
use memlayers::{Error, Gpu, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// lingua LMTransformerArgs as JSON (vocab_size at least 256: tokens are bytes).
    #[arg(long, required_unless_present_any = ["init", "resume"])]
    pub config: Option<PathBuf>,
    /// Fine-tune from this model folder (a memlayers checkpoint, or a lingua consolidated
    /// folder with the bytes tokenizer) instead of a fresh initialisation.
    #[arg(long, conflicts_with_all = ["config", "resume"])]
    pub init: Option<PathBuf>,
    /// A text file; its last tenth is held out.
    #[arg(long)]
    pub data: PathBuf,
    /// Shard the memory's value tables by columns over these adapters (indices as
    /// `memlayers info` lists them; one may repeat); the first holds the rest of the model.
    /// The checkpoint is the same whole-table format, and resumes on any devices.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
    /// Output directory; the checkpoint goes to OUT/checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub steps: u32,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per window (at most the config's max_seqlen).
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Base learning rate (warm-up, then linear decay to 1%).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 50)]
    pub warmup: u32,
    /// Learning rate of the value table (default: productkey_args.value_fixed_lr, else 10x lr).
    #[arg(long)]
    pub value_lr: Option<f32>,
    /// Held-out loss and a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub eval_every: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from OUT/checkpoint. With the same flags as the interrupted run, the result
    /// is bit-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// Stop (with a checkpoint) after this step, as if interrupted; `--resume` continues.
    #[arg(long)]
    pub stop_at: Option<u32>,
}

const EVAL_BATCHES: usize = 4;

/// Steps between two reads of the training loss (each read waits for the GPU).
const LOSS_EVERY: u32 = 10;

fn save(
    out: &Path,
    args: &LMTransformerArgs,
    t: &Trainer,
    gpu: &Gpu,
    rng: &Rng,
    slots: Option<&SlotCounts>,
) -> Result<()> {
    let tmp = out.join(".checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    write_atomic(&tmp.join("config.json"), args.to_json().as_bytes())?;
    if let Some(slots) = slots {
        slots.to_tensors().write(&tmp.join(SLOT_COUNTS_FILE))?;
    }
    t.weights_blocking(gpu)?.write(&tmp.join("weights.safetensors"))?;
    t.optimizer_state_blocking(gpu)?
        .write(&tmp.join("optimizer.safetensors"))?;
    write_atomic(&tmp.join("data_rng"), rng.state().to_string().as_bytes())?;
    // Swap directories: a crash leaves either the old or the new checkpoint complete.
    let (dest, old) = (out.join("checkpoint"), out.join(".checkpoint.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(&tmp, &dest)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// With memory layers: how often each slot is read over a fixed sample of the training text
/// (saved with each checkpoint; what sparse memory fine-tuning ranks slots against).
fn slot_counts(
    model: &Model,
    gpu: &Gpu,
    data: &ByteData,
    batch: usize,
    seq: usize,
) -> Result<Option<SlotCounts>> {
    if model.config.memory.is_none() {
        return Ok(None);
    }
    pollster::block_on(SlotCounts::measure_sampled(
        model,
        gpu,
        (0x5107, SLOT_COUNT_BATCHES),
        (batch, seq),
        |rng| (ByteData::sample(&data.train, rng, batch, seq).0, None),
    ))
    .map(Some)
}

/// Training batches whose slot reads are counted at a checkpoint.
const SLOT_COUNT_BATCHES: usize = 8;

fn held_out_loss(model: &Model, gpu: &Gpu, data: &ByteData, batch: usize, seq: usize) -> Result<f32> {
    let mut rng = Rng::new(0xE7A1);
    let mut total = 0.0;
    for _ in 0..EVAL_BATCHES {
        let (x, y) = ByteData::sample(&data.held_out, &mut rng, batch, seq);
        total += pollster::block_on(model.forward(gpu, &x, Some(&y), batch, seq))?
            .1
            .unwrap_or(0.0);
    }
    Ok(total / EVAL_BATCHES as f32)
}

pub fn run(a: &Args) -> Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let (model_args, weights, mut rng, optimizer) = if a.resume {
        let dir = super::model_dir::checkpoint_dir(&a.out);
        let (model_args, file) = super::model_dir::load_memlayers(&a.out)?;
        let weights = ModelWeights::from_tensors(&model_args.resolve()?, &file)?;
        let rng_state = std::fs::read_to_string(dir.join("data_rng"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Format(format!("{}: missing or bad data_rng", dir.display())))?;
        let optimizer = TensorFile::read(&dir.join("optimizer.safetensors"))?;
        (model_args, weights, Rng::from_state(rng_state), Some(optimizer))
    } else if let Some(init) = &a.init {
        let model_dir = super::model_dir::load(init)?;
        if let Some((params, _)) = &model_dir.lingua {
            if params.tokenizer.kind != memlayers::tokenizer::TokenizerKind::Bytes {
                return Err(Error::Config(format!(
                    "{}: a {} tokenizer model; `train` reads its data as bytes, so it fine-tunes byte-level models only",
                    init.display(),
                    params.tokenizer.kind.name()
                )));
            }
        }
        (model_dir.args, model_dir.weights, Rng::new(a.seed), None)
    } else {
        let config = a.config.as_ref().expect("clap requires --config here");
        let text = std::fs::read_to_string(config)
            .map_err(|e| Error::Format(format!("cannot read {}: {e}", config.display())))?;
        let model_args = LMTransformerArgs::from_json(&text)?;
        let weights = ModelWeights::init(&model_args.resolve()?)?;
        (model_args, weights, Rng::new(a.seed), None)
    };
    let c = weights.config.clone();
    if c.vocab < 256 {
        return Err(Error::Config(format!(
            "vocab_size must be at least 256 for byte tokens, found {}",
            c.vocab
        )));
    }
    if a.seq == 0 || a.seq > c.max_seqlen || a.batch == 0 {
        return Err(Error::Config(format!(
            "--seq must be in 1..={} and --batch positive",
            c.max_seqlen
        )));
    }
    let text = std::fs::read(&a.data)
        .map_err(|e| Error::Format(format!("cannot read {}: {e}", a.data.display())))?;
    let data = ByteData::new(&text, a.seq)?;
    let value_lr = a
        .value_lr
        .or(model_args.productkey_args.value_fixed_lr.map(|v| v as f32))
        .unwrap_or(10.0 * a.lr);
    let config = TrainConfig {
        steps: a.steps,
        lr: a.lr,
        warmup: a.warmup,
        value_lr,
        ..Default::default()
    };
    let gpu = super::devices::main(a.devices.as_deref())?;
    let mut trainer = super::devices::trainer(&gpu, a.devices.as_deref(), &weights, config)?;
    if let Some(o) = &optimizer {
        trainer.load_optimizer_state(&gpu, o)?;
    }
    eprintln!(
        "{} parameters, {:.2} MFLOP/token, {} training tokens, adapter {}",
        weights.parameter_count(),
        c.flops_per_token(a.seq)? / 1e6,
        data.train.len(),
        gpu.adapter_name()
    );
    let start = Instant::now();
    let first = trainer.step;
    let last = a.stop_at.unwrap_or(a.steps).min(a.steps);
    let mut progress = Progress::new("train", a.steps as u64);
    progress.update(first as u64, String::new());
    while trainer.step < last {
        let (x, y) = ByteData::sample(&data.train, &mut rng, a.batch, a.seq);
        // Steps are submitted without waiting; the loss is read (and the GPU waited for)
        // every LOSS_EVERY steps, at evaluations and at the end.
        trainer.submit_step(&gpu, &x, &y, a.batch, a.seq)?;
        let evaluate = trainer.step % a.eval_every == 0 || trainer.step == last;
        if trainer.step % LOSS_EVERY != 0 && !evaluate {
            continue;
        }
        let loss = trainer.last_loss_blocking(&gpu)?;
        let done = trainer.step - first;
        let elapsed = start.elapsed().as_secs_f64();
        let tokens_per_s = (done as usize * a.batch * a.seq) as f64 / elapsed;
        progress.update(
            trainer.step as u64,
            format!("loss {loss:.4} | {tokens_per_s:.0} tok/s"),
        );
        if evaluate {
            let eval = held_out_loss(&trainer.model, &gpu, &data, a.batch, a.seq)?;
            progress.println(format!(
                "step {}: held-out loss {eval:.4}; checkpoint saved",
                trainer.step
            ));
            let slots = slot_counts(&trainer.model, &gpu, &data, a.batch, a.seq)?;
            save(&a.out, &model_args, &trainer, &gpu, &rng, slots.as_ref())?;
        }
    }
    progress.finish(format!("step {}", trainer.step));
    Ok(())
}
