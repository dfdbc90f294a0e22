//! Command-line interface: argument parsing and one module per subcommand.

#[cfg(feature = "bench")]
mod bench;
mod demo;
mod devices;
mod export_hf;
mod export_lingua;
mod generate;
mod info;
mod lm_forward;
mod memory_forward;
mod model_dir;
mod plot;
mod progress;
mod retrofit;
mod slot_stats;
mod stop_text;
mod teach;

mod train;

use clap::{Parser, Subcommand};
use memlayers::Result;

#[derive(Parser)]
#[command(
    name = "memlayers",
    version,
    about = "Product-key memory layers on any GPU through WebGPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: a dense model and a memory model with the same FLOPs per token learn the
    /// same facts; prints recall of each, writes results.json, recall.png and both models.
    Demo(demo::Args),
    /// List every adapter with its backend, limits and features, and the one memlayers picks.
    Info,
    /// Run one memory layer from a reference checkpoint on the GPU.
    ///
    /// WEIGHTS holds the layer's tensors under the reference names (query_proj.query_mlps.0.weight,
    /// query_proj.query_mlps.0.bias, keys, values.weight, and for Memory+ swilu_projection.* and
    /// value_proj.*), optionally under one module prefix such as `layers.1.feed_forward.`.
    /// INPUT holds `input` [rows, d] or [batch, seq, d]. OUTPUT gets `output`, `indices`
    /// [rows, heads, knn] (i64) and `scores` [rows, heads, knn] (pre-softmax).
    MemoryForward(memory_forward::Args),
    /// Logits of a lingua transformer checkpoint (and, with targets, loss and gradients).
    LmForward(lm_forward::Args),
    /// Train a (memory-augmented) transformer on a text file, byte-level.
    Train(train::Args),
    /// Continue a prompt with a model trained by `memlayers train` or a lingua consolidated
    /// folder (greedy by default, as lingua's generator).
    Generate(generate::Args),
    /// Write a model as a lingua consolidated folder (consolidated.pth, params.json).
    ExportLingua(export_lingua::Args),
    /// Write a byte-level memlayers model as a Hugging Face Llama folder (for transformers,
    /// and for `retrofit`).
    ExportHf(export_hf::Args),
    /// Count how often each memory slot is read over a text (slot_counts.safetensors).
    SlotStats(slot_stats::Args),
    /// Teach a model new facts (sparse memory fine-tuning, or the baselines) and measure what
    /// it forgets.
    Teach(teach::Args),
    /// Add a memory to a Hugging Face model, beside chosen feed-forward blocks: a new folder
    /// whose model computes what the original does until it is taught.
    Retrofit(retrofit::Args),
    /// Benchmark the forward pass: tokens/s, GPU time per kernel, matmul GFLOP/s, and the
    /// embedding bag's bandwidth next to a plain copy's on the same adapter.
    #[cfg(feature = "bench")]
    Bench {
        /// Training throughput of a small dense model against the same model with a memory
        /// layer, instead of the memory layer's forward.
        #[arg(long)]
        train: bool,
        /// With --shape or --model: a teaching step of each method (sparse-memory, memory,
        /// full, lora) on the model with a memory retrofitted beside its middle layer: seconds
        /// a step and peak memory (--iters steps).
        #[arg(long, conflicts_with = "train")]
        teach: bool,
        /// Only the small configuration (seconds instead of minutes on a CPU adapter).
        #[arg(long)]
        quick: bool,
        /// Tokens per forward pass.
        #[arg(long, default_value_t = 512)]
        tokens: usize,
        /// Timed repetitions per configuration.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// With --train: every kernel's GPU time per step in ms, not only the six largest shares.
        #[arg(long)]
        kernels: bool,
        /// A Hugging Face folder: its prefill and decoding speed instead (cli/bench/lm.rs).
        #[arg(long, conflicts_with_all = ["train", "shape"])]
        model: Option<std::path::PathBuf>,
        /// A known Hugging Face shape with random weights: smollm2-135m or qwen2.5-0.5b.
        #[arg(long, conflicts_with = "train")]
        shape: Option<String>,
        /// With --model or --shape: prompt tokens of the prefill.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// With --model or --shape: timed decoding steps.
        #[arg(long, default_value_t = 16)]
        decode_tokens: usize,
        /// With --model or --shape: write the figures to this JSON file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// The value table sharded over the first 1, 2, ... of these adapters (indices as
        /// `memlayers info` lists them; repeat one for several devices on it): the largest
        /// table under a per-device cap (MEMLAYERS_MAX_DEVICE_BYTES, default 64 MiB), the
        /// layer's forward tokens/s (--quick: the small shape, else the paper's), and a
        /// training step of the demo's cpu-preset memory with what it relays.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["train", "teach", "model", "shape", "kernels", "json"])]
        devices: Option<Vec<usize>>,
    },
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Info => info::run(),
        Command::MemoryForward(args) => memory_forward::run(&args),
        Command::LmForward(args) => lm_forward::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::ExportLingua(args) => export_lingua::run(&args),
        Command::ExportHf(args) => export_hf::run(&args),
        Command::SlotStats(args) => slot_stats::run(&args),
        Command::Teach(args) => teach::run(&args),
        Command::Retrofit(args) => retrofit::run(&args),
        #[cfg(feature = "bench")]
        Command::Bench {
            devices: Some(devices),
            quick,
            tokens,
            iters,
            ..
        } => bench::devices::run(&bench::devices::Options {
            devices,
            quick,
            tokens,
            iters,
        }),
        #[cfg(feature = "bench")]
        Command::Bench {
            teach: true,
            model,
            shape,
            iters,
            ..
        } => bench::teach::run(model.as_ref(), shape.as_deref(), &bench::lm::SHAPES, iters),
        #[cfg(feature = "bench")]
        Command::Bench {
            model,
            shape,
            prompt_tokens,
            decode_tokens,
            json,
            ..
        } if model.is_some() || shape.is_some() => bench::lm::run(&bench::lm::Options {
            model,
            shape,
            prompt: prompt_tokens,
            decode: decode_tokens,
            json,
        }),
        #[cfg(feature = "bench")]
        Command::Bench {
            train,
            quick,
            tokens,
            iters,
            kernels,
            ..
        } => bench::run(&bench::Options {
            train,
            quick,
            tokens,
            iters,
            all_kernels: kernels,
        }),
    }
}
