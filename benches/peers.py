"""The peers of `npm run bench`, measured on the same machine with the same thread count:
Hugging Face transformers' Qwen3MoeSparseMoeBlock (eager), a plain PyTorch grouped MoE layer
(tokens sorted by expert, one matmul per expert), the large-matrix GEMM of PyTorch, and a training
step of Qwen3MoeForCausalLM + torch.optim.AdamW. Prints one JSON object per measurement.
Usage: THREADS=2 .venv/bin/python benches/peers.py"""
import json
import os
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)


def median_time(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2]


def emit(**kw):
    print(json.dumps(kw), flush=True)


class GroupedMoe(torch.nn.Module):
    """Router -> softmax -> top-k -> renormalise -> tokens sorted by expert -> per-expert SwiGLU."""

    def __init__(self, d, f, e, k):
        super().__init__()
        self.k, self.e = k, e
        self.gate = torch.nn.Linear(d, e, bias=False)
        self.w_gate = torch.nn.Parameter(torch.randn(e, f, d) * 0.02)
        self.w_up = torch.nn.Parameter(torch.randn(e, f, d) * 0.02)
        self.w_down = torch.nn.Parameter(torch.randn(e, d, f) * 0.02)

    def forward(self, x):
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float)
        w, idx = torch.topk(probs, self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.e).tolist()
        xs = x[order // self.k]
        outs, at = [], 0
        for i, n in enumerate(counts):
            if n:
                h = xs[at:at + n]
                outs.append(F.linear(F.silu(F.linear(h, self.w_gate[i])) * F.linear(h, self.w_up[i]), self.w_down[i]))
            at += n
        ys = torch.cat(outs) * w.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, order // self.k, ys)


def layer(impl, t, d, f, e, k):
    if impl == "hf-eager":
        cfg = Qwen3MoeConfig(hidden_size=d, moe_intermediate_size=f, num_experts=e, num_experts_per_tok=k, norm_topk_prob=True)
        block = Qwen3MoeSparseMoeBlock(cfg)
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.02)
        x = torch.randn(1, t, d, requires_grad=True)
    else:
        block = GroupedMoe(d, f, e, k)
        x = torch.randn(t, d, requires_grad=True)
    dout = torch.randn_like(x)
    fwd = median_time(lambda: block(x))

    def fwd_bwd():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).backward(dout)

    total = median_time(fwd_bwd)
    return fwd, total - fwd


def main():
    emit(kind="peer-info", torch=torch.__version__, transformers=transformers.__version__, threads=torch.get_num_threads())
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    s = median_time(lambda: a @ b.T)
    emit(kind="gemm", impl="torch", n=n, seconds=s, gflops=2 * n**3 / s / 1e9)
    for group, (t, d, f, e, k) in [("main", (4096, 512, 256, 16, 4)), ("fine", (4096, 512, 128, 64, 8))]:
        for impl in ("hf-eager", "torch-grouped"):
            fwd, bwd = layer(impl, t, d, f, e, k)
            emit(kind="layer", impl=impl, group=group, T=t, d=d, F=f, E=e, K=k, forward=fwd, backward=bwd)
    # The demo model's training step (no balance loss in the peer: output_router_logits is off).
    demo = json.loads(os.environ["DEMO_MODEL"])
    batch, seq = int(os.environ["BATCH"]), int(os.environ["SEQ"])
    cfg = Qwen3MoeConfig(**{k: v for k, v in demo.items() if k != "seed"}, attn_implementation="eager")
    model = Qwen3MoeForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    s = median_time(step, reps=8)
    emit(kind="train-step", impl="hf-eager+AdamW", seconds=s, tokens=batch * seq, params=sum(p.numel() for p in model.parameters()))


main()
