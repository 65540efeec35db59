"""Loads a moe-trainer checkpoint with Hugging Face transformers (AutoModelForCausalLM: the class of
its config's model_type) and compares its logits with ours on the same batch.
Usage: python scripts/hf_compat.py DIR (written by hf-export.ts)."""
import json
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

d = sys.argv[1]
meta = json.load(open(f"{d}/ours.json"))
ours = np.fromfile(f"{d}/ours_logits.f32", dtype="<f4").reshape(meta["batch"], meta["seq"], -1)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
ids = torch.tensor(meta["tokens"], dtype=torch.long).reshape(meta["batch"], meta["seq"])
with torch.no_grad():
    theirs = model(input_ids=ids).logits.float().numpy()
diff = float(np.abs(theirs - ours).max())
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {type(model).__name__}")
print(f"logits {theirs.shape}: max |ours - transformers| = {diff:.3e} (max |logit| = {float(np.abs(theirs).max()):.3f})")
sys.exit(0 if diff < 1e-4 else 1)
