"""Write the standard CLIP BPE tokenizer files (vocab.json, merges.txt) into resources/tokenizer.

    .venv/bin/python scripts/make_tokenizer.py [OUT]    # OUT: another folder (default: studio.paths.TOKENIZER_DIR)

The BPE merges come from the open-clip-torch wheel. open_clip itself cannot be imported here
(it needs torchvision), so the file is located with importlib and read directly.
Reproducible: the output depends only on that file.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

from studio.paths import TOKENIZER_DIR

N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 48894 -> vocabulary of 49408


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def find_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        sys.exit("open-clip-torch is not installed: pip install --no-deps open-clip-torch")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the CLIP tokenizer files")
    ap.add_argument("out", nargs="?", type=Path, default=TOKENIZER_DIR, help="output folder (default: %(default)s)")
    out: Path = ap.parse_args(argv).out
    lines = gzip.open(find_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    main()
