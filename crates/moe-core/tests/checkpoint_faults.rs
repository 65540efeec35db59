//! A save that fails part-way (a full disk, simulated by the `checkpoint.file` failpoint after the
//! first file) leaves the previous checkpoint loadable and no temporary folder behind. Its own test
//! binary: failpoints are process-wide.

use moe_core::{Model, ModelConfig};
use serde_json::json;

#[test]
fn a_failed_save_keeps_the_previous_checkpoint_and_removes_its_temporary() {
    let root = std::env::temp_dir().join(format!("moe-ckpt-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("ckpt");
    let cfg = ModelConfig::from_json(json!({
        "vocab_size": 13, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 4, "moe_intermediate_size": 6, "num_experts": 4,
        "num_experts_per_tok": 2, "max_position_embeddings": 32, "seed": 3
    }))
    .unwrap();
    let mut a = Model::new(cfg.clone()).unwrap();
    a.save(&dir, Some("{\"step\":1}"), &[]).unwrap();
    let mut b = Model::new(ModelConfig { seed: 4, ..cfg }).unwrap();
    for spec in ["1*off->return", "2*off->return", "return"] {
        fail::cfg("checkpoint.file", spec).unwrap();
        let e = b.save(&dir, Some("{\"step\":2}"), &[("tokenizer.json".into(), b"{}".to_vec())]).unwrap_err();
        fail::cfg("checkpoint.file", "off").unwrap();
        assert_eq!(e.code(), "IO_ERROR", "{spec}: {e}");
        let (back, trainer) = Model::from_checkpoint(&dir).unwrap();
        assert_eq!(trainer.as_deref(), Some("{\"step\":1}"), "{spec}: the previous checkpoint is intact");
        assert_eq!(back.cfg.seed, 3);
        let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ckpt"], "{spec}: the temporary folder was removed");
    }
    fail::cfg("checkpoint.commit", "return").unwrap();
    assert_eq!(b.save(&dir, None, &[]).err().map(|e| e.code()), Some("IO_ERROR"));
    fail::cfg("checkpoint.commit", "off").unwrap();
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
    std::fs::remove_dir_all(root).unwrap();
}
