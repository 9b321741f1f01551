"""Issue 6, item 3: the smooth bounded UniFrac mapping against a clipped one.

smooth (the model's):  prediction = 1 - exp(-d)
clipped:               prediction = clamp(d, 0, 1)   (MSE on clipped predictions)

where d is the learned-scale RMS distance between two samples' distance
embeddings. The clipped variant is swapped in for this experiment only; every
other setting matches bench/archive/training_controls.py (embedding 32, 1+1 layers,
AdamW 3e-3, warmup-cosine, 6 epochs, nuc_penalty 0.2), two seeds each.

    OMP_NUM_THREADS=1 .venv/bin/python bench/archive/distance_mapping.py --out bench/out/distance_mapping.json
"""
import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

# Archived study: bench/ (oral.py, oral_supervised.py) and this folder are importable.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def clipped_distance(distance_embeddings):
    import torch
    diff = distance_embeddings[:, None, :] - distance_embeddings[None, :, :]
    rms = torch.sqrt(diff.pow(2).mean(-1) + 1e-8)
    return rms.clamp(0.0, 1.0)


def run(args):
    mapping, seed, epochs = args
    if mapping == "clipped":
        # Every module that imported the mapping by name gets the variant.
        import q2_aam.core.losses as losses
        import q2_aam.core.pretrain as pretrain_module
        losses.predicted_distance = clipped_distance
        pretrain_module.predicted_distance = clipped_distance
    import training_controls
    row = training_controls.run_one(("adamw", "warmup_cosine", 3e-3, epochs, seed, 0.2))
    return {"mapping": mapping, "seed": seed, **row}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="bench/out/distance_mapping.json")
    args = parser.parse_args()
    jobs = [(m, s, args.epochs) for s in args.seeds for m in ("smooth", "clipped")]
    rows = []
    with ProcessPoolExecutor(2) as pool:
        for row in pool.map(run, jobs):
            print(row, flush=True)
            rows.append(row)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
