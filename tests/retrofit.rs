//! `memlayers retrofit` on the Hugging Face fixtures (`tests/fixtures/hf`): the retrofitted
//! folder computes the original's logits bit for bit, loads in every command, teaches, and bad
//! input is a one-line error with nothing written.

mod common;
use common::gpu;
use memlayers::io::hf::HfFolder;
use memlayers::model::WeightPrecision;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{hf_fixture as fixture, HF_FOLDERS as FOLDERS};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memlayers-retrofit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn memlayers(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memlayers"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Retrofits fixture `name` into `dir/out` with a small memory; `extra` flags appended.
fn retrofit(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("out");
    let run = memlayers(
        &[
            &[
                "retrofit",
                "--model",
                fixture(name).to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &["--n-keys", "16", "--k-dim", "16"][..],
            extra,
        ]
        .concat(),
    );
    assert!(run.status.success(), "{name}: {}", text(&run));
    out
}

fn logits(folder: &Path, ids: &[u32]) -> Vec<f32> {
    let g = gpu();
    let f = HfFolder::open(folder).unwrap();
    let model = f.upload(g, WeightPrecision::F32).unwrap();
    pollster::block_on(model.forward(g, ids, None, 1, ids.len()))
        .unwrap()
        .0
}

#[test]
fn a_retrofitted_model_computes_the_original_logits_bit_for_bit() {
    for name in FOLDERS {
        let dir = scratch_dir(name);
        let out = retrofit(name, &dir, &["--layers", "0,1"]);
        let folder = HfFolder::open(&out).unwrap();
        assert_eq!(folder.config().memory_layers, vec![0, 1], "{name}");
        let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 300).collect();
        let (before, after) = (logits(&fixture(name), &ids), logits(&out, &ids));
        assert_eq!(before.len(), after.len());
        let same = before.iter().zip(&after).all(|(a, b)| a.to_bits() == b.to_bits());
        let worst = before
            .iter()
            .zip(&after)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            same,
            "{name}: the retrofitted model's logits differ (by up to {worst:e})"
        );
        // The original tensors are the original files; the memory's are beside them.
        for file in ["memory.safetensors", "slot_counts.safetensors", "tokenizer.json"] {
            assert!(out.join(file).is_file(), "{name}: {file}");
        }
        // The memory is there: it reads slots, and its value rows are zero.
        let weights = folder.read_weights().unwrap();
        assert!(weights.values().unwrap().iter().all(|&v| v == 0.0));
        assert_eq!(weights.values().unwrap().len(), 256 * folder.config().dim);
        // Retrofitted in memory (the page's way), the same seed gives the folder's weights.
        let base = HfFolder::open(&fixture(name)).unwrap().read_weights().unwrap();
        let in_memory = memlayers::io::hf::retrofit::retrofitted_weights(&base, folder.config(), 0).unwrap();
        assert!(
            in_memory.named_tensors() == weights.named_tensors(),
            "{name}: in memory"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_retrofits_are_one_line_errors_and_write_nothing() {
    let dir = scratch_dir("bad");
    let out = retrofit("qwen2_bias_f32", &dir, &[]);
    let model = fixture("qwen2_bias_f32");
    let again = dir.join("again");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", out.to_str().unwrap()], "already has a memory"),
        (
            vec!["--model", model.to_str().unwrap(), "--layers", "7"],
            "out of range",
        ),
        (
            vec!["--model", model.to_str().unwrap(), "--layers", "x"],
            "not a layer index",
        ),
        (
            vec!["--model", model.to_str().unwrap(), "--heal-data", "x.txt"],
            "--mode replace",
        ),
        (
            vec!["--model", dir.to_str().unwrap()],
            "not a Hugging Face model folder",
        ),
    ];
    for (args, needle) in cases {
        let run = memlayers(&[&["retrofit", "--out", again.to_str().unwrap()], &args[..]].concat());
        let said = text(&run);
        assert!(!run.status.success(), "{needle}: {said}");
        let line = said
            .lines()
            .filter(|l| !l.contains("wgpu_hal"))
            .collect::<Vec<_>>();
        assert!(line.len() == 1 && line[0].contains(needle), "{needle}: {said}");
        assert!(!again.exists(), "{needle}: wrote {}", again.display());
    }
    let run = memlayers(&[
        "retrofit",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success() && text(&run).contains("exists"));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        leftovers,
        vec!["out".to_string()],
        "temporary folders left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `teach --compare` on a retrofitted folder: every method runs on the same facts, teach.json
/// has the forgetting measures for each, and the taught model is a folder every command loads
/// (`generate` answers from it).
#[test]
fn teaching_a_retrofitted_model_records_what_it_kept() {
    let dir = scratch_dir("teach");
    let model = retrofit("llama_tied_bf16_shards", &dir, &[]);
    let out = dir.join("taught");
    let run = memlayers(&[
        "teach",
        "--model",
        model.to_str().unwrap(),
        "--new-people",
        "2",
        "--steps",
        "40",
        "--compare",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("teach.json")).unwrap()).unwrap();
    let methods: Vec<&str> = json["compare"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["sparse-memory", "memory", "full", "lora"]);
    for r in json["compare"].as_array().unwrap() {
        for key in [
            "new_recall",
            "kept_continuations",
            "probe_loss_before",
            "probe_loss_after",
        ] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{key}: {r}");
        }
        assert_eq!(r["probe_loss_before"], json["probe_loss_before"]);
    }
    // Full fine-tuning of every weight learns the 8 facts and changes continuations.
    let full = &json["compare"][2];
    assert!(full["new_recall"].as_f64().unwrap() >= 0.9, "{full}");
    // The sparse-memory model saved: the original files, the taught memory beside them.
    let taught = out.join("model");
    assert!(taught.join("memory.safetensors").is_file());
    assert!(taught.join("model.safetensors.index.json").is_file());
    let gen_on = |devices: &str| {
        let gen = memlayers(&[
            "generate",
            "--model",
            taught.to_str().unwrap(),
            "--prompt",
            "Hello",
            "--max-tokens",
            "4",
            "--devices",
            devices,
        ]);
        assert!(gen.status.success(), "{}", text(&gen));
        gen.stdout
    };
    // The memory's table sharded over two devices: the same continuation.
    assert_eq!(gen_on("0,0"), gen_on("0"));
    // Sparse memory fine-tuning with the table sharded over two devices: the memory one
    // device teaches (bit for bit while the value gradient's norm stays under the clipping
    // limit, as in these steps).
    let taught_on = |devices: &str| {
        let out = dir.join(format!("taught-on-{devices}"));
        let run = memlayers(&[
            "teach",
            "--model",
            model.to_str().unwrap(),
            "--new-people",
            "2",
            "--steps",
            "10",
            "--devices",
            devices,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", text(&run));
        std::fs::read(out.join("model").join("memory.safetensors")).unwrap()
    };
    assert!(
        taught_on("0,0") == taught_on("0"),
        "teach --devices 0,0 on a Hugging Face folder"
    );
    // LoRA's adapters are saved as PEFT saves them (scripts/check_peft_adapter.py checks them
    // against PEFT itself), beside the merged model.
    let lora = dir.join("lora");
    let run = memlayers(&[
        "teach",
        "--model",
        model.to_str().unwrap(),
        "--new-people",
        "1",
        "--steps",
        "3",
        "--method",
        "lora",
        "--out",
        lora.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lora.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64()),
        (Some("LORA"), Some(8))
    );
    let adapters = memlayers::io::TensorFile::read(&lora.join("adapter/adapter_model.safetensors")).unwrap();
    // 2 layers x 7 projections x (A, B).
    assert_eq!(adapters.tensors.len(), 28);
    let a = adapters
        .get("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape, vec![8, 64]);
    assert!(lora.join("model/model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_teaching_input_is_a_one_line_error_and_writes_nothing() {
    let dir = scratch_dir("teach-bad");
    let model = retrofit("qwen2_bias_f32", &dir, &[]);
    let plain = fixture("qwen2_bias_f32");
    let (empty, bad_facts) = (dir.join("empty.txt"), dir.join("facts.tsv"));
    std::fs::write(&empty, "\n  \n").unwrap();
    // NFC turns the decomposed accent into one character: the answer cannot round-trip.
    std::fs::write(&bad_facts, "Ana\tlives in\tCafe\u{301}\n").unwrap();
    let out = dir.join("taught");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--model",
                model.to_str().unwrap(),
                "--new-people",
                "1",
                "--probe",
                empty.to_str().unwrap(),
            ],
            "no prompt",
        ),
        (
            vec![
                "--model",
                model.to_str().unwrap(),
                "--facts",
                bad_facts.to_str().unwrap(),
            ],
            "cannot encode",
        ),
        (
            vec!["--model", plain.to_str().unwrap(), "--new-people", "1"],
            "has no memory",
        ),
    ];
    for (args, needle) in cases {
        let run = memlayers(
            &[
                &["teach", "--steps", "2", "--out", out.to_str().unwrap()],
                &args[..],
            ]
            .concat(),
        );
        let said = text(&run);
        let lines: Vec<&str> = said.lines().filter(|l| !l.contains("wgpu_hal")).collect();
        assert!(
            !run.status.success() && lines.len() == 1 && lines[0].contains(needle),
            "{needle}: {said}"
        );
        assert!(!out.exists(), "{needle}: wrote {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `export-hf` writes a byte-level memlayers model as a Llama folder that memlayers loads to
/// the same logits bit for bit (transformers' parity with the loader is tests/hf.rs's), whose
/// tokenizer maps each byte to its own id.
#[test]
fn an_exported_byte_level_model_is_the_same_model_as_a_llama_folder() {
    use memlayers::model::{LMTransformerArgs, Model, ModelWeights};
    let g = gpu();
    let dir = scratch_dir("export");
    let args = LMTransformerArgs::from_json(
        r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 16, "max_seqlen": 48, "seed": 3}"#,
    )
    .unwrap();
    let weights = ModelWeights::init(&args.resolve().unwrap()).unwrap();
    let source = dir.join("dense");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("config.json"), args.to_json()).unwrap();
    weights
        .to_tensors()
        .write(&source.join("weights.safetensors"))
        .unwrap();
    let out = dir.join("llama");
    let run = memlayers(&[
        "export-hf",
        "--model",
        source.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let text_in = "Kuviso lives in Quito.\nAnd caf\u{e9}";
    let folder = HfFolder::open(&out).unwrap();
    let ids = folder.tokenizer.encode(text_in, true).unwrap();
    assert_eq!(ids, text_in.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(folder.tokenizer.decode(&ids, false).unwrap(), text_in);
    assert_eq!(folder.eos_ids, vec![u32::from(b'\n')]);
    let original = Model::new(g, &weights).unwrap();
    let want = pollster::block_on(original.forward(g, &ids, None, 1, ids.len()))
        .unwrap()
        .0;
    let got = logits(&out, &ids);
    assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()));
    // An existing folder is refused.
    let again = memlayers(&[
        "export-hf",
        "--model",
        source.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success() && text(&again).contains("exists"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `teach --delta` keeps only the taught memory beside the original folder; loaded, it is the
/// same model as the taught folder saved whole (same seed, same steps).
#[test]
fn a_taught_memory_saved_alone_loads_as_the_whole_taught_model() {
    let dir = scratch_dir("delta");
    let model = retrofit("qwen3_qknorm_f16", &dir, &[]);
    let teach = |out: &Path, extra: &[&str]| {
        let run = memlayers(
            &[
                &[
                    "teach",
                    "--model",
                    model.to_str().unwrap(),
                    "--new-people",
                    "1",
                    "--steps",
                    "6",
                    "--out",
                    out.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        );
        assert!(run.status.success(), "{}", text(&run));
    };
    let (whole, delta) = (dir.join("whole"), dir.join("delta"));
    teach(&whole, &[]);
    teach(&delta, &["--delta"]);
    let mut files: Vec<String> = std::fs::read_dir(delta.join("model"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["config.json", "memory.safetensors", "slot_counts.safetensors"]
    );
    let ids: Vec<u32> = (0..16u32).map(|i| (i * 11 + 3) % 300).collect();
    let (a, b) = (
        logits(&whole.join("model"), &ids),
        logits(&delta.join("model"), &ids),
    );
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_ne!(a, logits(&model, &ids), "teaching changed the model");
    // A delta taught again names the original base, and LoRA cannot be saved as a delta.
    let again = dir.join("again");
    let run = memlayers(&[
        "teach",
        "--model",
        delta.join("model").to_str().unwrap(),
        "--new-people",
        "1",
        "--steps",
        "2",
        "--delta",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(
        config["memory"]["base"].as_str().unwrap(),
        std::fs::canonicalize(&model).unwrap().to_str().unwrap()
    );
    // A delta taught again and saved whole holds the model itself and names no base.
    for method in ["sparse-memory", "full"] {
        let whole_again = dir.join(format!("whole-{method}"));
        let run = memlayers(&[
            "teach",
            "--model",
            delta.join("model").to_str().unwrap(),
            "--new-people",
            "1",
            "--steps",
            "2",
            "--method",
            method,
            "--out",
            whole_again.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{method}: {}", text(&run));
        let saved = whole_again.join("model");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
        assert!(config["memory"].get("base").is_none(), "{method}: {config}");
        assert!(saved.join("tokenizer.json").is_file(), "{method}");
        assert_eq!(logits(&saved, &ids).len(), a.len(), "{method}");
    }
    let run = memlayers(&[
        "teach",
        "--model",
        model.to_str().unwrap(),
        "--new-people",
        "1",
        "--method",
        "lora",
        "--delta",
        "--out",
        dir.join("lora").to_str().unwrap(),
    ]);
    assert!(!run.status.success() && text(&run).contains("--delta saves a taught memory"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--mode replace` puts the memory in the feed-forward block's place (its tensors stay in
/// the original files, unread) and heals it to reproduce the block: the error falls, and the
/// folder loads and generates.
#[test]
fn a_replaced_block_is_healed_towards_what_it_computed() {
    let dir = scratch_dir("replace");
    let heal = dir.join("heal.txt");
    let text_in: String = (0..40)
        .map(|i| {
            format!(
                "Line {i} of the healing text says {} things about {}.\n",
                i * 7 % 13,
                i % 5
            )
        })
        .collect();
    std::fs::write(&heal, text_in).unwrap();
    let out = dir.join("out");
    let run = memlayers(&[
        "retrofit",
        "--model",
        fixture("mistral_f32").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--mode",
        "replace",
        "--layers",
        "1",
        "--n-keys",
        "16",
        "--k-dim",
        "16",
        "--heal-data",
        heal.to_str().unwrap(),
        "--heal-steps",
        "60",
        "--heal-lr",
        "3e-3",
    ]);
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    let line = said
        .lines()
        .find(|l| l.contains("squared error against the replaced block"))
        .unwrap();
    let errors: Vec<f32> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    let (before, after) = (errors[errors.len() - 2], errors[errors.len() - 1]);
    assert!(after < 0.7 * before, "{line}");
    assert!(said.contains("held-out lines: original"), "{said}");
    let folder = HfFolder::open(&out).unwrap();
    assert_eq!(
        folder.config().memory_placement,
        memlayers::model::MemoryPlacement::Replace
    );
    let gen = memlayers(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "Line",
        "--max-tokens",
        "3",
    ]);
    assert!(gen.status.success(), "{}", text(&gen));
    let _ = std::fs::remove_dir_all(&dir);
}
