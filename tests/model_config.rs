//! lingua's LMTransformerArgs JSON: defaults, derived sizes, FLOPs, and clear errors.

use memlayers::model::LMTransformerArgs;

#[test]
fn lingua_defaults_and_derived_sizes() {
    let a = LMTransformerArgs::from_json(r#"{"vocab_size": 256, "n_heads": 8}"#).unwrap();
    let c = a.resolve().unwrap();
    assert_eq!((c.dim, c.n_layers, c.head_dim, c.n_kv_heads), (512, 8, 64, 8));
    // multiple_of * ceil(int(2 * 4 * 512 / 3) / multiple_of) = 256 * ceil(1365 / 256)
    assert_eq!(c.hidden, 1536);
    assert!(c.memory.is_none());
    let with_mult = LMTransformerArgs::from_json(
        r#"{"vocab_size": 256, "n_heads": 8, "ffn_dim_multiplier": 1.3, "multiple_of": 64}"#,
    )
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(with_mult.hidden, 64 * ((1.3f64 * 1365.0) as usize).div_ceil(64));
    // Round trip.
    assert_eq!(LMTransformerArgs::from_json(&a.to_json()).unwrap(), a);
}

#[test]
fn memory_layers_from_productkey_args() {
    let json = r#"{"dim": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 300,
        "productkey_args": {"is_enabled": true, "layers": "1, 3", "mem_n_keys": 16, "mem_heads": 2,
        "mem_knn": 4, "mem_k_dim": 32}}"#;
    let c = LMTransformerArgs::from_json(json).unwrap().resolve().unwrap();
    assert_eq!(c.memory_layers, vec![1, 3]);
    let m = c.memory.clone().unwrap();
    assert_eq!(
        (m.n_keys, m.heads, m.knn, m.k_dim, m.v_dim, m.swilu),
        (16, 2, 4, 32, 64, true)
    );
    // FLOPs: memory layers cost their own count, not the FFN's.
    let dense = LMTransformerArgs::from_json(
        r#"{"dim": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 300}"#,
    )
    .unwrap()
    .resolve()
    .unwrap();
    let diff = dense.flops_per_token(128).unwrap() - c.flops_per_token(128).unwrap();
    let ffn = 2.0 * 3.0 * 64.0 * dense.hidden as f64;
    assert!((diff - 2.0 * (ffn - m.flops_per_token())).abs() < 1e-6);
}

