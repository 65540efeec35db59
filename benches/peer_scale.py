"""One process, one measurement: the training step of transformers' Qwen3MoeForCausalLM + torch.optim.AdamW
(forward, backward, clipping, step) on one sequence of SEQ tokens, for the model in MODEL (JSON, our
config names, which are transformers'), eager, torch.compile'd, or eager under bf16 autocast (IMPL = eager |
compile | eager-bf16: torch.autocast("cpu", torch.bfloat16), f32 weights and optimiser), STEPS timed
steps after warm-up. Prints one JSON line: the median step time (s) and the parameter count; run by
benches/scale.ts under /usr/bin/time for its peak resident memory. The peer computes no balance loss
(output_router_logits off)."""

import json
import os
import time

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)
model_cfg = {k: v for k, v in json.loads(os.environ["MODEL"]).items() if k != "seed"}
seq, steps, impl = int(os.environ["SEQ"]), int(os.environ.get("STEPS", "3")), os.environ.get("IMPL", "eager")
model_cfg["max_position_embeddings"] = seq
cfg = Qwen3MoeConfig(**model_cfg, attn_implementation="eager")
model = Qwen3MoeForCausalLM(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
forward = torch.compile(model) if impl == "compile" else model


def step():
    ids = torch.randint(0, cfg.vocab_size, (1, seq))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=impl == "eager-bf16"):
        loss = forward(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(2 if impl == "compile" else 1):
    step()
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"seconds": times[len(times) // 2], "params": sum(p.numel() for p in model.parameters())}))
