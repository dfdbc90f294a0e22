//! Hugging Face folders against transformers, on the fixtures `scripts/hf_fixtures.py` made
//! (`tests/fixtures/hf/README.md`): tokenizers, chat templates, RoPE frequencies, logits,
//! loss and greedy continuations of a Llama (tied, bf16 shards, llama3 RoPE, a BOS), a Qwen2
//! (q/k/v biases, no BOS), a Qwen3 (q/k norms, head_dim apart from the width, f16) and a
//! Mistral, in transformers 4's and 5's config styles; and one-line errors for what is not
//! supported.

mod common;
use common::gpu;
use memlayers::io::hf::{HfConfig, HfFolder};
use memlayers::model::{Model, WeightPrecision};
use serde_json::Value;
use std::path::{Path, PathBuf};

use common::{hf_fixture as fixture, HF_FOLDERS as FOLDERS};

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap()).unwrap()
}

use common::json_ids as ids;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn tokenizers_and_chat_templates_match_transformers() {
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let want = expected(name);
        for case in want["tokenizer_cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let got = folder.tokenizer.encode(text, true).unwrap();
            assert_eq!(got, ids(&case["ids"]), "{name}: {text:?}");
            assert_eq!(
                folder.tokenizer.decode(&got, false).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{name}: decode of {text:?}"
            );
        }
        assert_eq!(folder.eos_ids, ids(&want["eos_token_ids"]), "{name}: EOS ids");
        match (&folder.chat_template, want.get("chat")) {
            (Some(template), Some(chat)) => {
                let user = chat["messages"][0]["content"].as_str().unwrap();
                let text = template.render_user(user).unwrap();
                assert_eq!(text, chat["text"].as_str().unwrap(), "{name}: chat template");
                // transformers tokenizes a rendered chat without the post-processor's tokens.
                assert_eq!(folder.tokenizer.encode(&text, false).unwrap(), ids(&chat["ids"]));
            }
            (None, None) => {}
            (t, c) => panic!("{name}: template {} vs expected {}", t.is_some(), c.is_some()),
        }
    }
}

#[test]
fn rope_frequencies_match_transformers_including_llama3_scaling() {
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let want = floats(&expected(name)["rope_inv_freq"]);
        let got = folder.config().rope_inv_freq();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // f32 powers may differ from torch's in the last place.
            assert!(
                (g - w).abs() <= 4.0 * f32::EPSILON * w.abs(),
                "{name}: pair {i}: {g} vs {w}"
            );
        }
    }
}

/// Logits within 1e-4 of transformers' (f32 on both sides; the fixtures keep 6 significant
/// digits, and the sums run in other orders), the loss within 1e-4, and the greedy
/// continuation (KV cache, one token at a time, up to the first EOS of the list) the same.
#[test]
fn logits_loss_and_greedy_continuations_match_transformers() {
    let g = gpu();
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let want = expected(name);
        let c = folder.config().clone();
        // Uploaded tensor by tensor from the mapped files.
        let model = folder.upload(g, WeightPrecision::F32).unwrap();
        let prompt = ids(&want["prompt_ids"]);
        assert_eq!(
            folder
                .tokenizer
                .encode(want["prompt"].as_str().unwrap(), true)
                .unwrap(),
            prompt
        );
        let targets: Vec<u32> = prompt[1..]
            .iter()
            .copied()
            .chain([memlayers::kernels::ops::IGNORE_TARGET])
            .collect();
        let (logits, loss) =
            pollster::block_on(model.forward(g, &prompt, Some(&targets), 1, prompt.len())).unwrap();
        let want_logits = floats(&want["prompt_logits"]);
        assert_eq!(logits.len(), want_logits.len(), "{name}");
        let worst = logits
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs() / (1e-4 + 1e-5 * b.abs()))
            .fold(0.0f32, f32::max);
        eprintln!("{name}: largest logit difference {worst:.3} x the tolerance, loss {loss:?}");
        assert!(worst <= 1.0, "{name}: logits off by {worst} x the tolerance");
        let want_loss = want["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss.unwrap() - want_loss).abs() <= 1e-4,
            "{name}: loss {loss:?} vs {want_loss}"
        );

        let mut cache = model.new_cache(g);
        let (mut feed, mut out) = (prompt.clone(), Vec::new());
        while out.len() < want["max_new_tokens"].as_u64().unwrap() as usize {
            let logits = pollster::block_on(model.forward_with_cache(g, &feed, &mut cache)).unwrap();
            let next = memlayers::demo::argmax(&logits[(feed.len() - 1) * c.vocab..]);
            out.push(next);
            if folder.eos_ids.contains(&next) {
                break;
            }
            feed = vec![next];
        }
        assert_eq!(out, ids(&want["greedy_ids"]), "{name}: greedy continuation");
        assert_eq!(
            folder.tokenizer.decode(&out, false).unwrap(),
            want["greedy_text"].as_str().unwrap(),
            "{name}: greedy text"
        );
    }
}

