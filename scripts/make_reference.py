"""Writes the end-to-end reference fixture of crates/moe-core/tests/reference.rs (STYLE habit 7).

A tiny Qwen3MoeForCausalLM from Hugging Face transformers (fp32, seeded, router aux loss off) is
saved with save_pretrained into crates/moe-core/tests/fixtures/reference/ (config.json +
model.safetensors), and reference.safetensors next to it holds, for one batch (B=2, S=9) with a loss
mask: the logits, the loss, every parameter's gradient under its checkpoint (HF) name, per layer the
router probabilities and expert counts, and the losses of 5 torch.optim.AdamW steps on that batch.
The fixture is committed because CI has no PyTorch. Regenerate (peers from scripts/install-peers.sh):

    .venv/bin/python scripts/make_reference.py

reference.safetensors (metadata: magic "moe-trainer-reference", version "1", torch, transformers,
adamw = our AdamWConfig JSON, and a description of every tensor):
  tokens           I32 (B, S)      input ids
  mask             U8  (B, S)      loss mask: mask[b, t] = 0 removes token t as a target; the HF
                                   labels are the tokens with -100 there (HF shifts them by one)
  valid            U8  (B, S)      position t predicts token t+1 and counts iff t < S-1 and mask[b, t+1]
  logits           F32 (B, S, V)
  loss             F32 (1)         mean cross-entropy over the valid positions (HF's loss)
  grad.<name>      F32             d loss / d parameter, <name> as in model.safetensors
  router_probs.<l> F32 (B*S, E)    softmax of layer l's router logits, every position (fp32)
  counts.<l>       F32 (E)         layer l: how many valid positions picked each expert (top-k of
                                   the probs), summed over the sequences
  adamw_losses     F32 (N)         loss before each of N AdamW steps on the same batch (the first
                                   equals `loss`), lr 1e-2, betas (0.9, 0.95), eps 1e-8, weight decay
                                   0.1 on tensors of rank >= 2 only, no clipping
  adamw_loss_after F32 (1)         loss after the N-th step
"""
import json
import os
import shutil
import sys

import torch
import transformers

# The versions the fixture was made with; another version may route or round differently.
TORCH, TRANSFORMERS = "2.15.0", "5.24.0"
assert torch.__version__.split("+")[0] == TORCH, f"torch {torch.__version__}, want {TORCH}"
assert transformers.__version__ == TRANSFORMERS, f"transformers {transformers.__version__}, want {TRANSFORMERS}"

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save  # noqa: E402
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "moe-core", "tests", "fixtures", "reference")
B, S, N_STEPS, SEED = 2, 9, 5, 5
ADAMW = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weightDecay": 0.1}
# Every top-k choice (k-th vs (k+1)-th router probability) must be at least this far from a tie
# in every forward, so fp32 rounding differences cannot flip the routing. SEED is one that passes.
MIN_TOPK_GAP = 1e-4
MAX_FIXTURE_BYTES = 200_000

torch.manual_seed(SEED)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

cfg = Qwen3MoeConfig(
    vocab_size=61,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=4,
    num_experts=5,
    num_experts_per_tok=2,
    moe_intermediate_size=8,
    intermediate_size=8,
    norm_topk_prob=True,
    tie_word_embeddings=False,
    max_position_embeddings=32,
    # Larger than the default 0.02 so the router is decisive (see MIN_TOPK_GAP) and logits are not flat.
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    output_router_logits=False,
    router_aux_loss_coef=0.0,
    use_cache=False,
    attn_implementation="eager",
    experts_implementation="eager",
    dtype=torch.float32,
)
model = Qwen3MoeForCausalLM(cfg).float().train()
L, E, K, F = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size

tokens = torch.randint(0, cfg.vocab_size, (B, S), generator=torch.Generator().manual_seed(SEED + 1))
mask = torch.ones(B, S, dtype=torch.uint8)
mask[0, 4] = 0  # position 3 of sequence 0 has no target
mask[1, 7] = 0  # position 6 of sequence 1 has no target
mask[1, 0] = 0  # the first token is never a target: no effect
labels = tokens.clone()
labels[mask == 0] = -100
valid = torch.zeros(B, S, dtype=torch.uint8)
valid[:, :-1] = mask[:, 1:]
n_valid = int(valid.sum())

# Router logits of every layer, captured from the gate (the router) of each MoE block.
captured = {}
for l, layer in enumerate(model.model.layers):
    layer.mlp.gate.register_forward_hook(lambda mod, inp, out, l=l: captured.__setitem__(l, out[0].detach().float()))


def forward():
    """The model's loss on the batch (HF's shifted, -100-ignoring mean CE) and its logits."""
    captured.clear()
    out = model(input_ids=tokens, labels=labels, use_cache=False)
    # Our definition, computed independently: mean CE over valid positions.
    lp = torch.log_softmax(out.logits.float()[:, :-1], dim=-1)
    nll = -lp.gather(-1, tokens[:, 1:, None])[..., 0]
    ours = (nll * valid[:, :-1]).sum() / n_valid
    assert torch.allclose(out.loss, ours, rtol=1e-6, atol=1e-6), (out.loss.item(), ours.item())
    probs = [torch.softmax(captured[l], dim=-1) for l in range(L)]
    top = [p.topk(K + 1, dim=-1).values for p in probs]
    gap = min(float((t[:, K - 1] - t[:, K]).min()) for t in top)
    assert gap > MIN_TOPK_GAP, f"a top-{K} choice is within {gap:.2e} of a tie: change SEED"
    return out, probs, gap


