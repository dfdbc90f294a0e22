//! `memlayers memory-forward` end to end: reference checkpoints in, oracle-checked results
//! out, and clear one-line errors (with no output file) for bad input.

mod common;
use common::assert_close;
use memlayers::io::{memory_tensors, HostTensor, TensorData, TensorFile};
use memlayers::memory::{MemoryConfig, MemoryWeights};
use memlayers::reference;
use memlayers::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memlayers-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn memory_forward(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memlayers"))
        .args(["memory-forward", "--weights"])
        .arg(dir.join("w.safetensors"))
        .arg("--input")
        .arg(dir.join("x.safetensors"))
        .arg("--output")
        .arg(dir.join("out.safetensors"))
        .args(extra)
        .output()
        .unwrap()
}

fn config() -> MemoryConfig {
    MemoryConfig {
        d: 24,
        heads: 2,
        n_keys: 20,
        knn: 5,
        k_dim: 10,
        v_dim: 24,
        swilu: true,
        value_proj: true,
        gated: false,
        peer: false,
        qk_norm: false,
    }
}

fn f32s(t: &HostTensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        other => panic!("expected f32, found {other:?}"),
    }
}

#[test]
fn memory_forward_matches_oracle_with_prefixed_names_and_3d_input() {
    let dir = scratch_dir("ok");
    let c = config();
    let mut rng = Rng::new(4);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    // A full model's checkpoint names the layer `layers.1.feed_forward.*`.
    let mut file = TensorFile::default();
    for (name, t) in memory_tensors(&weights, &values).tensors {
        file.insert(format!("layers.1.feed_forward.{name}"), t);
    }
    file.write(&dir.join("w.safetensors")).unwrap();
    let (batch, seq) = (2, 7);
    let x = rng.vec_normal(batch * seq * c.d, 1.0);
    let mut input = TensorFile::default();
    input.insert("input", HostTensor::f32(vec![batch, seq, c.d], x.clone()));
    input.write(&dir.join("x.safetensors")).unwrap();

    let run = memory_forward(&dir, &["--knn", "5"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = TensorFile::read(&dir.join("out.safetensors")).unwrap();
    let (want, lk) = reference::memory_forward(
        &x,
        &memlayers::oracle::memory_params(&weights, &values),
        memlayers::oracle::lookup_dims(&weights.config, batch * seq),
    );
    let output = out.get("output").unwrap();
    assert_eq!(output.shape, vec![batch, seq, c.d]);
    assert_close("cli output", f32s(output), &want);
    let indices = out.get("indices").unwrap();
    assert_eq!(indices.shape, vec![batch * seq, c.heads, c.knn]);
    assert_eq!(
        indices.data,
        TensorData::I64(lk.indices.iter().map(|&i| i as i64).collect())
    );
    assert_close("cli scores", f32s(out.get("scores").unwrap()), &lk.scores);
}

#[test]
fn memory_forward_writes_gradients_under_the_weights_names() {
    let dir = scratch_dir("grad");
    let c = config();
    let mut rng = Rng::new(12);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    let prefix = "layers.3.feed_forward.";
    let mut file = TensorFile::default();
    for (name, t) in memory_tensors(&weights, &values).tensors {
        file.insert(format!("{prefix}{name}"), t);
    }
    file.write(&dir.join("w.safetensors")).unwrap();
    let (batch, seq) = (3, 5);
    let x = rng.vec_normal(batch * seq * c.d, 1.0);
    let g = rng.vec_normal(batch * seq * c.d, 1.0);
    let mut input = TensorFile::default();
    input.insert("input", HostTensor::f32(vec![batch, seq, c.d], x.clone()));
    input.insert("grad_output", HostTensor::f32(vec![batch, seq, c.d], g.clone()));
    input.write(&dir.join("x.safetensors")).unwrap();

    let run = memory_forward(&dir, &["--knn", "5"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = TensorFile::read(&dir.join("out.safetensors")).unwrap();
    let want = reference::memory_backward(
        &x,
        &memlayers::oracle::memory_params(&weights, &values),
        memlayers::oracle::lookup_dims(&weights.config, batch * seq),
        &g,
    );
    let input_grad = out.get("grad.input").unwrap();
    assert_eq!(input_grad.shape, vec![batch, seq, c.d]);
    assert_close("grad.input", f32s(input_grad), &want.x);
    let (sw, sb) = want.swilu.as_ref().unwrap();
    let (pw, pb) = want.value_proj.as_ref().unwrap();
    for (name, w) in [
        ("query_proj.query_mlps.0.weight", &want.query_w),
        ("query_proj.query_mlps.0.bias", &want.query_b),
        ("keys", &want.keys),
        ("values.weight", &want.values),
        ("swilu_projection.weight", sw),
        ("swilu_projection.bias", sb),
        ("value_proj.weight", pw),
        ("value_proj.bias", pb),
    ] {
        let t = out.get(&format!("grad.{prefix}{name}")).unwrap();
        assert_eq!(
            t.shape,
            file.get(&format!("{prefix}{name}")).unwrap().shape,
            "{name}"
        );
        assert_close(&format!("grad {name}"), f32s(t), w);
    }
    assert_eq!(
        out.tensors.len(),
        3 + 1 + 8,
        "output, indices, scores, grad.input and 8 parameter grads"
    );
}

#[test]
fn memory_forward_reads_bf16_and_f16_checkpoints() {
    let dir = scratch_dir("bf16");
    let c = MemoryConfig {
        swilu: false,
        value_proj: false,
        ..config()
    };
    let mut rng = Rng::new(8);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    // Store values in bf16 (as the reference does) and the rest in f16.
    let file = memory_tensors(&weights, &values);
    let mut raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &file.tensors {
        let v = f32s(t);
        let (dtype, bytes): (_, Vec<u8>) = if name == "values.weight" {
            (
                safetensors::Dtype::BF16,
                v.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            )
        } else {
            (
                safetensors::Dtype::F16,
                v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            )
        };
        raw.push((name.clone(), dtype, t.shape.clone(), bytes));
    }
    let views: Vec<_> = raw
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("w.safetensors"),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
    let x = rng.vec_normal(3 * c.d, 1.0);
    let mut input = TensorFile::default();
    input.insert("input", HostTensor::f32(vec![3, c.d], x.clone()));
    input.write(&dir.join("x.safetensors")).unwrap();

    let run = memory_forward(&dir, &["--knn", "5"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The oracle sees the same rounded parameters the file holds.
    let loaded =
        memlayers::io::load_memory(&TensorFile::read(&dir.join("w.safetensors")).unwrap(), 5, false).unwrap();
    let (want, _) = reference::memory_forward(
        &x,
        &memlayers::oracle::memory_params(&loaded.weights, &loaded.values),
        memlayers::oracle::lookup_dims(&loaded.weights.config, 3),
    );
    let out = TensorFile::read(&dir.join("out.safetensors")).unwrap();
    assert_close("bf16 checkpoint output", f32s(out.get("output").unwrap()), &want);
}

/// Runs memory-forward on a broken setup; expects failure, one line naming `needle`, no output.
fn expect_error(name: &str, make: impl FnOnce(&Path), extra: &[&str], needle: &str) {
    let dir = scratch_dir(name);
    let c = config();
    let mut rng = Rng::new(1);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    memory_tensors(&weights, &values)
        .write(&dir.join("w.safetensors"))
        .unwrap();
    let mut input = TensorFile::default();
    input.insert(
        "input",
        HostTensor::f32(vec![4, c.d], rng.vec_normal(4 * c.d, 1.0)),
    );
    input.write(&dir.join("x.safetensors")).unwrap();
    make(&dir);
    let run = memory_forward(&dir, extra);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let message: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("memlayers: error"))
        .collect();
    assert!(!run.status.success(), "{name}: should fail");
    assert_eq!(message.len(), 1, "{name}: one error line expected, got {stderr}");
    assert!(
        message[0].contains(needle),
        "{name}: `{}` does not mention {needle}",
        message[0]
    );
    assert!(
        !dir.join("out.safetensors").exists(),
        "{name}: output file left behind"
    );
}

fn edit_weights(dir: &Path, f: impl FnOnce(&mut TensorFile)) {
    let path = dir.join("w.safetensors");
    let mut file = TensorFile::read(&path).unwrap();
    f(&mut file);
    file.write(&path).unwrap();
}

#[test]
fn memory_forward_rejects_bad_input_clearly() {
    expect_error(
        "missing",
        |d| edit_weights(d, |f| drop(f.tensors.remove("keys"))),
        &[],
        "`keys` is missing",
    );
    expect_error(
        "bad-shape",
        |d| {
            edit_weights(d, |f| {
                f.insert("swilu_projection.bias", HostTensor::f32(vec![7], vec![0.0; 7]));
            })
        },
        &["--knn", "5"],
        "swilu_projection.bias",
    );
    expect_error(
        "not-square",
        |d| {
            edit_weights(d, |f| {
                f.insert(
                    "values.weight",
                    HostTensor::f32(vec![399, 24], vec![0.0; 399 * 24]),
                );
            })
        },
        &["--knn", "5"],
        "not a square",
    );
    expect_error(
        "truncated",
        |d| {
            let p = d.join("w.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        },
        &[],
        "not a valid safetensors file",
    );
    expect_error(
        "non-finite",
        |d| {
            let mut x = vec![0.5f32; 4 * 24];
            x[17] = f32::NAN;
            let mut input = TensorFile::default();
            input.insert("input", HostTensor::f32(vec![4, 24], x));
            input.write(&d.join("x.safetensors")).unwrap();
        },
        &["--knn", "5"],
        "`input`",
    );
    expect_error(
        "wrong-width",
        |d| {
            let mut input = TensorFile::default();
            input.insert("input", HostTensor::f32(vec![4, 23], vec![0.0; 4 * 23]));
            input.write(&d.join("x.safetensors")).unwrap();
        },
        &["--knn", "5"],
        "[rows, 24]",
    );
    expect_error(
        "integer-input",
        |d| {
            let mut input = TensorFile::default();
            input.insert("input", HostTensor::i64(vec![4, 24], vec![0; 4 * 24]));
            input.write(&d.join("x.safetensors")).unwrap();
        },
        &["--knn", "5"],
        "dtype",
    );
    expect_error("knn-too-large", |_| {}, &["--knn", "21"], "knn");
    expect_error(
        "grad-shape",
        |d| {
            let mut input = TensorFile::default();
            input.insert("input", HostTensor::f32(vec![4, 24], vec![0.5; 4 * 24]));
            input.insert("grad_output", HostTensor::f32(vec![4, 23], vec![0.5; 4 * 23]));
            input.write(&d.join("x.safetensors")).unwrap();
        },
        &["--knn", "5"],
        "`grad_output`",
    );
}

#[test]
fn memory_forward_sharded_over_devices_writes_the_same_tensors() {
    let dir = scratch_dir("devices");
    let c = config();
    let mut rng = Rng::new(21);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    memory_tensors(&weights, &values)
        .write(&dir.join("w.safetensors"))
        .unwrap();
    let rows = 9;
    let mut input = TensorFile::default();
    input.insert(
        "input",
        HostTensor::f32(vec![rows, c.d], rng.vec_normal(rows * c.d, 1.0)),
    );
    input.insert(
        "grad_output",
        HostTensor::f32(vec![rows, c.d], rng.vec_normal(rows * c.d, 1.0)),
    );
    input.write(&dir.join("x.safetensors")).unwrap();
    let run = memory_forward(&dir, &["--knn", "5", "--devices", "0"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let one = std::fs::read(dir.join("out.safetensors")).unwrap();
    for devices in ["0,0", "0,0,0"] {
        let run = memory_forward(&dir, &["--knn", "5", "--devices", devices]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let sharded = std::fs::read(dir.join("out.safetensors")).unwrap();
        assert!(
            sharded == one,
            "--devices {devices}: not the bytes one device writes"
        );
    }
    std::fs::remove_file(dir.join("out.safetensors")).unwrap();
    // An adapter that does not exist, and a cap that the shards do not fit: one line, no file.
    let run = memory_forward(&dir, &["--knn", "5", "--devices", "0,99"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("no adapter 99"), "{err}");
    // 400 rows x 12 columns x 4 bytes = 19,200 bytes a device on two devices.
    let run = Command::new(env!("CARGO_BIN_EXE_memlayers"))
        .env("MEMLAYERS_MAX_DEVICE_BYTES", "19000")
        .args(["memory-forward", "--knn", "5", "--devices", "0,0", "--weights"])
        .arg(dir.join("w.safetensors"))
        .arg("--input")
        .arg(dir.join("x.safetensors"))
        .arg("--output")
        .arg(dir.join("out.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("MEMLAYERS_MAX_DEVICE_BYTES"),
        "{err}"
    );
    let message: Vec<&str> = err.lines().filter(|l| l.starts_with("memlayers:")).collect();
    assert!(message.len() == 1 && message[0].contains("[400, 24]"), "{err}");
    assert!(!dir.join("out.safetensors").exists());
}
