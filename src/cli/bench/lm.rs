//! `memlayers bench --model DIR` or `--shape NAME`: a Hugging Face language model's prefill
//! and decoding speed on this adapter (f32, f16 and 8-bit weights, an f16 KV cache), the
//! weight bytes each decoded token reads, the adapter's copy bandwidth and arithmetic
//! ceiling as yardsticks, peak host memory and the device buffers created; and the same
//! model in transformers on PyTorch's CPU in the same run when torch imports.

use memlayers::io::hf::{HfConfig, HfFolder, MAX_CONTEXT};
use memlayers::model::{Model, ModelConfig, ModelLayout, WeightPrecision};
use memlayers::rng::Rng;
use memlayers::{Error, Gpu, Result};
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

/// Known shapes, as their Hugging Face config.json gives them (random weights, so the
/// benchmark runs with nothing downloaded).
pub const SHAPES: [(&str, &str); 2] = [
    (
        "smollm2-135m",
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "rms_norm_eps": 1e-5, "vocab_size": 49152, "max_position_embeddings": 8192,
            "tie_word_embeddings": true, "rope_theta": 100000.0, "hidden_act": "silu"}"#,
    ),
    (
        "qwen2.5-0.5b",
        r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "vocab_size": 151936, "max_position_embeddings": 32768,
            "tie_word_embeddings": true, "rope_theta": 1000000.0, "hidden_act": "silu",
            "use_sliding_window": false, "sliding_window": 32768}"#,
    ),
];

/// The PyTorch side (`scripts/torch_lm_bench.py`), run with `MEMLAYERS_PYTHON` (default
/// `python3`) when it imports torch and transformers.
const TORCH_BENCH: &str = include_str!("../../../scripts/torch_lm_bench.py");

pub struct Options {
    pub model: Option<PathBuf>,
    pub shape: Option<String>,
    /// Prompt tokens of the prefill.
    pub prompt: usize,
    /// Timed decoding steps.
    pub decode: usize,
    /// Where to write the figures as JSON.
    pub json: Option<PathBuf>,
}

/// Where the weights come from: a folder, or random ones of a known shape.
enum Source {
    Folder(Box<HfFolder>),
    Random(Box<ModelConfig>),
}

/// The model on `gpu` from `source`, one tensor at a time (a random tensor drawn from its own
/// seed, so every precision's upload sees the same values).
fn upload(gpu: &Gpu, source: &Source, precision: WeightPrecision) -> Result<Model> {
    match source {
        Source::Folder(folder) => folder.upload(gpu, precision),
        Source::Random(config) => {
            let registry = ModelLayout::new(config)?.registry;
            let mut tensor = |id: memlayers::params::ParamId| {
                let spec = registry.spec(id);
                // Seeded by the name (FNV-1a), so both uploads draw the same values.
                let seed = spec.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                });
                let mut rng = Rng::new(seed);
                let std = 1.0 / (config.dim as f32).sqrt();
                Ok(Cow::Owned(if spec.name.ends_with("norm.weight") {
                    vec![1.0; spec.len()]
                } else {
                    rng.vec_normal(spec.len(), std)
                }))
            };
            Model::from_source(gpu, config, precision, &mut tensor)
        }
    }
}