#[test]
fn unsupported_configurations_are_one_line_errors() {
    let base = std::fs::read_to_string(fixture("llama_tied_bf16_shards").join("config.json")).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&base).unwrap();
        edit(&mut v);
        HfConfig::from_json(&v.to_string()).and_then(|c| c.model_config(1024).map(|_| ()))
    };
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(&str, Edit); 5] = [
        ("rope_type \"yarn\"", &|v| {
            v["rope_scaling"]["rope_type"] = "yarn".into()
        }),
        ("GPT2LMHeadModel", &|v| {
            v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
        }),
        ("sliding", &|v| {
            v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
            v["sliding_window"] = 4096.into();
        }),
        ("hidden_act", &|v| v["hidden_act"] = "gelu".into()),
        ("num_key_value_heads", &|v| v["num_key_value_heads"] = 3.into()),
    ];
    for (needle, edit) in cases {
        let e = with(edit).unwrap_err().to_string();
        assert!(e.contains(needle) && !e.contains('\n'), "{needle}: {e}");
    }
    assert!(with(&|_| {}).is_ok());
}

/// The backward of every variant (q/k/v biases, per-head q/k norms, a tied embedding whose
/// two uses' gradients add up, llama3 RoPE scaling) against transformers' gradients of the
/// prompt's mean next-token loss (`scripts/hf_grad_fixtures.py`), tensor by tensor.
#[test]
fn gradients_match_transformers() {
    use memlayers::kernels::ops::CrossEntropy;
    let g = gpu();
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let weights = folder.read_weights().unwrap();
        let want = folder
            .read_tensors_of(&fixture(name).join("expected_grads.safetensors"))
            .unwrap();
        let model = Model::new(g, &weights).unwrap();
        let prompt = ids(&expected(name)["prompt_ids"]);
        let rows = prompt.len() - 1;
        let vocab = folder.config().vocab;
        let (tokens, targets) = (
            g.upload("tokens", &prompt[..rows]),
            g.upload("targets", &prompt[1..]),
        );
        let mut encoder = g.device.create_command_encoder(&Default::default());
        let fwd = model
            .record_forward(g, &mut encoder, &tokens, 1, rows as u32)
            .unwrap();
        let (loss, d_logits) = (
            g.storage("loss", rows as u64 * 4),
            g.storage("d logits", (rows * vocab * 4) as u64),
        );
        CrossEntropy {
            rows: rows as u32,
            vocab: vocab as u32,
            scale: 1.0 / rows as f32,
            logits: &fwd.logits,
            targets: &targets,
            loss: &loss,
            grad: &d_logits,
        }
        .record(g, &mut encoder)
        .unwrap();
        let grads = model.record_backward(g, &mut encoder, &fwd, &d_logits).unwrap();
        g.queue.submit([encoder.finish()]);
        let expected_tensors = want.named_tensors();
        assert_eq!(grads.named.len(), expected_tensors.len(), "{name}");
        for ((got_name, buffer, len), (want_name, _, want)) in grads.named.iter().zip(&expected_tensors) {
            assert_eq!(got_name, want_name);
            let got = g.read_f32_blocking(buffer, *len).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-3 * scale + 1e-6,
                "{name} {got_name}: largest difference {worst:e} against a largest gradient of {scale:e}"
            );
        }
    }
}

