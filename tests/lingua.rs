//! lingua end to end, against fixtures made with the reference code
//! (`scripts/lingua_fixtures.py`: torch.save'd consolidated folders, params.json, tokenizer
//! files, and the reference model's greedy continuation): tokenizers, loading, generation,
//! export and back, and one-line errors for bad input.

mod common;
use memlayers::io::lingua::{read_consolidated, LinguaParams};
use memlayers::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lingua")
        .join(name)
}

/// Made by scripts/lingua_fixtures.py: the three tokenizers; a shared value table repeated
/// under two memory layers (sp_memory); a table per memory layer (mem_share_values: false);
/// a value dimension of its own with and without the SwiLU gate; mem_gated; PEER.
const FOLDERS: [&str; 8] = [
    "bytes_memory",
    "tiktoken_dense",
    "sp_memory",
    "bytes_unshared",
    "bytes_vdim_swilu",
    "bytes_vdim_plain",
    "bytes_gated",
    "bytes_peer",
];

fn expected(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

use common::json_ids as ids;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memlayers-lingua-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn memlayers(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memlayers"))
        .args(args)
        .output()
        .unwrap()
}

fn generate(dir: &Path, prompt: &str, max_tokens: u64) -> Output {
    memlayers(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        &max_tokens.to_string(),
    ])
}

/// A failed command's one-line error, checked for no panic.
fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a failure, got success: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    lines[0].to_string()
}

fn tokenizer_of(dir: &Path) -> Tokenizer {
    let params = LinguaParams::parse(
        &std::fs::read_to_string(dir.join("params.json")).unwrap(),
        "params.json",
    )
    .unwrap();
    let data = match &params.tokenizer.path {
        // The fixtures name a path on the training cluster; the file is beside.
        Some(p) => std::fs::read(dir.join(Path::new(p).file_name().unwrap())).unwrap(),
        None => Vec::new(),
    };
    Tokenizer::from_bytes(params.tokenizer.kind, &data, "fixture").unwrap()
}

#[test]
fn tokenizers_encode_and_decode_as_the_reference() {
    for name in FOLDERS {
        let dir = fixture(name);
        let e = expected(&dir);
        let t = tokenizer_of(&dir);
        assert_eq!(t.n_words as u64, e["n_words"].as_u64().unwrap(), "{name} n_words");
        assert_eq!(t.bos_id as u64, e["bos_id"].as_u64().unwrap(), "{name} BOS");
        assert_eq!(t.eos_id as u64, e["eos_id"].as_u64().unwrap(), "{name} EOS");
        assert_eq!(
            t.encode(e["prompt"].as_str().unwrap(), true, false).unwrap(),
            ids(&e["prompt_ids"]),
            "{name} prompt"
        );
        for case in e["tokenizer_cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                t.encode(text, true, true).unwrap(),
                ids(&case["ids"]),
                "{name}: {text:?}"
            );
        }
        assert_eq!(
            t.decode(&ids(&e["greedy_ids"])).unwrap(),
            e["text"].as_str().unwrap(),
            "{name} decode"
        );
    }
}

#[test]
fn generate_equals_the_reference_greedy_continuation() {
    for name in FOLDERS {
        let dir = fixture(name);
        let e = expected(&dir);
        let out = generate(
            &dir,
            e["prompt"].as_str().unwrap(),
            e["max_tokens"].as_u64().unwrap(),
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n", e["text"].as_str().unwrap()),
            "{name}"
        );
    }
}

