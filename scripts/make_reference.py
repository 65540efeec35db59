"""Writes the end-to-end reference fixtures of crates/moe-core/tests/reference.rs (STYLE habit 7).

One tiny model per case below — each architecture the core implements, with the features that set
it apart — built by Hugging Face transformers (fp32, seeded, router aux loss off) and saved into
crates/moe-core/tests/fixtures/reference/<case>/ (config.json + weights), with reference.safetensors
beside it holding, for one batch (B=2, S=9) with a loss mask: the logits, the loss, every
parameter's gradient under its checkpoint name, per MoE layer the router probabilities and expert
counts, and the losses of 5 torch.optim.AdamW steps on that batch. The weights are written the ways
a user meets them:
  per_expert  save_pretrained's single model.safetensors (experts.{e}.* or Mixtral's w1/w2/w3)
  sharded     save_pretrained with a small max_shard_size: model.safetensors.index.json + shards
  fused       the model's state_dict as transformers 5 holds it in memory, experts fused into
              experts.gate_up_proj (E, 2F, C) and experts.down_proj (E, C, F)
Each case checks that transformers loads its own files back to the same logits.

The fixtures are committed because CI has no PyTorch. Regenerate (peers from scripts/install-peers.sh):

    .venv/bin/python scripts/make_reference.py

reference.safetensors (metadata: magic "moe-trainer-reference", version "2", torch, transformers,
adamw = our AdamWConfig JSON, moe_layers, and a description of every tensor):
  tokens           I32 (B, S)      input ids
  mask             U8  (B, S)      loss mask: mask[b, t] = 0 removes token t as a target; the HF
                                   labels are the tokens with -100 there (HF shifts them by one)
  valid            U8  (B, S)      position t predicts token t+1 and counts iff t < S-1 and mask[b, t+1]
  logits           F32 (B, S, V)
  loss             F32 (1)         mean cross-entropy over the valid positions (HF's loss)
  grad.<name>      F32             d loss / d parameter, <name> as save_pretrained names it
  router_probs.<l> F32 (B*S, E)    softmax of layer l's router logits, every position (fp32); MoE
                                   layers only
  counts.<l>       F32 (E)         layer l: how many valid positions picked each expert (top-k of
                                   the probs), summed over the sequences
  adamw_losses     F32 (N)         loss before each of N AdamW steps on the same batch (the first
                                   equals `loss`), lr 1e-2, betas (0.9, 0.95), eps 1e-8, weight decay
                                   0.1 on tensors of rank >= 2 only, no clipping
  adamw_loss_after F32 (1)         loss after the N-th step
"""
import copy
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers

# The versions the fixtures were made with; another version may route or round differently.
TORCH, TRANSFORMERS = "2.15.0", "5.24.0"
assert torch.__version__.split("+")[0] == TORCH, f"torch {torch.__version__}, want {TORCH}"
assert transformers.__version__ == TRANSFORMERS, f"transformers {transformers.__version__}, want {TRANSFORMERS}"

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "moe-core", "tests", "fixtures", "reference")
B, S, N_STEPS = 2, 9, 5
ADAMW = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weightDecay": 0.1}
# Every top-k choice (k-th vs (k+1)-th router probability) must be at least this far from a tie in
# every forward, so fp32 rounding differences cannot flip the routing. Each case searches seeds
# upwards from its own for the first that passes.
MIN_TOPK_GAP = 1e-4
MAX_FIXTURE_BYTES = 200_000

# What every case shares: small, untied, fp32, router aux loss off, eager kernels. initializer_range
# is larger than the default 0.02 so the routers are decisive (MIN_TOPK_GAP) and logits not flat.
COMMON = dict(
    vocab_size=61,
    hidden_size=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts_per_tok=2,
    tie_word_embeddings=False,
    max_position_embeddings=32,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    output_router_logits=False,
    router_aux_loss_coef=0.0,
    use_cache=False,
)