/// `memlayers generate` on a Hugging Face folder prints transformers' greedy continuation (up
/// to its EOS), and `--chat` renders the folder's template.
#[test]
fn generate_prints_the_greedy_continuation_of_a_folder() {
    let name = "llama_tied_bf16_shards";
    let want = expected(name);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_memlayers"))
            .args([
                "generate",
                "--model",
                fixture(name).to_str().unwrap(),
                "--max-tokens",
                "12",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (text, log) = run(&["--prompt", want["prompt"].as_str().unwrap()]);
    // The EOS ends the continuation and is not printed.
    let greedy = want["greedy_text"]
        .as_str()
        .unwrap()
        .trim_end_matches("<|eot_id|>");
    assert_eq!(text, format!("{greedy}\n"));
    assert!(log.contains("prompt 13 tokens, 8 new"), "{log}");
    let (_, log) = run(&["--prompt", "Hi there", "--chat"]);
    assert!(log.contains("prompt 25 tokens"), "{log}");
}

/// The whole weights on the host (`read_weights`, for training and export) give the model
/// that the tensor-by-tensor upload gives, bit for bit; f16 weights stay close.
#[test]
fn host_weights_and_streamed_upload_give_the_same_model() {
    let g = gpu();
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let weights = folder.read_weights().unwrap();
        let tokens = ids(&expected(name)["prompt_ids"]);
        let logits = |m: &Model| {
            pollster::block_on(m.forward(g, &tokens, None, 1, tokens.len()))
                .unwrap()
                .0
        };
        let streamed = logits(&folder.upload(g, WeightPrecision::F32).unwrap());
        assert_eq!(logits(&Model::new(g, &weights).unwrap()), streamed, "{name}");
        let mut half = Model::new(g, &weights).unwrap();
        half.use_f16_weights(g, &weights).unwrap();
        let half_streamed = logits(&folder.upload(g, WeightPrecision::F16).unwrap());
        assert_eq!(logits(&half), half_streamed, "{name}: f16");
        let worst = streamed
            .iter()
            .zip(&half_streamed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // Weights stored as f16 round to themselves.
        let exact = folder.hf.stored_dtype() == Some("float16");
        assert!(
            (worst > 0.0) != exact && worst < 0.05,
            "{name}: f16 weights moved logits by {worst}"
        );
    }
}

/// A folder given as its files' bytes (the page's folder picker) opens as the folder on disk
/// does: the same logits bit for bit, the same tokens and EOS ids; a missing shard, config
/// or tokenizer is a one-line error naming it.
#[test]
fn a_folder_given_as_bytes_opens_as_on_disk() {
    let g = gpu();
    let read_all = |name: &str| -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(fixture(name))
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let file = path.file_name().unwrap().to_string_lossy().to_string();
                (file, std::fs::read(&path).unwrap())
            })
            .collect()
    };
    for name in FOLDERS {
        let on_disk = HfFolder::open(&fixture(name)).unwrap();
        let given = HfFolder::from_files(name, read_all(name)).unwrap();
        let want = expected(name);
        let prompt = ids(&want["prompt_ids"]);
        let text = want["prompt"].as_str().unwrap();
        assert_eq!(given.tokenizer.encode(text, true).unwrap(), prompt, "{name}");
        assert_eq!(given.eos_ids, on_disk.eos_ids, "{name}");
        assert_eq!(
            given.chat_template.is_some(),
            on_disk.chat_template.is_some(),
            "{name}"
        );
        let logits = |f: &HfFolder| {
            let m = f.upload(g, WeightPrecision::F32).unwrap();
            pollster::block_on(m.forward(g, &prompt, None, 1, prompt.len()))
                .unwrap()
                .0
        };
        assert_eq!(logits(&given), logits(&on_disk), "{name}");
    }
    let without = |name: &str, file: &str| {
        let files = read_all(name).into_iter().filter(|(f, _)| f != file).collect();
        match HfFolder::from_files(name, files) {
            Ok(_) => panic!("{name} without {file} opened"),
            Err(e) => e.to_string(),
        }
    };
    let shard = "model-00002-of-00003.safetensors";
    assert!(without("llama_tied_bf16_shards", shard).contains(shard));
    assert!(without("mistral_f32", "config.json").contains("no config.json"));
    assert!(without("mistral_f32", "tokenizer.json").contains("no tokenizer.json"));
    assert!(without("mistral_f32", "model.safetensors").contains("model.safetensors"));
}

