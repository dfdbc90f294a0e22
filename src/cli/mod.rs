//! Command-line interface: argument parsing and one module per subcommand.

mod info;
mod memory_forward;

use clap::{Parser, Subcommand};
use memlayers::Result;
use std::path::PathBuf;

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
    /// List every adapter with its backend, limits and features, and the one memlayers picks.
    Info,
    /// Run one memory layer from a reference checkpoint on the GPU.
    ///
    /// WEIGHTS holds the layer's tensors under the reference names (query_proj.query_mlps.0.weight,
    /// query_proj.query_mlps.0.bias, keys, values.weight, and for Memory+ swilu_projection.* and
    /// value_proj.*), optionally under one module prefix such as `layers.1.feed_forward.`.
    /// INPUT holds `input` [rows, d] or [batch, seq, d]. OUTPUT gets `output`, `indices`
    /// [rows, heads, knn] (i64) and `scores` [rows, heads, knn] (pre-softmax).
    MemoryForward {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Values read per head (not stored in checkpoints).
        #[arg(long, default_value_t = 32)]
        knn: usize,
        /// Normalise query and key halves before scoring (paper 3.1.4; off in the reference code).
        #[arg(long)]
        qk_norm: bool,
        /// Keep the value table in f16 on the GPU (half the memory; accumulation stays f32).
        #[arg(long)]
        f16_values: bool,
    },
    /// Benchmark the forward pass: tokens/s, GPU time per kernel, matmul GFLOP/s, and the
    /// embedding bag's bandwidth next to a plain copy's on the same adapter.
    Bench {
        /// Only the small configuration (seconds instead of minutes on a CPU adapter).
        #[arg(long)]
        quick: bool,
        /// Tokens per forward pass.
        #[arg(long, default_value_t = 512)]
        tokens: usize,
        /// Timed repetitions per configuration.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Info => info::run(),
        Command::MemoryForward {
            weights,
            input,
            output,
            knn,
            qk_norm,
            f16_values,
        } => memory_forward::run(&memory_forward::Args {
            weights,
            input,
            output,
            knn,
            qk_norm,
            f16_values,
        }),
        Command::Bench { quick, tokens, iters } => {
            memlayers::bench::run(&memlayers::bench::Options { quick, tokens, iters })
        }
    }
}
