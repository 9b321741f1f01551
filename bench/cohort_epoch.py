"""One whole pretraining epoch on a large simulated cohort, UniFrac from the tree.

Runs the core's `pretrain` (the training engine, the held-out UniFrac fit over
at most 2,000 validation samples, early-stopping bookkeeping) for one epoch on
`simulate_cohort` data with `unifrac.TreeDistances` as the distance source, so
no N x N matrix exists. Reports peak RSS, and RSS sampled through the run, so
that growth over the epoch's steps (not only its first few) would show.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cohort_epoch.py --n-samples 100000 \
        --n-asvs 10000 --batch-size 256 --out bench/out/cohort_epoch_100k.json
"""
import argparse
import json
import os
import threading
import time

from cohort_scaling import peak_rss_mb


def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class RSSSampler(threading.Thread):
    """(seconds since start, RSS in MB) every `every` seconds, until stopped."""

    def __init__(self, every):
        super().__init__(daemon=True)
        self.every, self.samples, self.halt = every, [], threading.Event()
        self.start_time = time.perf_counter()

    def run(self):
        while not self.halt.wait(self.every):
            self.samples.append((round(time.perf_counter() - self.start_time, 1),
                                 round(rss_mb())))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=100000)
    parser.add_argument("--n-asvs", type=int, default=10000, help="tips of the tree")
    parser.add_argument("--seq-length", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--metric", choices=["unweighted", "weighted_normalized"],
                        default="unweighted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()

    import torch
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.data import SampleSet
    from q2_aam.core.pretrain import pretrain
    from q2_aam.core.simulate import simulate_cohort
    from q2_aam.core.unifrac import TreeDistances

    sampler = RSSSampler(args.rss_every)
    sampler.start()
    result = {"settings": vars(args), "torch_threads": torch.get_num_threads()}
    start = time.perf_counter()
    cohort = simulate_cohort(n_samples=args.n_samples, n_asvs=args.n_asvs,
                             asvs_per_sample=(50, 300), seq_length=args.seq_length,
                             random_seed=args.seed)
    model_cfg = ModelConfig(embedding_dim=args.embedding_dim, attention_heads=args.heads,
                            attention_layers=args.layers)
    data = SampleSet(cohort.counts, cohort.sample_ids, cohort.feature_ids,
                     cohort.sequences.to_dict(), model_cfg.max_bp, model_cfg.asv_limit)
    data.distances = TreeDistances(cohort.tree, data.feature_ids, data.counts, args.metric)
    result.update(nonzero_counts=int(cohort.counts.nnz), setup_s=time.perf_counter() - start,
                  rss_after_setup_mb=rss_mb())
    del cohort

    start = time.perf_counter()
    encoder = pretrain(data, model_cfg, TrainConfig.preset(
        "pretrain", epochs=1, batch_size=args.batch_size, random_seed=args.seed, device="cpu"),
        log=print)
    sampler.halt.set()
    row = encoder.history.iloc[-1]
    result.update(epoch_s=time.perf_counter() - start, peak_rss_mb=peak_rss_mb(),
                  val_unifrac_r2=float(row["val/unifrac_r2"]),
                  train_loss=float(row["train/loss"]), rss_samples=sampler.samples)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