#[test]
fn unsupported_or_bad_settings_are_errors() {
    let cases = [
        (
            r#"{"vocab_size": 256, "n_heads": 8, "sliding_window": 128}"#,
            "sliding_window",
        ),
        (
            r#"{"vocab_size": 256, "n_heads": 8, "weight_tying": true}"#,
            "weight_tying",
        ),
        (
            r#"{"vocab_size": 256, "n_heads": 8, "productkey_args": {"is_enabled": true, "layers": "1", "peer_variant": true, "mem_v_dim": 32}}"#,
            "peer_variant",
        ),
        (
            r#"{"vocab_size": 256, "n_heads": 8, "productkey_args": {"is_enabled": true, "layers": "9"}}"#,
            "layers",
        ),
        (r#"{"vocab_size": 256, "n_heads": 7}"#, "n_heads"),
        (r#"{"n_heads": 8}"#, "vocab_size"),
        (
            r#"{"vocab_size": 256, "n_heads": 8, "n_kv_heads": 3}"#,
            "n_kv_heads",
        ),
        (r#"{"vocab_size": 256, "n_heads": 8, "dropout": 0.1}"#, "dropout"),
        (
            r#"{"vocab_size": 256, "n_heads": 8, "max_seqlen": 4096}"#,
            "max_seqlen",
        ),
    ];
    for (json, needle) in cases {
        let err = LMTransformerArgs::from_json(json)
            .and_then(|a| a.resolve())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "`{json}` -> `{err}` should mention {needle}"
        );
    }
}

/// Each layer gets its feed-forward kind from the configuration, and each kind counts its
/// own parameters, FLOPs and compact weights: a memory in the block's place or beside it, a
/// mixture of experts, the dense block elsewhere.
#[test]
fn each_layer_gets_its_feed_forward_kind() {
    use memlayers::model::{FeedForwardParams, MemoryPlacement, ModelLayout};
    let base = r#""dim": 32, "n_layers": 4, "n_heads": 4, "vocab_size": 50, "multiple_of": 16"#;
    let resolve = |extra: &str| {
        LMTransformerArgs::from_json(&format!("{{{base}{extra}}}"))
            .unwrap()
            .resolve()
            .unwrap()
    };
    let dense = resolve("");
    let ffn = 2.0 * 3.0 * 32.0 * dense.hidden as f64;
    let memory_json = r#", "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 8, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 16}"#;
    let replaced = resolve(memory_json);
    let m = replaced.memory.clone().unwrap().flops_per_token();
    let mut args = LMTransformerArgs::from_json(&format!("{{{base}{memory_json}}}")).unwrap();
    let pk = std::mem::take(&mut args.productkey_args);
    let beside = args
        .resolve()
        .unwrap()
        .with_memory(&pk, MemoryPlacement::Parallel)
        .unwrap();
    let moe = resolve(r#", "moe_args": {"layers": "2,3", "n_experts": 4, "top_k": 2, "hidden_dim": 8}"#);
    let moe_flops = 2.0 * 32.0 * 4.0 + 2.0 * 2.0 * 3.0 * 32.0 * 8.0;
    let f = |c: &memlayers::model::ModelConfig| c.flops_per_token(64).unwrap();
    assert!((f(&dense) - f(&replaced) - (ffn - m)).abs() < 1e-6);
    assert!((f(&beside) - f(&dense) - m).abs() < 1e-6);
    assert!((f(&dense) - f(&moe) - 2.0 * (ffn - moe_flops)).abs() < 1e-6);
    let kinds = |c| {
        let layout = ModelLayout::new(c).unwrap();
        layout
            .layers
            .iter()
            .map(|l| match &l.feed_forward {
                FeedForwardParams::Dense(d) => {
                    assert_eq!(l.feed_forward.compact_weights(), vec![d.w1, d.w2, d.w3]);
                    "dense"
                }
                FeedForwardParams::Memory(_) => {
                    assert!(l.feed_forward.compact_weights().is_empty() && l.feed_forward.dense().is_none());
                    "memory"
                }
                FeedForwardParams::Moe(p) => {
                    assert_eq!(l.feed_forward.ids(), vec![p.router, p.w1, p.w2, p.w3]);
                    "moe"
                }
                FeedForwardParams::DenseAndMemory(p) => {
                    assert_eq!(
                        l.feed_forward.compact_weights(),
                        vec![p.dense.w1, p.dense.w2, p.dense.w3]
                    );
                    assert_eq!(l.feed_forward.memory(), Some(&p.memory));
                    "dense+memory"
                }
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&dense), ["dense"; 4]);
    assert_eq!(kinds(&replaced), ["dense", "memory", "dense", "dense"]);
    assert_eq!(kinds(&beside), ["dense", "dense+memory", "dense", "dense"]);
    assert_eq!(kinds(&moe), ["dense", "dense", "moe", "moe"]);
    // The parallel memory's parameters are its own block's, after the dense block's.
    let layout = ModelLayout::new(&beside).unwrap();
    let names: Vec<&str> = layout.layers[1]
        .feed_forward
        .ids()
        .into_iter()
        .map(|id| layout.registry.spec(id).name.as_str())
        .collect();
    assert_eq!(
        &names[..3],
        [
            "layers.1.feed_forward.w1.weight",
            "layers.1.feed_forward.w2.weight",
            "layers.1.feed_forward.w3.weight"
        ]
    );
    assert!(
        names[3..].iter().all(|n| n.starts_with("layers.1.memory.")),
        "{names:?}"
    );
}
