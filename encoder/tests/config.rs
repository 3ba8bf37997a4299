//! `Config` reads both the real checkpoint's `config.json` and the tiny fixture's.

mod common;

use lethe_encoder::{Config, Error};

#[test]
fn real_config_gets_real_defaults() {
    let cfg = Config::from_file(common::fixtures().join("real/config.json")).expect("real config");
    let s = &cfg.vision_config.width.sam;
    assert_eq!((s.width, s.layers, s.heads), (768, 12, 12));
    assert_eq!(s.global_attn_indexes, vec![2, 5, 8, 11]);
    assert_eq!(s.downsample_channels, vec![512, 1024]);
    assert_eq!((s.out_chans, s.window_size, s.patch_size), (256, 14, 16));
    assert_eq!(s.mlp_ratio, 4.0);
    assert_eq!(cfg.sam_mlp_dim(), 3072);
    let c = &cfg.vision_config.width.clip;
    assert_eq!(
        (c.width, c.layers, c.heads, c.ffn_hidden_size),
        (1024, 24, 16, 4096)
    );
    assert_eq!(cfg.clip_native_grid(), 16);
    assert_eq!(cfg.sam_native_grid(), 64);
    assert_eq!(
        (cfg.projector_config.input_dim, cfg.hidden_size()),
        (2048, 1280)
    );
}

#[test]
fn tiny_config_reads_added_keys() {
    let cfg = Config::from_file(common::fixtures().join("tiny/config.json")).expect("tiny config");
    let s = &cfg.vision_config.width.sam;
    assert_eq!((s.width, s.layers, s.heads, s.out_chans), (48, 4, 3, 32));
    assert_eq!(s.global_attn_indexes, vec![1, 3]);
    assert_eq!(cfg.sam_mlp_dim(), 192);
    assert_eq!(cfg.vision_config.width.clip.ffn_hidden_size, 384);
    assert_eq!(
        (cfg.projector_config.input_dim, cfg.hidden_size()),
        (192, 64)
    );
}

#[test]
fn inconsistent_config_is_rejected() {
    let text = std::fs::read_to_string(common::fixtures().join("tiny/config.json")).unwrap();
    let bad = text.replace("\"input_dim\": 192", "\"input_dim\": 191");
    assert!(matches!(
        Config::from_json(&bad),
        Err(Error::InvalidConfig(_))
    ));
    let missing = Config::from_file(common::fixtures().join("nope/config.json"));
    assert!(matches!(missing, Err(Error::MissingFile { .. })));
}