CASES = {
    # Qwen3-MoE: per-head q/k norms, renormalised top-k.
    "qwen3_moe": (Qwen3MoeConfig, "per_expert", 5, dict(num_hidden_layers=2, head_dim=4, num_experts=5, moe_intermediate_size=8, intermediate_size=8, norm_topk_prob=True)),
    # Qwen3-MoE with a dense layer among the MoE layers (mlp_only_layers).
    "qwen3_moe_dense": (Qwen3MoeConfig, "sharded", 11, dict(num_hidden_layers=3, head_dim=4, num_experts=4, moe_intermediate_size=6, intermediate_size=12, mlp_only_layers=[1], norm_topk_prob=False)),
    # Qwen2-MoE: a shared expert with its sigmoid gate, q/k/v biases, MoE in every 2nd layer
    # (decoder_sparse_step), a sliding window in the 1st and 3rd layers.
    "qwen2_moe": (
        Qwen2MoeConfig,
        "fused",
        21,
        dict(num_hidden_layers=4, num_experts=6, moe_intermediate_size=6, intermediate_size=10, shared_expert_intermediate_size=12, decoder_sparse_step=2, norm_topk_prob=False, use_sliding_window=True, sliding_window=4, max_window_layers=3),
    ),
    # OLMoE: q/k norms over the whole projection, no renormalisation.
    "olmoe": (OlmoeConfig, "sharded", 31, dict(num_hidden_layers=2, num_experts=6, intermediate_size=8, norm_topk_prob=False, eos_token_id=None)),
    # Mixtral: block_sparse_moe names, always renormalised, a sliding window shorter than S.
    "mixtral": (MixtralConfig, "per_expert", 41, dict(num_hidden_layers=2, num_local_experts=5, intermediate_size=8, sliding_window=4)),
}

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def read_folder(d):
    """Every tensor of every .safetensors file in folder d."""
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as st:
                out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def as_checkpoint(model, values):
    """values (parameter name -> tensor) under the names save_pretrained writes: transformers' own
    conversion (fused experts split per expert, Mixtral's block_sparse_moe names) decides."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in clone.named_parameters():
            p.copy_(values[n])
    with tempfile.TemporaryDirectory() as tmp:
        clone.save_pretrained(tmp)
        return read_folder(tmp)


def write_sorted(path, data):
    """Writes safetensors bytes with the JSON header's keys sorted (safetensors orders its metadata
    at random), so a regenerated fixture is byte-identical to the committed one."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + data[8 + n :])


class Case:
    """One architecture's model, batch and forward (with the routers' probabilities captured)."""

    def __init__(self, config_class, seed, fields):
        torch.manual_seed(seed)
        self.cfg = config_class(**COMMON, **fields, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32)
        self.model = AutoModelForCausalLM.from_config(self.cfg).float().train()
        self.E, self.K = (getattr(self.cfg, "num_experts", None) or self.cfg.num_local_experts), self.cfg.num_experts_per_tok
        self.moe_layers = [l for l, layer in enumerate(self.model.model.layers) if hasattr(layer.mlp, "experts")]
        self.tokens = torch.randint(0, self.cfg.vocab_size, (B, S), generator=torch.Generator().manual_seed(seed + 1))
        self.mask = torch.ones(B, S, dtype=torch.uint8)
        self.mask[0, 4] = 0  # position 3 of sequence 0 has no target
        self.mask[1, 7] = 0  # position 6 of sequence 1 has no target
        self.mask[1, 0] = 0  # the first token is never a target: no effect
        self.labels = self.tokens.clone()
        self.labels[self.mask == 0] = -100
        self.valid = torch.zeros(B, S, dtype=torch.uint8)
        self.valid[:, :-1] = self.mask[:, 1:]
        self.n_valid = int(self.valid.sum())
        # Router logits of every MoE layer, captured from its gate (the router).
        self.captured = {}
        for l in self.moe_layers:
            self.model.model.layers[l].mlp.gate.register_forward_hook(lambda mod, inp, out, l=l: self.captured.__setitem__(l, out[0].detach().float()))

    def forward(self):
        """The loss on the batch (HF's shifted, -100-ignoring mean CE), the routers' probabilities
        per MoE layer, and the smallest top-k gap."""
        self.captured.clear()
        out = self.model(input_ids=self.tokens, labels=self.labels, use_cache=False)
        # Our definition, computed independently: mean CE over valid positions.
        lp = torch.log_softmax(out.logits.float()[:, :-1], dim=-1)
        nll = -lp.gather(-1, self.tokens[:, 1:, None])[..., 0]
        ours = (nll * self.valid[:, :-1]).sum() / self.n_valid
        assert torch.allclose(out.loss, ours, rtol=1e-6, atol=1e-6), (out.loss.item(), ours.item())
        probs = {l: torch.softmax(self.captured[l], dim=-1) for l in self.moe_layers}
        top = [p.topk(self.K + 1, dim=-1).values for p in probs.values()]
        gap = min(float((t[:, self.K - 1] - t[:, self.K]).min()) for t in top)
        return out, probs, gap