def write_sorted(path, data):
    """Writes safetensors bytes with the JSON header's keys sorted (safetensors orders its metadata
    at random), so a regenerated fixture is byte-identical to the committed one."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + data[8 + n :])


def checkpoint_names(name, t):
    """(checkpoint name, tensor) pairs of one parameter: the fused experts split per expert, as
    save_pretrained writes them (gate_up_proj (E, 2F, C) = gate rows then up rows)."""
    if name.endswith("mlp.experts.gate_up_proj"):
        p = name[: -len("gate_up_proj")]
        return [(f"{p}{i}.{kind}.weight", t[i, j * F : (j + 1) * F]) for i in range(E) for j, kind in enumerate(["gate_proj", "up_proj"])]
    if name.endswith("mlp.experts.down_proj"):
        p = name[: -len("down_proj")]
        return [(f"{p}{i}.down_proj.weight", t[i]) for i in range(E)]
    return [(name, t)]


# The checkpoint, and proof that checkpoint_names maps parameters onto the saved tensors.
if os.path.isdir(OUT):
    shutil.rmtree(OUT)
model.save_pretrained(OUT, safe_serialization=True)
for extra in ["generation_config.json"]:
    if os.path.exists(os.path.join(OUT, extra)):
        os.remove(os.path.join(OUT, extra))
with safe_open(os.path.join(OUT, "model.safetensors"), "pt") as f:
    saved = {k: f.get_tensor(k) for k in f.keys()}
mapped = dict(kv for n, p in model.named_parameters() for kv in checkpoint_names(n, p.detach()))
assert sorted(saved) == sorted(mapped), set(saved) ^ set(mapped)
for k, v in mapped.items():
    assert saved[k].dtype == torch.float32 and torch.equal(saved[k], v), k

# Forward and backward of the reference batch.
out, probs, gap0 = forward()
model.zero_grad()
out.loss.backward()
grads = {k: v.clone() for n, p in model.named_parameters() for k, v in checkpoint_names(n, p.grad.detach())}
counts = []
for l in range(L):
    idx = probs[l].topk(K, dim=-1).indices.reshape(B, S, K)
    c = torch.zeros(E)
    for b in range(B):
        for t in range(S):
            if valid[b, t]:
                c.index_add_(0, idx[b, t], torch.ones(K))
    counts.append(c)
    assert float(c.sum()) == K * n_valid

# The loaded checkpoint is the model that produced the reference.
reloaded = Qwen3MoeForCausalLM.from_pretrained(OUT, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
with torch.no_grad():
    assert torch.equal(reloaded(input_ids=tokens).logits, out.logits.detach()), "reloaded checkpoint differs"

# N AdamW steps on the same batch; weight decay on matrices (rank >= 2) only.
params = list(model.parameters())
opt = torch.optim.AdamW(
    [{"params": [p for p in params if p.ndim >= 2], "weight_decay": ADAMW["weightDecay"]}, {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
    lr=ADAMW["lr"],
    betas=(ADAMW["beta1"], ADAMW["beta2"]),
    eps=ADAMW["eps"],
    foreach=False,
)
losses, gaps = [], [gap0]
for step in range(N_STEPS):
    o, _, gap = forward()
    gaps.append(gap)
    opt.zero_grad()
    o.loss.backward()
    losses.append(o.loss.item())
    opt.step()
with torch.no_grad():
    after, _, gap = forward()
    gaps.append(gap)
assert losses[0] == out.loss.item()

tensors = {
    "tokens": tokens.to(torch.int32),
    "mask": mask,
    "valid": valid,
    "logits": out.logits.detach().float().contiguous(),
    "loss": out.loss.detach().reshape(1),
    **{f"grad.{k}": v.contiguous() for k, v in grads.items()},
    **{f"router_probs.{l}": probs[l].contiguous() for l in range(L)},
    **{f"counts.{l}": counts[l] for l in range(L)},
    "adamw_losses": torch.tensor(losses, dtype=torch.float32),
    "adamw_loss_after": after.loss.detach().reshape(1),
}
meta = {
    "magic": "moe-trainer-reference",
    "version": "1",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "adamw": json.dumps(ADAMW),
    "adamw_steps": str(N_STEPS),
    "min_topk_gap": f"{min(gaps):.3e}",
    "tokens": "I32 (B, S) input ids; the test reads B from here",
    "mask": "U8 (B, S): mask[b, t] = 0 removes token t as a target (HF labels -100)",
    "valid": "U8 (B, S): position t counts iff t < S-1 and mask[b, t+1] = 1",
    "loss": "mean cross-entropy over valid positions",
    "grad.<name>": "gradient of `loss` under the model.safetensors name",
    "router_probs.<l>": "(B*S, E) softmax of the router logits of layer l, fp32, every position",
    "counts.<l>": "(E) top-k picks of layer l over valid positions, summed over sequences",
    "adamw_losses": "loss before each AdamW step (torch.optim.AdamW, decay on rank >= 2)",
    "adamw_loss_after": "loss after the last AdamW step",
}
write_sorted(os.path.join(OUT, "reference.safetensors"), save(tensors, metadata=meta))

sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT))}
total = sum(sizes.values())
assert total < MAX_FIXTURE_BYTES, f"fixture is {total} bytes"
print(f"torch {torch.__version__}, transformers {transformers.__version__}; wrote {os.path.normpath(OUT)}")
print(f"  files: {sizes} = {total} bytes")
print(f"  valid targets {n_valid}, loss {out.loss.item():.6f}, AdamW losses {[round(x, 6) for x in losses]}, after {after.loss.item():.6f}")
print(f"  expert counts {[c.tolist() for c in counts]}, min top-k gap over all forwards {min(gaps):.3e}")
sys.exit(0)
