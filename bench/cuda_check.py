"""Run the core's whole path on a GPU and on the CPU, on simulated data, and
compare: pretraining, fits from scratch / frozen / fine-tuned (with k-mers and
ASV dropout), a classifier, saving and reloading on the CPU, and seed
determinism on the GPU. Needs no QIIME 2 (the core alone).

    python bench/cuda_check.py --out bench/out/cuda_check.json
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import scipy.sparse
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from q2_aam.core.bundle import ModelBundle  # noqa: E402
from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import SampleSet, split_indices  # noqa: E402
from q2_aam.core.metrics import classification_metrics, regression_metrics  # noqa: E402
from q2_aam.core.pretrain import pretrain  # noqa: E402
from q2_aam.core.simulate import simulate  # noqa: E402
from q2_aam.core.supervised import fit, predict  # noqa: E402

MODEL = dict(embedding_dim=64, attention_heads=4, attention_layers=2, max_bp=100, asv_limit=256)
FITS = {   # name: (task, use the encoder, freeze it, TrainConfig fields)
    "scratch_regressor": ("regressor", False, False, dict(learning_rate=1e-3)),
    "frozen_regressor": ("regressor", True, True, dict(regression_loss="l1")),
    "finetuned_regressor": ("regressor", True, False, dict(regression_loss="l1")),
    "frozen_classifier": ("classifier", True, True, {}),
}


def sample_set(sim, ids):
    counts = scipy.sparse.csr_matrix(sim.counts.loc[ids].to_numpy())
    data = SampleSet(counts, ids, list(sim.counts.columns), sim.sequences.to_dict(),
                     MODEL["max_bp"], MODEL["asv_limit"])
    data.distances = sim.unifrac.loc[ids, ids].to_numpy(dtype=np.float32)
    return data


def run(device, sim, train_ids, test_ids, epochs):
    train_data, test_data = sample_set(sim, train_ids), sample_set(sim, test_ids)
    common = dict(batch_size=16, device=device, random_seed=0, patience=epochs)
    start = time.perf_counter()
    encoder = pretrain(train_data, ModelConfig(**MODEL),
                       TrainConfig(epochs=epochs, learning_rate=1e-3, **common), log=lambda m: None)
    best = encoder.history.loc[encoder.history["epoch"] == encoder.info["best_epoch"]].iloc[0]
    report = {"pretrain_seconds": round(time.perf_counter() - start, 1),
              "pretrain_unifrac_r2": float(best["val/unifrac_r2"])}
    predictions = {}
    for name, (task, pretrained, freeze, extra) in FITS.items():
        column = "age" if task == "regressor" else "site"
        targets = sim.metadata.loc[train_ids, column].to_numpy()
        cfg = TrainConfig(**{**common, "epochs": epochs, "learning_rate": 3e-4,
                             "nuc_mask_ratio": 0.0, "asv_dropout": 0.5, **extra})
        start = time.perf_counter()
        bundle = fit(train_data, targets, task, ModelConfig(**MODEL, kmer_size=6), cfg,
                     encoder=encoder if pretrained else None, freeze_encoder=freeze,
                     log=lambda m: None)
        seconds = time.perf_counter() - start
        predicted, _ = predict(bundle, test_data, device=device)
        truth = sim.metadata.loc[test_ids, column].to_numpy()
        if task == "regressor":
            score = regression_metrics(truth, predicted.astype(float))
            score["mean_baseline_mae"] = float(np.abs(truth - targets.mean()).mean())
        else:
            score = classification_metrics(truth.astype(str), predicted.astype(str))
            values, counts = np.unique(targets, return_counts=True)
            score["majority_accuracy"] = float(np.mean(truth == values[counts.argmax()]))
        # Saved, reloaded and run on the CPU: what `predict` does on a laptop.
        with tempfile.TemporaryDirectory() as tmp:
            bundle.save(tmp)
            on_cpu, _ = predict(ModelBundle.load(tmp), test_data, device="cpu")
        if task == "regressor":
            score["reloaded_cpu_max_abs_diff"] = float(np.abs(on_cpu - predicted).max())
        else:
            score["reloaded_cpu_agreement"] = float(np.mean(on_cpu == predicted))
        score.update(seconds=round(seconds, 1), best_epoch=bundle.info["best_epoch"])
        report[name] = score
        predictions[name] = predicted
    return report, predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="bench/out/cuda_check.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA GPU: this check needs one.")
    sim = simulate(n_samples=240, n_asvs=150, seq_length=100, depth=1000, random_seed=0)
    ids = list(sim.counts.index)
    train_idx, test_idx = split_indices(len(ids), 0.25, np.random.default_rng(0))
    train_ids, test_ids = [ids[i] for i in train_idx], [ids[i] for i in test_idx]
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    cuda, cuda_predictions = run("cuda", sim, train_ids, test_ids, args.epochs)
    again, again_predictions = run("cuda", sim, train_ids, test_ids, args.epochs)
    cpu, cpu_predictions = run("cpu", sim, train_ids, test_ids, args.epochs)
    results.update(cuda=cuda, cpu=cpu)
    for name, (task, *_) in FITS.items():
        a, b, c = cuda_predictions[name], again_predictions[name], cpu_predictions[name]
        if task == "regressor":
            results[f"{name}_cuda_rerun_max_abs_diff"] = float(np.abs(a - b).max())
            results[f"{name}_cuda_cpu_correlation"] = float(np.corrcoef(a.astype(float),
                                                                        c.astype(float))[0, 1])
        else:
            results[f"{name}_cuda_rerun_agreement"] = float(np.mean(a == b))
            results[f"{name}_cuda_cpu_agreement"] = float(np.mean(a == c))
    print(json.dumps(results, indent=2))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