def make(name, config_class, layout, seed, fields):
    # The first seed from `seed` whose routing stays clear of ties through every AdamW step.
    for seed in range(seed, seed + 100):
        case = Case(config_class, seed, fields)
        reference = run(case)
        if reference is not None:
            break
    else:
        sys.exit(f"{name}: no seed in 100 keeps every top-k choice {MIN_TOPK_GAP} from a tie")
    tensors, meta, model0 = reference
    out_dir = os.path.join(ROOT, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    # The weights as the user meets them (see the header), from the model before the AdamW steps.
    if layout == "fused":
        model0.config.save_pretrained(out_dir)
        save_file({k: v.contiguous() for k, v in model0.state_dict().items()}, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        assert any(k.endswith("experts.gate_up_proj") for k in read_folder(out_dir)), "not fused"
    else:
        model0.save_pretrained(out_dir, max_shard_size="20KB" if layout == "sharded" else "50GB")
        has_index = os.path.exists(os.path.join(out_dir, "model.safetensors.index.json"))
        assert has_index == (layout == "sharded"), f"{name}: {layout} but index.json present = {has_index}"
    for extra in ["generation_config.json"]:
        if os.path.exists(os.path.join(out_dir, extra)):
            os.remove(os.path.join(out_dir, extra))
    # transformers reads its own files back to the model that produced the reference.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    # (The same up to summation order: a reloaded fused bank may be laid out differently in memory.)
    with torch.no_grad():
        reload_diff = float((reloaded(input_ids=case.tokens).logits - tensors["logits"]).abs().max())
    assert reload_diff < 1e-5, f"{name}: reloaded checkpoint differs by {reload_diff:.2e}"
    meta["seed"] = str(seed)
    meta["layout"] = layout
    write_sorted(os.path.join(out_dir, "reference.safetensors"), save(tensors, metadata=meta))
    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    total = sum(sizes.values())
    assert total < MAX_FIXTURE_BYTES, f"{name}: fixture is {total} bytes"
    losses = tensors["adamw_losses"].tolist()
    print(f"{name} ({config_class.model_type}, {layout}, seed {seed}): {len(sizes)} files, {total} bytes; reloaded by transformers: max |Δ logits| {reload_diff:.1e}")
    print(f"  valid targets {case.n_valid}, loss {tensors['loss'].item():.6f}, AdamW losses {[round(x, 6) for x in losses]}, after {tensors['adamw_loss_after'].item():.6f}")
    print(f"  MoE layers {case.moe_layers}, expert counts {[tensors[f'counts.{l}'].tolist() for l in case.moe_layers]}, min top-k gap {meta['min_topk_gap']}")


def run(case):
    """The reference tensors of one case, or None when some top-k choice comes near a tie."""
    model = case.model
    model0 = copy.deepcopy(model)
    out, probs, gap0 = case.forward()
    if gap0 <= MIN_TOPK_GAP:
        return None
    model.zero_grad()
    out.loss.backward()
    grads = as_checkpoint(model, {n: p.grad.detach() for n, p in model.named_parameters()})
    assert set(grads) == set(as_checkpoint(model, {n: p.detach() for n, p in model.named_parameters()}))
    counts = {}
    for l in case.moe_layers:
        idx = probs[l].topk(case.K, dim=-1).indices.reshape(B, S, case.K)
        c = torch.zeros(case.E)
        for b in range(B):
            for t in range(S):
                if case.valid[b, t]:
                    c.index_add_(0, idx[b, t], torch.ones(case.K))
        counts[l] = c
        assert float(c.sum()) == case.K * case.n_valid

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
    for _ in range(N_STEPS):
        o, _, gap = case.forward()
        gaps.append(gap)
        opt.zero_grad()
        o.loss.backward()
        losses.append(o.loss.item())
        opt.step()
    with torch.no_grad():
        after, _, gap = case.forward()
        gaps.append(gap)
    if min(gaps) <= MIN_TOPK_GAP:
        return None
    assert losses[0] == out.loss.item()

    tensors = {
        "tokens": case.tokens.to(torch.int32),
        "mask": case.mask,
        "valid": case.valid,
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().reshape(1),
        **{f"grad.{k}": v.contiguous() for k, v in grads.items()},
        **{f"router_probs.{l}": probs[l].contiguous() for l in case.moe_layers},
        **{f"counts.{l}": counts[l] for l in case.moe_layers},
        "adamw_losses": torch.tensor(losses, dtype=torch.float32),
        "adamw_loss_after": after.loss.detach().reshape(1),
    }
    meta = {
        "magic": "moe-trainer-reference",
        "version": "2",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model_type": case.cfg.model_type,
        "adamw": json.dumps(ADAMW),
        "adamw_steps": str(N_STEPS),
        "moe_layers": json.dumps(case.moe_layers),
        "min_topk_gap": f"{min(gaps):.3e}",
        "tokens": "I32 (B, S) input ids; the test reads B from here",
        "mask": "U8 (B, S): mask[b, t] = 0 removes token t as a target (HF labels -100)",
        "valid": "U8 (B, S): position t counts iff t < S-1 and mask[b, t+1] = 1",
        "loss": "mean cross-entropy over valid positions",
        "grad.<name>": "gradient of `loss` under the name save_pretrained writes",
        "router_probs.<l>": "(B*S, E) softmax of the router logits of MoE layer l, fp32, every position",
        "counts.<l>": "(E) top-k picks of MoE layer l over valid positions, summed over sequences",
        "adamw_losses": "loss before each AdamW step (torch.optim.AdamW, decay on rank >= 2)",
        "adamw_loss_after": "loss after the last AdamW step",
    }
    return tensors, meta, model0


print(f"torch {torch.__version__}, transformers {transformers.__version__}; writing {os.path.normpath(ROOT)}")
wanted = sys.argv[1:] or list(CASES)
for name in wanted:
    make(name, *CASES[name])
stale = set(os.listdir(ROOT)) - set(CASES)
assert not stale, f"folders of no case in {ROOT}: {stale}"