/// A model with a weight larger than the adapter's largest buffer binding is refused with a
/// message naming that weight and both sizes, before any tensor is read or uploaded.
#[test]
fn a_model_too_large_for_the_adapter_is_a_message() {
    let g = gpu();
    let mut c = HfFolder::open(&fixture("mistral_f32")).unwrap().config().clone();
    c.hidden = (g.max_binding_bytes() / (4 * c.dim as u64) + 1) as usize;
    let e = match Model::from_source(g, &c, WeightPrecision::F32, |_| panic!("a tensor was read")) {
        Ok(_) => panic!("a model too large was built"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("layers.0.feed_forward.w1.weight") && e.contains("largest buffer binding"),
        "{e}"
    );
}

/// 8-bit weights (q8_0) cost little on every fixture: the largest logit difference from the
/// f32 model on the prompt stays small against the logits' spread, the next token agrees with
/// f32's at most prompt positions (the greedy continuation's agreement is printed), and going back to f32
/// weights gives the f32 logits bit for bit.
#[test]
fn q8_weights_stay_close_to_f32() {
    let g = gpu();
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let want = expected(name);
        let prompt = ids(&want["prompt_ids"]);
        let vocab = folder.config().vocab;
        let logits = |m: &Model| {
            pollster::block_on(m.forward(g, &prompt, None, 1, prompt.len()))
                .unwrap()
                .0
        };
        let greedy = |m: &Model| {
            let mut cache = m.new_cache(g);
            let (mut feed, mut out) = (prompt.clone(), Vec::new());
            while out.len() < 16 {
                let l = pollster::block_on(m.forward_with_cache(g, &feed, &mut cache)).unwrap();
                let next = memlayers::demo::argmax(&l[(feed.len() - 1) * vocab..]);
                out.push(next);
                feed = vec![next];
            }
            out
        };
        let exact = folder.upload(g, WeightPrecision::F32).unwrap();
        let mut q8 = folder.upload(g, WeightPrecision::Q8).unwrap();
        assert_eq!(q8.weight_precision(), WeightPrecision::Q8);
        let (a, b) = (logits(&exact), logits(&q8));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let spread = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (ga, gb) = (greedy(&exact), greedy(&q8));
        let agree = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
        // The next token at every prompt position, each model on the same prefix.
        let top = |l: &[f32]| l.chunks(vocab).map(memlayers::demo::argmax).collect::<Vec<_>>();
        let same_top = top(&a).iter().zip(top(&b)).filter(|(x, y)| **x == *y).count();
        eprintln!(
            "{name}: q8 weights: largest logit difference {worst:.4} (largest |logit| {spread:.2}), the same next token at {same_top} of {} prompt positions, greedy agrees on the first {agree} of 16 tokens",
            prompt.len()
        );
        // Random tiny models have near-ties everywhere; the bounds hold with margin here.
        assert!(
            worst > 0.0 && worst < 0.06 * spread,
            "{name}: q8 moved logits by {worst}"
        );
        assert!(
            same_top * 10 >= prompt.len() * 8,
            "{name}: q8 changed the next token at {} of {} positions",
            prompt.len() - same_top,
            prompt.len()
        );
        let weights = folder.read_weights().unwrap();
        q8.use_compact_weights(g, &weights, WeightPrecision::F32).unwrap();
        assert_eq!(logits(&q8), a, "{name}: back to f32");
    }
}

