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
    let diff = dense.flops_per_token(128) - c.flops_per_token(128);
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
