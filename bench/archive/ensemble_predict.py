"""Prediction time of a frozen-encoder ensemble on oral-dev's 406 held-out samples:
ASVs embedded once per batch (members share the frozen encoder) against once
per member. Both ways run alternately, `--repeats` times, on one thread; medians.

    OMP_NUM_THREADS=1 .venv/bin/python bench/archive/ensemble_predict.py --members 10

The members are the pretrained encoder of bench/out/oral-encoder with 6-mer
embeddings and a binned head (64 bins), as a fit makes them; their untrained
head weights do not change the cost.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

# Archived study: bench/ (oral.py, oral_supervised.py) and this folder are importable.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import oral  # noqa: E402

from q2_aam._inputs import build_sample_set  # noqa: E402
from q2_aam.core.bundle import ModelBundle  # noqa: E402
from q2_aam.core.config import ModelConfig  # noqa: E402
from q2_aam.core.data import split_indices  # noqa: E402
from q2_aam.core.model import build_model  # noqa: E402
from q2_aam.core.train import predict_outputs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoder-dir", default="bench/out/oral-encoder")
    args = parser.parse_args()
    torch.set_num_threads(1)

    table, metadata, sequences = oral.load_table(), oral.load_metadata(), oral.load_sequences()
    ids = [s for s in table.ids(axis="sample") if s in metadata.index]
    _, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(0))
    encoder = ModelBundle.load(args.encoder_dir)
    cfg = ModelConfig.from_dict({**encoder.model_config.to_dict(), "task": "regressor",
                                 "n_outputs": 64, "kmer_size": 6,
                                 "ensemble_size": args.members})
    data = build_sample_set(table.filter([ids[i] for i in test_idx], axis="sample",
                                         inplace=False), sequences, cfg.max_bp, cfg.asv_limit)
    torch.manual_seed(0)
    model = build_model(cfg)
    encoder_state = {k: v for k, v in encoder.state_dict.items() if k.startswith("asv_")}
    model.load_state_dict({**model.state_dict(),
                           **{f"members.{m}.{k}": v for m in range(args.members)
                              for k, v in encoder_state.items()}})
    assert model.shared_asv_encoder
    seconds = {"once per batch": [], "once per member": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, shared in (("once per batch", True), ("once per member", False)):
            model.shared_asv_encoder = shared
            start = time.perf_counter()
            with torch.no_grad():
                outputs[name] = predict_outputs(model, data, np.arange(len(data)), 64,
                                                 torch.device("cpu"))
            seconds[name].append(time.perf_counter() - start)
    assert np.array_equal(outputs["once per batch"]["target"],
                          outputs["once per member"]["target"])
    print(json.dumps({"members": args.members, "samples": len(data),
                      **{f"median seconds, ASVs embedded {name}": round(float(np.median(v)), 2)
                         for name, v in seconds.items()}}))


if __name__ == "__main__":
    main()
