//! `DecoderConfig` from the real and tiny checkpoints' `config.json`.

mod common;

use lethe_decoder::DecoderConfig;

#[test]
fn real_config_parses_with_reference_defaults() {
    let cfg = DecoderConfig::from_file(common::fixtures().join("real/config.json")).unwrap();
    assert_eq!(cfg.hidden_size, 1280);
    assert_eq!(cfg.num_hidden_layers, 12);
    assert_eq!(cfg.num_attention_heads, 10);
    assert_eq!(cfg.num_kv_heads(), 10);
    assert_eq!(cfg.head_dim(), 128);
    assert_eq!(cfg.vocab_size, 129_280);
    assert_eq!(cfg.intermediate_size, 6848);
    assert_eq!(cfg.moe_intermediate_size, 896);
    assert_eq!(cfg.n_routed_experts, Some(64));
    assert_eq!(cfg.n_shared_experts, Some(2));
    assert_eq!(cfg.experts_per_token(), 6);
    assert_eq!(cfg.first_k_dense_replace, 1);
    assert!(!cfg.is_moe_layer(0));
    assert!((1..12).all(|i| cfg.is_moe_layer(i)));
    // Defaults (absent from the file).
    assert_eq!(cfg.rope_theta, 1e4);
    assert_eq!(cfg.rms_norm_eps, 1e-6);
    assert!(!cfg.norm_topk_prob);
    assert_eq!(cfg.routed_scaling_factor, 1.0);
    assert_eq!(cfg.scoring_func, "softmax");
    assert_eq!(cfg.bos(), 0);
    assert_eq!(cfg.eos_token_id, vec![1]);
    assert_eq!(cfg.eos(), vec![1]);
    assert_eq!(cfg.image_token_id(), 128_815);
    // About 2.93 B parameters in the decoder (11.7 GB in f32); ~0.57 B read per decoded token.
    let p = cfg.num_parameters();
    assert!((2_900_000_000..2_960_000_000).contains(&p), "{p}");
    let a = cfg.active_parameters_per_token();
    assert!((500_000_000..650_000_000).contains(&a), "{a}");
    // Per layer: q, k, v, o (4 x 1280^2), two norms (2 x 1280), then layer 0's dense SwiGLU
    // (3 x 1280 x 6848) or a MoE layer's router (64 x 1280) and 6 + 2 experts (8 x 3 x 1280 x 896).
    assert_eq!(
        cfg.active_parameters_of_layer(0),
        6_553_600 + 2_560 + 26_296_320
    );
    assert_eq!(
        cfg.active_parameters_of_layer(1),
        6_553_600 + 2_560 + 81_920 + 27_525_120
    );
    let layers: usize = (0..cfg.num_hidden_layers)
        .map(|i| cfg.active_parameters_of_layer(i))
        .sum();
    assert_eq!(
        a,
        layers + cfg.vocab_size * 1280 + 1280,
        "lm_head and the final norm besides"
    );
}

#[test]
fn tiny_config_parses() {
    let cfg = DecoderConfig::from_file(common::fixtures().join("tiny/config.json")).unwrap();
    assert_eq!(cfg.hidden_size, 64);
    assert_eq!(cfg.num_hidden_layers, 3);
    assert_eq!(cfg.head_dim(), 16);
    assert_eq!(cfg.n_routed_experts, Some(8));
    assert_eq!(cfg.experts_per_token(), 3);
    assert_eq!(cfg.image_token_id(), 1000);
    assert_eq!(cfg.vocab_size, 1024);
}

#[test]
fn language_config_wins_and_top_level_fills_gaps() {
    let text = r#"{"language_config": {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "moe_intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2},
        "hidden_size": 999, "rope_theta": 500.0, "image_token_id": 7}"#;
    let cfg = DecoderConfig::from_json_str(text).unwrap();
    assert_eq!(cfg.hidden_size, 8);
    assert_eq!(cfg.rope_theta, 500.0);
    assert_eq!(cfg.image_token_id(), 7);
    // No bos / eos in the file: the reference's 0 and [1].
    assert_eq!(cfg.bos(), 0);
    assert_eq!(cfg.eos(), vec![1]);
}

#[test]
fn unsupported_and_invalid_configs_are_rejected() {
    let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "moe_intermediate_size": 4, "num_hidden_layers": 1"#;
    let mla = format!("{{{base}, \"num_attention_heads\": 2, \"use_mla\": true}}");
    let err = DecoderConfig::from_json_str(&mla).unwrap_err().to_string();
    assert!(err.contains("use_mla"), "{err}");
    let heads = format!("{{{base}, \"num_attention_heads\": 3}}");
    let err = DecoderConfig::from_json_str(&heads)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_attention_heads"), "{err}");
    let missing = r#"{"hidden_size": 8}"#;
    assert!(DecoderConfig::from_json_str(missing).is_err());
}
