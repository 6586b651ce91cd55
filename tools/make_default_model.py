"""Write the embedded default model into k25ref/assets/default (a tiny random checkpoint + the bundled
tokenizer) until the trained nano model replaces it. Deterministic: same seed, same bytes."""
import os
import shutil
import sys

from k25ref.make_tiny import make_tiny

OUT = os.path.join(os.path.dirname(__file__), "..", "k25ref", "assets", "default")

if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    make_tiny(OUT, "tiny", seed=int(sys.argv[1]) if len(sys.argv) > 1 else 0, shards=1)
    print("wrote", os.path.normpath(OUT), sorted(os.listdir(OUT)))
