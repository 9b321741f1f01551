"""Write the built-in example (simulated) as QIIME 2 artifacts for `make demo`.

    python -m q2_aam.demo OUTPUT_DIR
"""
import os
import sys

import biom
import qiime2

from ._examples import to_artifacts
from .core.simulate import simulate

DEMO_SIZE = dict(n_samples=160, n_asvs=150, seq_length=150, depth=2000, random_seed=42)


def main(output_dir):
    os.makedirs(output_dir, exist_ok=True)
    sim = simulate(**DEMO_SIZE)
    table, sequences, distances, metadata = to_artifacts(sim)
    # A held-out set of samples the demo predicts, never seen in training.
    test_ids = list(sim.counts.index[::5])
    train_ids = [s for s in sim.counts.index if s not in set(test_ids)]
    table.save(os.path.join(output_dir, "table.qza"))
    sequences.save(os.path.join(output_dir, "sequences.qza"))
    distances.save(os.path.join(output_dir, "unweighted-unifrac.qza"))
    metadata.save(os.path.join(output_dir, "metadata.tsv"))
    for name, ids in (("train", train_ids), ("test", test_ids)):
        subset = table.view(biom.Table).filter(ids, axis="sample", inplace=False)
        qiime2.Artifact.import_data("FeatureTable[Frequency]", subset).save(
            os.path.join(output_dir, f"{name}-table.qza"))
    print(f"Simulated {len(sim.counts)} samples x {sim.counts.shape[1]} ASVs into {output_dir}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