/// Peak resident host memory of this process (Linux: VmHWM), in bytes.
pub(super) fn peak_host_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Bytes of weights one decoded token reads: every GEMM weight (attention, feed-forward,
/// output head) in `precision` (8-bit weights whose rows are not whole groups of 32 keep
/// f16), plus the token's embedding row and the norms in f32.
fn weight_bytes_per_token(c: &ModelConfig, precision: WeightPrecision) -> f64 {
    let (d, hd) = (c.dim as f64, c.head_dim as f64);
    // Bytes of a weight of `rows` x `row_len` values.
    let weight = |rows: f64, row_len: usize| {
        let kept_f16 =
            precision == WeightPrecision::Q8 && !row_len.is_multiple_of(memlayers::kernels::linear::Q8_GROUP);
        let per_value = if kept_f16 {
            2.0
        } else {
            precision.bytes_per_weight()
        };
        rows * row_len as f64 * per_value
    };
    let q_rows = hd * (c.n_heads + 2 * c.n_kv_heads) as f64;
    let attention = weight(q_rows, c.dim) + weight(d, c.n_heads * c.head_dim);
    let ffn = weight(2.0 * c.hidden as f64, c.dim) + weight(d, c.hidden);
    let output = weight(c.vocab as f64, c.dim);
    c.n_layers as f64 * (attention + ffn) + output + 4.0 * d * (1.0 + 2.0 * c.n_layers as f64 + 1.0)
}

/// Multiply-add FLOPs of a prefill's linear layers over `prompt` tokens: every layer's
/// projections on each token, the output layer on the last one.
fn prefill_gemm_flops(c: &ModelConfig, prompt: usize) -> f64 {
    let (d, hd) = (c.dim as f64, c.head_dim as f64);
    let attention = d * hd * (2.0 * c.n_heads as f64 + 2.0 * c.n_kv_heads as f64);
    let ffn = 3.0 * d * c.hidden as f64;
    2.0 * (prompt as f64 * c.n_layers as f64 * (attention + ffn) + c.vocab as f64 * d)
}

/// Tokens/s of a prefill of `prompt` and of `steps` decoding steps after it.
fn speeds(gpu: &Gpu, model: &Model, f16_cache: bool, prompt: &[u32], steps: usize) -> Result<(f64, f64)> {
    let new_cache = || {
        if f16_cache {
            model.new_cache_f16(gpu)
        } else {
            model.new_cache(gpu)
        }
    };
    // A prefill and a step of their own first: pipelines compile and plans record outside
    // the timing.
    let (mut warm, mut cache) = (new_cache(), new_cache());
    pollster::block_on(model.forward_last_with_cache(gpu, prompt, &mut warm))?;
    pollster::block_on(model.forward_last_with_cache(gpu, &prompt[..1], &mut warm))?;
    let t = Instant::now();
    let logits = pollster::block_on(model.forward_last_with_cache(gpu, prompt, &mut cache))?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut next = memlayers::demo::argmax(&logits);
    // One untimed step (the one-token plan), then the timed ones.
    let logits = pollster::block_on(model.forward_last_with_cache(gpu, &[next], &mut cache))?;
    next = memlayers::demo::argmax(&logits);
    let t = Instant::now();
    for _ in 0..steps {
        let logits = pollster::block_on(model.forward_last_with_cache(gpu, &[next], &mut cache))?;
        next = memlayers::demo::argmax(&logits);
    }
    Ok((prefill, steps as f64 / t.elapsed().as_secs_f64()))
}

/// The GPU time by kernel label, largest first, of one prefill of `prompt` (`decode`: false)
/// or of one decoding step after it (where the adapter has timestamp queries; the passes
/// are not merged while profiling).
fn profile(gpu: &Gpu, model: &Model, prompt: &[u32], decode: bool) -> Result<Vec<(&'static str, f64)>> {
    let mut cache = model.new_cache(gpu);
    if decode {
        pollster::block_on(model.forward_last_with_cache(gpu, prompt, &mut cache))?;
    }
    if gpu
        .start_profiling(16 * model.config.n_layers as u32 + 64)
        .is_err()
    {
        return Ok(Vec::new());
    }
    let tokens = if decode { &prompt[..1] } else { prompt };
    let run = pollster::block_on(model.forward_last_with_cache(gpu, tokens, &mut cache));
    let timings = pollster::block_on(gpu.finish_profiling())?;
    run?;
    let mut by_label = memlayers::gpu::KernelTiming::per_label(&timings, 1);
    by_label.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(by_label)
}

/// `profile`'s total in ms and its six largest kernels' shares, as one line's text.
fn profile_text(profile: &[(&'static str, f64)]) -> Option<String> {
    let total: f64 = profile.iter().map(|k| k.1).sum();
    (total > 0.0).then(|| {
        let top: Vec<String> = profile
            .iter()
            .take(6)
            .map(|(label, s)| format!("{label} {:.0}%", 100.0 * s / total))
            .collect();
        format!("{:.1} ms, by kernel: {}", total * 1e3, top.join(", "))
    })
}

/// The PyTorch figures (prefill, decode tokens/s), or why there are none.
fn torch_speeds(o: &Options, config_json: &str) -> std::result::Result<(f64, f64), String> {
    let config_file = std::env::temp_dir().join(format!("memlayers-bench-{}.json", std::process::id()));
    std::fs::write(&config_file, config_json).map_err(|e| e.to_string())?;
    let mut args = vec![
        "--prompt".to_string(),
        o.prompt.to_string(),
        "--decode".into(),
        o.decode.to_string(),
    ];
    match &o.model {
        Some(dir) => args.extend(["--model".into(), dir.display().to_string()]),
        None => args.extend(["--config".into(), config_file.display().to_string()]),
    }
    let out = super::run_python(TORCH_BENCH, &args);
    std::fs::remove_file(&config_file).ok();
    // "torch prefill 1234.5 decode 56.7"
    let text = out?;
    let w: Vec<&str> = text.split_whitespace().collect();
    match w.as_slice() {
        ["torch", "prefill", p, "decode", d, ..] => Ok((p.parse().unwrap_or(0.0), d.parse().unwrap_or(0.0))),
        _ => Err(format!("unexpected output {text:?}")),
    }
}

pub fn run(o: &Options) -> Result<()> {
    let (source, config_json, name) = match (&o.model, &o.shape) {
        (Some(dir), None) => {
            let folder = HfFolder::open(dir)?;
            let json = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
            (Source::Folder(Box::new(folder)), json, dir.display().to_string())
        }
        (None, Some(shape)) => {
            let Some((_, json)) = SHAPES.iter().find(|(n, _)| n == shape) else {
                return Err(Error::Config(format!(
                    "--shape {shape}: known shapes are {}",
                    SHAPES.map(|s| s.0).join(", ")
                )));
            };
            let config = HfConfig::from_json(json)?.model_config(MAX_CONTEXT)?;
            (
                Source::Random(Box::new(config)),
                json.to_string(),
                format!("{shape} (random weights)"),
            )
        }
        _ => {
            return Err(Error::Config(
                "bench: give --model DIR or --shape NAME, not both".into(),
            ))
        }
    };
    let config = match &source {
        Source::Folder(f) => f.config().clone(),
        Source::Random(c) => (**c).clone(),
    };
    if o.prompt == 0 || o.prompt + o.decode + 2 > config.max_seqlen {
        return Err(Error::Config(format!(
            "--prompt-tokens {} and --decode-tokens {} must fit the context of {} positions",
            o.prompt, o.decode, config.max_seqlen
        )));
    }
    let gpu = Gpu::new_blocking()?;
    println!("adapter: {}", gpu.adapter_name());
    let params: usize = ModelLayout::new(&config)?
        .registry
        .specs()
        .iter()
        .map(|s| s.len())
        .sum();
    println!(
        "model: {name}: {} layers, width {}, {} heads ({} key/value), feed-forward {}, vocabulary {}, {:.1} M parameters",
        config.n_layers,
        config.dim,
        config.n_heads,
        config.n_kv_heads,
        config.hidden,
        config.vocab,
        params as f64 / 1e6
    );
    let copy_gbs = super::copy_bandwidth(&gpu, 3)?;
    let fma_gflops = super::fma_ceiling(&gpu, 3)?;
    println!(
        "yardsticks: plain copy {copy_gbs:.2} GB/s (read + write), multiply-adds on registers {fma_gflops:.1} GFLOP/s"
    );
    let prompt: Vec<u32> = (0..o.prompt)
        .map(|i| (i * 7919 % config.vocab.min(50_000)) as u32)
        .collect();
    println!(
        "prefill of {} tokens, then {} decoded tokens (batch 1, KV cache); decode GB/s = weight bytes per token x tokens/s",
        o.prompt, o.decode
    );
    let mut rows = Vec::new();
    let mut prefill_gemm_share = None;
    for (label, precision, f16_cache) in [
        ("f32 weights", WeightPrecision::F32, false),
        ("f16 weights", WeightPrecision::F16, false),
        ("f16 weights, f16 KV cache", WeightPrecision::F16, true),
        ("8-bit weights", WeightPrecision::Q8, false),
        ("8-bit weights, f16 KV cache", WeightPrecision::Q8, true),
    ] {
        let model = upload(&gpu, &source, precision)?;
        let (prefill, decode) = speeds(&gpu, &model, f16_cache, &prompt, o.decode)?;
        let bytes = weight_bytes_per_token(&config, precision);
        println!(
            "  {label:<27} prefill {prefill:>9.1} tokens/s   decode {decode:>7.2} tokens/s   {:>7.1} MB of weights a token, {:>6.2} GB/s ({:.0}% of the copy's)",
            bytes / 1e6,
            bytes * decode / 1e9,
            100.0 * bytes * decode / 1e9 / copy_gbs
        );
        rows.push((label, prefill, decode, bytes));
        if !f16_cache {
            if let Some(text) = profile_text(&profile(&gpu, &model, &prompt, true)?) {
                println!("    a decoding step's GPU time {text}");
            }
        }
        if precision == WeightPrecision::F32 {
            let profile = profile(&gpu, &model, &prompt, false)?;
            if let Some(text) = profile_text(&profile) {
                println!("    its prefill's GPU time {text}");
                let linear: f64 = profile.iter().filter(|k| k.0 == "linear").map(|k| k.1).sum();
                if linear > 0.0 {
                    let gflops = prefill_gemm_flops(&config, prompt.len()) / linear / 1e9;
                    println!(
                        "    its linear layers: {gflops:.1} GFLOP/s, {:.0}% of the multiply-add ceiling",
                        100.0 * gflops / fma_gflops
                    );
                    prefill_gemm_share = Some(gflops / fma_gflops);
                }
            }
        }
    }
    match peak_host_bytes() {
        Some(b) => println!(
            "peak host memory {:.0} MB (weights streamed a tensor at a time{}); device buffers created {:.0} MB (the five models', one at a time)",
            b as f64 / 1e6,
            if gpu.adapter_info().is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu) {
                "; a CPU adapter's device memory is host memory too"
            } else {
                ""
            },
            gpu.buffer_bytes_created() as f64 / 1e6
        ),
        None => println!("device buffers created {:.0} MB", gpu.buffer_bytes_created() as f64 / 1e6),
    }
    let torch = torch_speeds(o, &config_json);
    match &torch {
        Ok((prefill, decode)) => println!(
            "transformers on PyTorch's CPU, same shape, f32: prefill {prefill:.1} tokens/s, decode {decode:.2} tokens/s; memlayers f32 / PyTorch: prefill {:.2}x, decode {:.2}x",
            rows[0].1 / prefill,
            rows[0].2 / decode
        ),
        Err(why) => println!("transformers on PyTorch: not measured ({why})"),
    }
    if let Some(path) = &o.json {
        let fastest_prefill = rows.iter().map(|r| r.1).fold(0.0, f64::max);
        let fastest_decode = rows.iter().max_by(|a, b| a.2.total_cmp(&b.2)).expect("five rows");
        let json = serde_json::json!({
            "adapter": gpu.adapter_name(),
            "model": name,
            "parameters": params,
            "prompt_tokens": o.prompt,
            "decoded_tokens": o.decode,
            "prefill_tokens_per_s": fastest_prefill,
            "decode_tokens_per_s": fastest_decode.2,
            "bytes_per_decoded_token": fastest_decode.3,
            "torch_prefill_tokens_per_s": torch.as_ref().ok().map(|t| t.0),
            "torch_decode_tokens_per_s": torch.as_ref().ok().map(|t| t.1),
            "torch_not_measured": torch.as_ref().err(),
            "copy_bytes_per_s": copy_gbs * 1e9,
            "prefill_gemm_share_of_fma_ceiling": prefill_gemm_share,
            "fma_flops_per_s": fma_gflops * 1e9,
            "peak_host_bytes": peak_host_bytes(),
            "device_bytes_created": gpu.buffer_bytes_created(),
            "configurations": rows.iter().map(|(label, prefill, decode, bytes)| serde_json::json!({
                "weights": label,
                "prefill_tokens_per_s": prefill,
                "decode_tokens_per_s": decode,
                "bytes_per_decoded_token": bytes,
            })).collect::<Vec<_>>(),
        });
        memlayers::io::write_atomic(
            path,
            serde_json::to_string_pretty(&json)
                .expect("serialises")
                .as_bytes(),
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
