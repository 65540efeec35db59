"""The tokenizer peer of `npm run bench`: Hugging Face `tokenizers` from Python, `encode_batch` over a
JSONL file's texts with the given tokenizer.json, the texts read into memory first (only encoding is
timed). Threads: RAYON_NUM_THREADS. Prints one JSON object.
Usage: .venv/bin/python benches/peer_tokenizers.py tokenizer.json texts.jsonl"""
import json
import sys
import time

import tokenizers

tok = tokenizers.Tokenizer.from_file(sys.argv[1])
texts = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
t0 = time.perf_counter()
n = 0
for i in range(0, len(texts), 1000):
    n += sum(len(e.ids) for e in tok.encode_batch(texts[i : i + 1000], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": n, "bytes": sum(len(t.encode()) for t in texts), "tokenizers": tokenizers.__version__}))
