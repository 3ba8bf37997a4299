//! The checkpoint tensors the encoder reads, by exact name and shape.

use crate::config::Config;

/// Every tensor the encoder loads, `(name, shape)`, in the checkpoint's own naming (typos
/// included: `pre_layrnorm`, `view_seperator`). Useful to check a checkpoint or to make random
/// weights of the right shapes.
pub fn checkpoint_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let s = &cfg.vision_config.width.sam;
    let c = &cfg.vision_config.width.clip;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| v.push((name, shape.to_vec()));
    let (w, p, g) = (s.width, s.patch_size, cfg.sam_native_grid());
    let hd = w / s.heads;
    let mlp = cfg.sam_mlp_dim();
    let sam = "model.sam_model";
    add(format!("{sam}.patch_embed.proj.weight"), &[w, 3, p, p]);
    add(format!("{sam}.patch_embed.proj.bias"), &[w]);
    add(format!("{sam}.pos_embed"), &[1, g, g, w]);
    for i in 0..s.layers {
        let b = format!("{sam}.blocks.{i}");
        let rel = if s.global_attn_indexes.contains(&i) {
            2 * g - 1
        } else {
            2 * s.window_size - 1
        };
        for n in ["norm1", "norm2"] {
            add(format!("{b}.{n}.weight"), &[w]);
            add(format!("{b}.{n}.bias"), &[w]);
        }
        add(format!("{b}.attn.qkv.weight"), &[3 * w, w]);
        add(format!("{b}.attn.qkv.bias"), &[3 * w]);
        add(format!("{b}.attn.proj.weight"), &[w, w]);
        add(format!("{b}.attn.proj.bias"), &[w]);
        add(format!("{b}.attn.rel_pos_h"), &[rel, hd]);
        add(format!("{b}.attn.rel_pos_w"), &[rel, hd]);
        add(format!("{b}.mlp.lin1.weight"), &[mlp, w]);
        add(format!("{b}.mlp.lin1.bias"), &[mlp]);
        add(format!("{b}.mlp.lin2.weight"), &[w, mlp]);
        add(format!("{b}.mlp.lin2.bias"), &[w]);
    }
    let oc = s.out_chans;
    let (d2, d3) = (s.downsample_channels[0], s.downsample_channels[1]);
    add(format!("{sam}.neck.0.weight"), &[oc, w, 1, 1]);
    add(format!("{sam}.neck.1.weight"), &[oc]);
    add(format!("{sam}.neck.1.bias"), &[oc]);
    add(format!("{sam}.neck.2.weight"), &[oc, oc, 3, 3]);
    add(format!("{sam}.neck.3.weight"), &[oc]);
    add(format!("{sam}.neck.3.bias"), &[oc]);
    add(format!("{sam}.net_2.weight"), &[d2, oc, 3, 3]);
    add(format!("{sam}.net_3.weight"), &[d3, d2, 3, 3]);

    let vm = "model.vision_model";
    let (cw, ffn, cg) = (c.width, c.ffn_hidden_size, cfg.clip_native_grid());
    add(format!("{vm}.embeddings.class_embedding"), &[cw]);
    add(
        format!("{vm}.embeddings.patch_embedding.weight"),
        &[cw, 3, c.patch_size, c.patch_size],
    );
    add(
        format!("{vm}.embeddings.position_embedding.weight"),
        &[cg * cg + 1, cw],
    );
    add(format!("{vm}.pre_layrnorm.weight"), &[cw]);
    add(format!("{vm}.pre_layrnorm.bias"), &[cw]);
    for i in 0..c.layers {
        let l = format!("{vm}.transformer.layers.{i}");
        for n in ["layer_norm1", "layer_norm2"] {
            add(format!("{l}.{n}.weight"), &[cw]);
            add(format!("{l}.{n}.bias"), &[cw]);
        }
        add(format!("{l}.self_attn.qkv_proj.weight"), &[3 * cw, cw]);
        add(format!("{l}.self_attn.qkv_proj.bias"), &[3 * cw]);
        add(format!("{l}.self_attn.out_proj.weight"), &[cw, cw]);
        add(format!("{l}.self_attn.out_proj.bias"), &[cw]);
        add(format!("{l}.mlp.fc1.weight"), &[ffn, cw]);
        add(format!("{l}.mlp.fc1.bias"), &[ffn]);
        add(format!("{l}.mlp.fc2.weight"), &[cw, ffn]);
        add(format!("{l}.mlp.fc2.bias"), &[cw]);
    }
    let pc = &cfg.projector_config;
    add(
        "model.projector.layers.weight".into(),
        &[pc.n_embed, pc.input_dim],
    );
    add("model.projector.layers.bias".into(), &[pc.n_embed]);
    add("model.image_newline".into(), &[pc.n_embed]);
    add("model.view_seperator".into(), &[pc.n_embed]);
    v
}
