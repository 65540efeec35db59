"""The Hugging Face side of benches/load.ts. `make DIR`: writes a randomly initialised Qwen3-MoE of
about 1.1 GB in f32 with transformers' own save_pretrained (sharded at 300 MB: the index and 5
shards), once. `load DIR`: times AutoModelForCausalLM.from_pretrained(DIR, dtype=float32) and
prints {"seconds", "params"} as JSON; peak RSS is measured by the caller (/usr/bin/time)."""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

what, d = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
if what == "make":
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=8, num_attention_heads=12,
                         num_key_value_heads=4, head_dim=64, moe_intermediate_size=384, num_experts=32,
                         num_experts_per_tok=4, norm_topk_prob=True, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(d, max_shard_size="300MB")
    print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
else:
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    print(json.dumps({"seconds": time.perf_counter() - t, "params": sum(p.numel() for p in model.parameters())}))