/// A vocabulary too large for one binding (a 151,936-token Qwen embedding is 545 MB) is split
/// by rows over buffers: the embedding as a bag over chunks, the output layer a product per
/// chunk. Split into 100-row buffers here, every fixture gives the unsplit model's logits
/// bit for bit, with f32 and with f16 weights; training refuses the split tables.
#[test]
fn vocabulary_tables_split_over_buffers_give_the_same_logits() {
    let g = gpu();
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let weights = folder.read_weights().unwrap();
        let c = folder.config();
        let tokens = ids(&expected(name)["prompt_ids"]);
        let logits = |m: &Model| {
            pollster::block_on(m.forward(g, &tokens, None, 1, tokens.len()))
                .unwrap()
                .0
        };
        for precision in [WeightPrecision::F32, WeightPrecision::F16, WeightPrecision::Q8] {
            let build = |rows: Option<usize>| {
                let source = |id| Ok(std::borrow::Cow::Borrowed(weights.get(id)));
                let mut m = Model::from_source_with(g, c, rows, WeightPrecision::F32, source).unwrap();
                m.use_compact_weights(g, &weights, precision).unwrap();
                m
            };
            // The compact copies made while the tensors stream by are those
            // use_compact_weights makes.
            let streamed = |rows: Option<usize>| {
                Model::from_source_with(g, c, rows, precision, |id| {
                    Ok(std::borrow::Cow::Borrowed(weights.get(id)))
                })
                .unwrap()
            };
            assert_eq!(
                logits(&streamed(Some(100))),
                logits(&build(Some(100))),
                "{name} {precision:?}"
            );
            let split = build(Some(100));
            assert_eq!(logits(&split), logits(&build(None)), "{name} {precision:?}");
            assert!(split.trainable_params().is_err());
        }
    }
}

