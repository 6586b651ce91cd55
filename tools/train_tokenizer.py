"""Train the small tokenizer that ships in k25ref/assets/tokenizer, and make its data split.

    python tools/train_tokenizer.py split tinyshakespeare.txt --out data/tinyshakespeare
    python tools/train_tokenizer.py train data/tinyshakespeare/train.txt --vocab-size 4096 \\
        --out k25ref/assets/tokenizer --heldout data/tinyshakespeare/heldout.txt

`split` writes train.txt (the first 90% of the chars, extended to the end of that line) and
heldout.txt (the rest). `train` learns vocab_size - 256 byte-level BPE ranks with the Kimi
pre-tokenisation regex, writes tiktoken.model + tokenizer_config.json (the 256 K2.5 special ids
follow the ranks), then reports the training time and, with --heldout, bytes per token.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

from k25ref.bpe_train import train_tokenizer  # noqa: E402
from k25ref.tokenizer import Tokenizer  # noqa: E402


def split(source: Path, out: Path, train_fraction: float) -> None:
    """Cut at the first line end at or after train_fraction of the text."""
    text = source.read_text(encoding="utf-8")
    cut = text.find("\n", int(len(text) * train_fraction)) + 1 or len(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(text[:cut], encoding="utf-8")
    (out / "heldout.txt").write_text(text[cut:], encoding="utf-8")
    print(f"{source}: {len(text):,} chars -> train.txt {cut:,} + heldout.txt {len(text) - cut:,}")


def train(corpus: Path, vocab_size: int, out: Path, heldout) -> None:
    text = corpus.read_text(encoding="utf-8")
    start = time.perf_counter()
    ranks = train_tokenizer(text, vocab_size, out)
    seconds = time.perf_counter() - start
    print(f"trained {len(ranks):,} ranks + 256 special ids on {len(text):,} chars in {seconds:.1f} s -> {out}")
    for name in ("tiktoken.model", "tokenizer_config.json"):
        print(f"  {name}: {(out / name).stat().st_size:,} bytes")
    if heldout:
        tok = Tokenizer.from_pretrained(out)
        held = heldout.read_text(encoding="utf-8")
        ids = tok.encode(held)
        print(f"{heldout}: {len(held.encode('utf-8')):,} bytes -> {len(ids):,} tokens = "
              f"{len(held.encode('utf-8')) / len(ids):.3f} bytes/token")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("split", help="cut a text file into train.txt and heldout.txt at a line end")
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-fraction", type=float, default=0.9)
    p = commands.add_parser("train", help="train a byte-level BPE and write a hub-style tokenizer folder")
    p.add_argument("corpus", type=Path)
    p.add_argument("--vocab-size", type=int, default=4096, help="total ids, the 256 special ids included")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--heldout", type=Path, help="text to report bytes/token on")
    args = parser.parse_args(argv)
    if args.command == "split":
        split(args.source, args.out, args.train_fraction)
    else:
        train(args.corpus, args.vocab_size, args.out, args.heldout)


if __name__ == "__main__":
    main()