#[test]
fn consolidated_checkpoints_read_every_tensor_and_aliased_tables_are_one_pool() {
    let file = read_consolidated(&fixture("sp_memory").join("consolidated.pth")).unwrap();
    let a = &file.tensors["layers.0.feed_forward.values.weight"];
    let b = &file.tensors["layers.2.feed_forward.values.weight"];
    assert_eq!(a, b, "lingua aliases one table under every memory layer");
    assert_eq!(a.shape, vec![256, 32]);
    // The model loads with the repeated table recognised as the shared pool.
    let out = memlayers(&[
        "generate",
        "--model",
        fixture("sp_memory").to_str().unwrap(),
        "--prompt",
        "an",
        "--max-tokens",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn export_lingua_round_trips() {
    for name in FOLDERS {
        let src = fixture(name);
        let out_dir = scratch_dir(&format!("export-{name}"));
        let out = memlayers(&[
            "export-lingua",
            "--model",
            src.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let before = read_consolidated(&src.join("consolidated.pth")).unwrap();
        let after = read_consolidated(&out_dir.join("consolidated.pth")).unwrap();
        for (k, t) in &after.tensors {
            assert_eq!(t, &before.tensors[k], "{name}: {k}");
        }
        // Everything but the repeated value tables, which are written once.
        let repeated = before.tensors.len() - after.tensors.len();
        // Tables repeated by a second memory layer: one, PEER's two.
        let repeated_tables = match name {
            "sp_memory" | "bytes_gated" => 1,
            "bytes_peer" => 2,
            _ => 0,
        };
        assert_eq!(repeated, repeated_tables, "{name}");
        let e = expected(&src);
        let gen = generate(
            &out_dir,
            e["prompt"].as_str().unwrap(),
            e["max_tokens"].as_u64().unwrap(),
        );
        assert!(
            gen.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&gen.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&gen.stdout),
            format!("{}\n", e["text"].as_str().unwrap())
        );
    }
}

#[test]
fn bad_lingua_input_gets_one_line_errors() {
    let src = fixture("tiktoken_dense");
    let e = expected(&src);
    let prompt = e["prompt"].as_str().unwrap();
    let check = |dir: &Path, needle: &str| {
        let line = one_line_error(&generate(dir, prompt, 4));
        assert!(line.contains(needle), "expected {needle:?} in: {line}");
    };
    // Truncated and corrupt checkpoints.
    let dir = scratch_dir("truncated");
    copy_dir(&src, &dir);
    let pth = std::fs::read(src.join("consolidated.pth")).unwrap();
    std::fs::write(dir.join("consolidated.pth"), &pth[..pth.len() / 2]).unwrap();
    check(&dir, "consolidated.pth");
    let mut corrupt = pth.clone();
    for b in corrupt.iter_mut().skip(200).take(400) {
        *b ^= 0x5a;
    }
    std::fs::write(dir.join("consolidated.pth"), &corrupt).unwrap();
    check(&dir, "consolidated.pth");
    // A pickle holding something other than tensors and containers.
    std::fs::copy(fixture("unexpected_object.pth"), dir.join("consolidated.pth")).unwrap();
    check(&dir, "consolidated.pth");
    // A pickle naming a callable (`os.system`) beside the state dict: refused before reading.
    std::fs::copy(fixture("global_beside_model.pth"), dir.join("consolidated.pth")).unwrap();
    check(&dir, "system");
    let e = read_consolidated(&fixture("global_beside_model.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("posix.system") || e.contains("nt.system"), "{e}");
    // A missing tensor.
    let missing = scratch_dir("missing");
    copy_dir(&src, &missing);
    let mut params: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("params.json")).unwrap()).unwrap();
    params["model"]["n_layers"] = Value::from(3);
    std::fs::write(missing.join("params.json"), params.to_string()).unwrap();
    check(&missing, "layers.2");
    // params.json without a model section.
    let no_model = scratch_dir("no-model");
    copy_dir(&src, &no_model);
    std::fs::write(no_model.join("params.json"), r#"{"data": {}}"#).unwrap();
    check(&no_model, "model");
    // A tokenizer whose vocabulary does not match vocab_size.
    let short = scratch_dir("short-vocab");
    copy_dir(&src, &short);
    let ranks = std::fs::read_to_string(src.join("tokenizer.model")).unwrap();
    let fewer: Vec<&str> = ranks.lines().take(ranks.lines().count() - 3).collect();
    std::fs::write(short.join("tokenizer.model"), fewer.join("\n")).unwrap();
    check(&short, "vocab_size");
    // A missing tokenizer file: the error names all three places.
    let no_tok = scratch_dir("no-tokenizer");
    copy_dir(&src, &no_tok);
    std::fs::remove_file(no_tok.join("tokenizer.model")).unwrap();
    let line = one_line_error(&generate(&no_tok, prompt, 4));
    for needle in ["--tokenizer", "/cluster/tokenizers/tokenizer.model", "beside"] {
        assert!(line.contains(needle), "expected {needle:?} in: {line}");
    }
    // A DCP folder says how to consolidate it.
    let dcp = scratch_dir("dcp");
    std::fs::write(dcp.join("__0_0.distcp"), b"shard").unwrap();
    std::fs::write(dcp.join(".metadata"), b"meta").unwrap();
    check(&dcp, "consolidate_checkpoints");
    // Nothing was written by a failed export.
    let out_dir = scratch_dir("failed-export");
    let line = one_line_error(&memlayers(&[
        "export-lingua",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        out_dir.join("x").to_str().unwrap(),
    ]));
    assert!(line.contains("consolidated.pth"), "{line}");
    assert!(!out_dir.join("x").exists(), "a failed export leaves no folder");
}

/// `memlayers lm-forward --model src` on one row of `tokens` (and `targets`, if any); the
/// output file's tensors.
fn lm_forward(
    src: &Path,
    scratch: &str,
    tokens: &[u32],
    targets: Option<&[u32]>,
) -> memlayers::io::TensorFile {
    use memlayers::io::{HostTensor, TensorFile};
    let dir = scratch_dir(scratch);
    let row = |v: &[u32]| HostTensor::i64(vec![1, v.len()], v.iter().map(|&t| t as i64).collect());
    let mut input = TensorFile::default();
    input.insert("tokens", row(tokens));
    if let Some(t) = targets {
        input.insert("targets", row(t));
    }
    input.write(&dir.join("in.safetensors")).unwrap();
    let out = memlayers(&[
        "lm-forward",
        "--model",
        src.to_str().unwrap(),
        "--input",
        dir.join("in.safetensors").to_str().unwrap(),
        "--output",
        dir.join("out.safetensors").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{scratch}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TensorFile::read(&dir.join("out.safetensors")).unwrap()
}

#[test]
fn lm_forward_on_a_lingua_folder_matches_the_reference_logits() {
    use memlayers::io::TensorData;
    for name in FOLDERS {
        let src = fixture(name);
        let e = expected(&src);
        let prompt = ids(&e["prompt_ids"]);
        let got = lm_forward(&src, &format!("lm-forward-{name}"), &prompt, None);
        let TensorData::F32(logits) = &got.get("logits").unwrap().data else {
            panic!("f32 logits")
        };
        let want: Vec<f32> = e["prompt_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        common::assert_close(&format!("{name} logits"), logits, &want);
    }
}

#[test]
fn train_init_fine_tunes_byte_level_lingua_models_only() {
    use memlayers::io::TensorFile;
    let dir = scratch_dir("train-init");
    std::fs::write(dir.join("data.txt"), "the theory of memory layers. ".repeat(40)).unwrap();
    let run = |model: &str| {
        memlayers(&[
            "train",
            "--init",
            fixture(model).to_str().unwrap(),
            "--data",
            dir.join("data.txt").to_str().unwrap(),
            "--out",
            dir.join(model).to_str().unwrap(),
            "--steps",
            "3",
            "--batch",
            "2",
            "--seq",
            "16",
            "--eval-every",
            "3",
        ])
    };
    // A shared table, a table per memory layer (two tables in the values group), gated
    // layers, PEER (two shared tables).
    for model in ["bytes_memory", "bytes_unshared", "bytes_gated", "bytes_peer"] {
        let out = run(model);
        assert!(
            out.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let saved = TensorFile::read(&dir.join(model).join("checkpoint/weights.safetensors")).unwrap();
        assert!(
            dir.join(model)
                .join("checkpoint/slot_counts.safetensors")
                .is_file(),
            "{model}: slot counts"
        );
        let before = read_consolidated(&fixture(model).join("consolidated.pth")).unwrap();
        for table in [
            "layers.1.feed_forward.values.weight",
            "layers.0.feed_forward.values.weight",
            "layers.0.feed_forward.values_u.weight",
            "layers.0.feed_forward.values_v.weight",
        ] {
            if let (Ok(a), Some(b)) = (saved.get(table), before.tensors.get(table)) {
                assert_ne!(a.data, b.data, "{model}: {table} trained");
            }
        }
    }
    let line = one_line_error(&run("tiktoken_dense"));
    assert!(line.contains("byte-level"), "{line}");
}

#[test]
fn half_precision_and_strided_tensors_read_as_f32() {
    // Written by torch.save (scripts/fuzz_seeds.py): bf16 ones, an f16 table aliased under two
    // names, and an f32 matrix with its transpose (a strided view of the same storage).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/consolidated_pth/model.pth");
    let file =
        memlayers::io::lingua::read_consolidated_bytes(std::fs::read(&path).unwrap(), "model.pth").unwrap();
    let f32s = |name: &str| match &file.tensors[name].data {
        memlayers::io::TensorData::F32(v) => (file.tensors[name].shape.clone(), v.clone()),
        _ => panic!("{name}: f32 expected"),
    };
    assert_eq!(f32s("norm.weight"), (vec![3], vec![1.0; 3]));
    let (shape, w) = f32s("tok_embeddings.weight");
    assert_eq!(shape, vec![4, 3]);
    let (shape, wt) = f32s("output.weight");
    assert_eq!(shape, vec![3, 4]);
    for r in 0..4 {
        for c in 0..3 {
            assert_eq!(wt[c * 4 + r], w[r * 3 + c], "transpose at ({r}, {c})");
        }
    }
    let (_, a) = f32s("layers.0.feed_forward.values.weight");
    let (_, b) = f32s("layers.1.feed_forward.values.weight");
    assert_eq!(a, b);
    assert!(
        a.iter().all(|&x| half::f16::from_f32(x).to_f32() == x),
        "f16 values exactly"
    );
    assert_eq!(
        file.tensors["layers.0.feed_forward.values.weight"].stored_as,
        "F16"
    );
}

#[test]
fn a_misshapen_tensor_is_named() {
    let src = fixture("bytes_memory");
    let dir = scratch_dir("misshapen");
    copy_dir(&src, &dir);
    let mut params: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("params.json")).unwrap()).unwrap();
    params["model"]["n_heads"] = Value::from(2);
    params["model"]["dim"] = Value::from(16);
    std::fs::write(dir.join("params.json"), params.to_string()).unwrap();
    let line = one_line_error(&generate(&dir, "x", 2));
    assert!(
        line.contains("tok_embeddings.weight") && line.contains("shape"),
        "{line}"
    );
}

#[test]
fn lm_forward_gradients_on_lingua_folders_match_the_reference() {
    use memlayers::io::{HostTensor, TensorData};
    for name in FOLDERS {
        let src = fixture(name);
        let e = expected(&src);
        let prompt = ids(&e["prompt_ids"]);
        let n = prompt.len() - 1;
        let got = lm_forward(
            &src,
            &format!("lm-grads-{name}"),
            &prompt[..n],
            Some(&prompt[1..]),
        );
        let f32s = |t: &HostTensor| match &t.data {
            TensorData::F32(v) => v.clone(),
            _ => panic!("f32 expected"),
        };
        let loss = f32s(got.get("loss").unwrap());
        common::assert_close(
            &format!("{name} loss"),
            &loss,
            &[e["loss"].as_f64().unwrap() as f32],
        );
        let want = read_consolidated(&src.join("expected_grads.pth")).unwrap();
        assert!(!want.tensors.is_empty());
        for (param, g) in &want.tensors {
            let ours = got
                .get(&format!("grad.{param}"))
                .unwrap_or_else(|_| panic!("{name}: no grad.{param}"));
            common::assert_close(&format!("{name} grad.{param}"), &f32s(ours), &f32s(g));
        }
    }
}

/// Slot counts (the background statistics of sparse memory fine-tuning): every read of every
/// position and head counted, as the CPU oracle selects them; `slot-stats` writes them for a
/// lingua folder.
#[test]
fn slot_counts_match_the_oracle_and_slot_stats_writes_them() {
    use memlayers::io::{TensorData, TensorFile};
    use memlayers::model::{Model, SlotCounts};
    let src = fixture("bytes_unshared");
    let file = read_consolidated(&src.join("consolidated.pth")).unwrap();
    let params = LinguaParams::parse(
        &std::fs::read_to_string(src.join("params.json")).unwrap(),
        "params.json",
    )
    .unwrap();
    let weights = memlayers::io::lingua::model_weights(&params, file, "fixture").unwrap();
    let c = weights.config.clone();
    let m = c.memory.clone().unwrap();
    let (rows, seq) = (3, 20);
    let mut rng = memlayers::rng::Rng::new(4);
    let tokens: Vec<u32> = (0..rows * seq).map(|_| rng.below(256) as u32).collect();
    let g = common::gpu();
    let model = Model::new(g, &weights).unwrap();
    let counts = pollster::block_on(SlotCounts::measure(&model, g, &tokens, None, seq, 2)).unwrap();
    let (_, selections) = memlayers::oracle::forward_cpu_with_selections(&weights, &tokens, rows, seq);
    let per_layer = rows * seq * m.heads * m.knn;
    assert_eq!(counts.tokens, (rows * seq) as u64);
    assert_eq!(counts.layers.len(), c.memory_layers.len());
    for (i, l) in counts.layers.iter().enumerate() {
        let (layer, got) = (l.layer, &l.reads);
        let mut want = vec![0u64; m.n_values()];
        for &s in &selections[i * per_layer..(i + 1) * per_layer] {
            want[s as usize] += 1;
        }
        assert_eq!(
            got.iter().sum::<u64>(),
            per_layer as u64,
            "layer {layer}: every read counted"
        );
        // Near-tied scores may pick another slot on the GPU (tests/common's selection rule).
        let differ: u64 = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).sum();
        assert!(
            differ as usize <= per_layer / 50,
            "layer {layer}: {differ} of {per_layer} reads differ"
        );
    }
    // With targets, only the positions with a target count (every third here), and the
    // counts read back from their tensors.
    let targets: Vec<u32> = (0..rows * seq)
        .map(|i| {
            if i % 3 == 0 {
                7
            } else {
                memlayers::kernels::ops::IGNORE_TARGET
            }
        })
        .collect();
    let at_targets =
        pollster::block_on(SlotCounts::measure(&model, g, &tokens, Some(&targets), seq, 2)).unwrap();
    assert_eq!(at_targets.tokens, (rows * seq).div_ceil(3) as u64);
    let per_position = m.heads * m.knn;
    assert_eq!(at_targets.batches, 2);
    for (i, l) in at_targets.layers.iter().enumerate() {
        let (layer, got) = (l.layer, &l.reads);
        let mut want = vec![0u64; m.n_values()];
        let layer_reads = &selections[i * per_layer..(i + 1) * per_layer];
        for (p, read) in layer_reads.chunks(per_position).enumerate() {
            if p % 3 == 0 {
                read.iter().for_each(|&s| want[s as usize] += 1);
            }
        }
        let differ: u64 = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).sum();
        assert!(
            differ as usize <= per_layer / 50,
            "layer {layer} at targets: {differ} reads differ"
        );
        assert_eq!(got.iter().sum::<u64>(), want.iter().sum::<u64>());
        // Two batches (of two rows, then one): a slot is in at most both, and in at least one
        // exactly when it was read.
        for (r, (&b, &c)) in l.batches.iter().zip(got).enumerate() {
            assert!(
                b <= 2 && (b > 0) == (c > 0),
                "layer {layer} slot {r}: {b} batches, {c} reads"
            );
        }
    }
    let back = SlotCounts::from_tensors(&at_targets.to_tensors(), &c.memory_layers, m.n_values()).unwrap();
    assert_eq!(back, at_targets);
    // The command writes them, per memory layer.
    let dir = scratch_dir("slot-stats");
    std::fs::write(dir.join("text.txt"), "memory layers remember facts. ".repeat(30)).unwrap();
    let out = memlayers(&[
        "slot-stats",
        "--model",
        src.to_str().unwrap(),
        "--data",
        dir.join("text.txt").to_str().unwrap(),
        "--out",
        dir.join("slots.safetensors").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = TensorFile::read(&dir.join("slots.safetensors")).unwrap();
    for layer in &c.memory_layers {
        let t = saved
            .get(&format!("layers.{layer}.feed_forward.slot_counts"))
            .unwrap();
        assert_eq!(t.shape, vec![m.n_values()]);
        let TensorData::I64(v) = &t.data else {
            panic!("i64 counts")
        };
        assert!(v.iter().sum::<i64>() > 0);
    }
    assert!(saved.get("tokens").is_ok());
}