/// A copy of fixture `name` in a fresh temporary folder.
fn copy_of(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memlayers-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Broken folders: `generate` exits non-zero with one line naming what is wrong, and
/// panics on none.
#[test]
fn broken_folders_are_one_line_errors() {
    let edit_json = |dir: &Path, file: &str, edit: &dyn Fn(&mut Value)| {
        let path = dir.join(file);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(path, v.to_string()).unwrap();
    };
    let shard = "model-00002-of-00003.safetensors";
    type Break = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, &str, Break)> = vec![
        (
            "not-json",
            "config.json",
            Box::new(|d| std::fs::write(d.join("config.json"), "{ not json").unwrap()),
        ),
        (
            "no-weights",
            "neither model.safetensors",
            Box::new(move |d| {
                for f in std::fs::read_dir(d).unwrap() {
                    let p = f.unwrap().path();
                    if p.to_str().unwrap().contains("safetensors") {
                        std::fs::remove_file(p).unwrap();
                    }
                }
            }),
        ),
        (
            "missing-shard",
            "cannot open",
            Box::new(move |d| std::fs::remove_file(d.join(shard)).unwrap()),
        ),
        (
            "truncated",
            "not a valid safetensors file",
            Box::new(move |d| {
                let bytes = std::fs::read(d.join(shard)).unwrap();
                std::fs::write(d.join(shard), &bytes[..bytes.len() - 100]).unwrap();
            }),
        ),
        (
            "no-tokenizer",
            "tokenizer.json",
            Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
        ),
        (
            "bad-tokenizer",
            "tokenizer.json",
            Box::new(|d| std::fs::write(d.join("tokenizer.json"), "{}").unwrap()),
        ),
        (
            "vocab",
            "model.embed_tokens.weight",
            Box::new(move |d| edit_json(d, "config.json", &|v| v["vocab_size"] = 400.into())),
        ),
        (
            "too-many-ids",
            "the tokenizer has 357 ids",
            Box::new(move |d| edit_json(d, "config.json", &|v| v["vocab_size"] = 300.into())),
        ),
        (
            "width",
            "shape",
            Box::new(move |d| edit_json(d, "config.json", &|v| v["intermediate_size"] = 100.into())),
        ),
        (
            "rope",
            "rope_type \"dynamic\"",
            Box::new(move |d| {
                edit_json(d, "config.json", &|v| {
                    v["rope_scaling"]["rope_type"] = "dynamic".into()
                })
            }),
        ),
        (
            "arch",
            "LlamaForCausalLM, Qwen2ForCausalLM",
            Box::new(move |d| {
                edit_json(d, "config.json", &|v| {
                    v["architectures"] = serde_json::json!(["FalconForCausalLM"])
                })
            }),
        ),
    ];
    for (tag, needle, breaks) in cases {
        let dir = copy_of("llama_tied_bf16_shards", tag);
        breaks(&dir);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_memlayers"))
            .args([
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt",
                "hi",
                "--max-tokens",
                "2",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tag}: succeeded");
        assert!(!err.contains("panicked"), "{tag}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{tag}: {err}");
        assert!(err.contains(needle), "{tag}: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `bench --model DIR --json FILE` measures a folder and writes the figures the issue names.
#[test]
fn bench_measures_a_folder_and_writes_json() {
    let json = std::env::temp_dir().join(format!("memlayers-bench-{}.json", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memlayers"))
        .args(["bench", "--model", fixture("qwen2_bias_f32").to_str().unwrap()])
        .args([
            "--prompt-tokens",
            "8",
            "--decode-tokens",
            "2",
            "--json",
            json.to_str().unwrap(),
        ])
        .env("MEMLAYERS_PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("transformers on PyTorch: not measured"), "{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for field in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "bytes_per_decoded_token",
        "copy_bytes_per_s",
    ] {
        assert!(v[field].as_f64().unwrap() > 0.0, "{field}: {v}");
    }
    assert!(v["torch_decode_tokens_per_s"].is_null());
    let rows = v["configurations"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    // 8-bit weights read fewer bytes than f16 (this fixture's down projection, rows of 176
    // values, keeps f16).
    let bytes = |i: usize| rows[i]["bytes_per_decoded_token"].as_f64().unwrap();
    assert!(rows[3]["weights"].as_str().unwrap().starts_with("8-bit"));
    assert!(bytes(3) < bytes(1) && bytes(1) < bytes(0), "{rows:?}");
    std::fs::remove_file(json).unwrap();
}

/// Generation's forward (`forward_last_with_cache`: the output layer on the last position
/// only) gives the last row of the full forward bit for bit, at a prefill and at a step.
#[test]
fn last_position_logits_are_the_full_forwards_last_row() {
    let g = gpu();
    for name in FOLDERS {
        let folder = HfFolder::open(&fixture(name)).unwrap();
        let model = folder.upload(g, WeightPrecision::F32).unwrap();
        let vocab = folder.config().vocab;
        let prompt = ids(&expected(name)["prompt_ids"]);
        let (mut all, mut last) = (model.new_cache(g), model.new_cache(g));
        for feed in [&prompt[..], &prompt[..1]] {
            let full = pollster::block_on(model.forward_with_cache(g, feed, &mut all)).unwrap();
            let only = pollster::block_on(model.forward_last_with_cache(g, feed, &mut last)).unwrap();
            assert_eq!(only, full[(feed.len() - 1) * vocab..], "{name}");
        }
    }
}
