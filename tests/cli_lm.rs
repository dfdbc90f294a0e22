//! `memlayers lm-forward`, `train` (with an interrupted run resumed) and `generate`, end to end.

mod common;
use common::assert_close;
use memlayers::io::{HostTensor, TensorData, TensorFile};
use memlayers::model::{LMTransformerArgs, ModelWeights};
use memlayers::oracle::forward_cpu;
use memlayers::reference::ops;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memlayers-lm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn memlayers(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memlayers"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

const CONFIG: &str = r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 256, "multiple_of": 8, "max_seqlen": 16,
    "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 8, "mem_heads": 2, "mem_knn": 3, "mem_k_dim": 8}}"#;

#[test]
fn lm_forward_logits_loss_and_gradients() {
    let dir = scratch_dir("fwd");
    let args = LMTransformerArgs::from_json(CONFIG).unwrap();
    let w = ModelWeights::init(&args.resolve().unwrap()).unwrap();
    std::fs::write(dir.join("args.json"), args.to_json()).unwrap();
    w.to_tensors().write(&dir.join("w.safetensors")).unwrap();
    let tokens: Vec<i64> = (0..10).map(|i| (i * 37 % 256) as i64).collect();
    let targets: Vec<i64> = (0..10).map(|i| (i * 11 % 256) as i64).collect();
    let mut input = TensorFile::default();
    input.insert("tokens", HostTensor::i64(vec![2, 5], tokens.clone()));
    input.insert("targets", HostTensor::i64(vec![2, 5], targets.clone()));
    input.write(&dir.join("x.safetensors")).unwrap();
    // `lm-forward` on the saved model and input into `output` (with `extra` flags): its bytes.
    let lm_forward = |output: &str, extra: &[&str]| {
        let mut args = vec![
            "lm-forward",
            "--weights",
            "w.safetensors",
            "--config",
            "args.json",
            "--input",
            "x.safetensors",
            "--output",
            output,
        ];
        args.extend_from_slice(extra);
        let run = memlayers(&args, &dir);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        std::fs::read(dir.join(output)).unwrap()
    };
    lm_forward("out.safetensors", &[]);
    let out = TensorFile::read(&dir.join("out.safetensors")).unwrap();
    let t32: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let want = forward_cpu(&w, &t32, 2, 5);
    let logits = out.get("logits").unwrap();
    assert_eq!(logits.shape, vec![2, 5, 256]);
    let TensorData::F32(got) = &logits.data else {
        panic!()
    };
    assert_close("lm-forward logits", got, &want);
    let y32: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
    let TensorData::F32(loss) = &out.get("loss").unwrap().data else {
        panic!()
    };
    assert_close("lm-forward loss", loss, &[ops::cross_entropy(&want, &y32, 256).0]);
    for (name, shape, _) in w.named_tensors() {
        assert_eq!(
            out.get(&format!("grad.{name}")).unwrap().shape,
            shape,
            "grad.{name}"
        );
    }
    // The memory's values sharded over two and three devices: the bytes one device writes
    // (logits, loss and every gradient, the value table's joined from its shards).
    let on = |devices: &str| lm_forward(&format!("out-{devices}.safetensors"), &["--devices", devices]);
    let one = on("0");
    assert!(
        on("0,0") == one && on("0,0,0") == one,
        "sharded lm-forward differs from one device"
    );
    // A token outside the vocabulary is a clear error.
    let mut bad = TensorFile::default();
    bad.insert("tokens", HostTensor::i64(vec![1, 2], vec![3, 300]));
    bad.write(&dir.join("bad.safetensors")).unwrap();
    let run = memlayers(
        &[
            "lm-forward",
            "--weights",
            "w.safetensors",
            "--config",
            "args.json",
            "--input",
            "bad.safetensors",
            "--output",
            "o2.safetensors",
        ],
        &dir,
    );
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("tensor `tokens`"));
    assert!(!dir.join("o2.safetensors").exists());
}

#[test]
fn train_resume_is_bit_identical_and_generate_runs() {
    let dir = scratch_dir("train");
    std::fs::write(dir.join("model.json"), CONFIG).unwrap();
    let text: String = (0..60)
        .map(|i| {
            format!(
                "fact {i}: item {} is {}.\n",
                i % 7,
                ["red", "blue", "green"][i % 3]
            )
        })
        .collect();
    std::fs::write(dir.join("data.txt"), text).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            "model.json",
            "--data",
            "data.txt",
            "--out",
            out,
            "--steps",
            "6",
            "--batch",
            "2",
            "--seq",
            "8",
            "--warmup",
            "2",
            "--eval-every",
            "3",
        ];
        args.extend_from_slice(extra);
        let run = memlayers(&args, &dir);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        String::from_utf8_lossy(&run.stderr).to_string()
    };
    let log = train("straight", &[]);
    assert!(log.contains("held-out loss"), "{log}");
    train("split", &["--stop-at", "3"]);
    train("split", &["--resume"]);
    let a = std::fs::read(dir.join("straight/checkpoint/weights.safetensors")).unwrap();
    let b = std::fs::read(dir.join("split/checkpoint/weights.safetensors")).unwrap();
    assert!(a == b, "resumed run differs from the uninterrupted one");
    // The value table sharded over two devices: the same model, up to the rounding of the
    // value group's clipping norm (summed shard by shard); and it resumes on one device.
    train("sharded", &["--devices", "0,0", "--stop-at", "3"]);
    train("sharded", &["--resume"]);
    let read =
        |run: &str| TensorFile::read(&dir.join(format!("{run}/checkpoint/weights.safetensors"))).unwrap();
    let (one, sharded) = (read("straight"), read("sharded"));
    for (name, t) in &one.tensors {
        let (TensorData::F32(x), TensorData::F32(y)) = (&t.data, &sharded.get(name).unwrap().data) else {
            panic!("{name}")
        };
        for (p, q) in x.iter().zip(y) {
            assert!(
                (p - q).abs() <= 1e-4 * p.abs().max(1e-2),
                "{name}: {p} against {q}"
            );
        }
    }
    let gen = |seed: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            "straight",
            "--prompt",
            "fact 1",
            "--max-tokens",
            "12",
            "--seed",
            seed,
        ];
        args.extend_from_slice(extra);
        let run = memlayers(&args, &dir);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        String::from_utf8_lossy(&run.stdout).to_string()
    };
    assert_eq!(gen("1", &[]), gen("2", &[]), "greedy generation ignores the seed");
    // Generation with an f16 KV cache, and with f16 activations, runs (their decoding is
    // checked against f32's in tests/model.rs) and ends its output with a newline, as every
    // generation does.
    assert!(gen("1", &["--f16-kv-cache"]).ends_with('\n'));
    assert!(gen("1", &["--f16-activations", "--f16-weights"]).ends_with('\n'));
    // The memory's values sharded over three devices: the same continuation as on one
    // (the same adapter: the default one may be another on a machine with several).
    assert_eq!(gen("1", &["--devices", "0,0,0"]), gen("1", &["--devices", "0"]));
    // --stop: the same text up to the first occurrence of the stop text, which is left out.
    let full = gen("1", &[]);
    let at = full
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c.is_ascii_graphic() && c != '\\')
        .map(|(i, _)| i)
        .expect("a printable character after the first");
    let stop = &full[at..at + 1];
    let cut = gen("1", &["--stop", stop]);
    assert_eq!(
        cut,
        format!("{}\n", &full[..full.find(stop).unwrap()]),
        "--stop {stop}"
    );
}
