"""Reference models on the feature table itself (no sequences), on the split of
oral_supervised.py: how far models that see each ASV as its own feature get.

    OMP_NUM_THREADS=1 .venv/bin/python bench/oral_table_baselines.py [--seed S --out PATH]

- mlp: one hidden layer (256, GELU) on log relative abundances (0 for absent
  ASVs, shifted so present ones are positive), dropout 0.3 on inputs and hidden
  units, l1 loss on the standardized age, AdamW lr 1e-3, 100 epochs, batch 32.
- knn: k nearest training samples by Jaccard distance of ASV presence, mean age.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402
from oral_supervised import regression_report, relative_frequencies  # noqa: E402

from q2_aam.core.data import split_indices  # noqa: E402

PSEUDO_FREQUENCY = 1e-3


def mlp(train_x, train_y, test_x, hidden=256, dropout=0.3, epochs=100, lr=1e-3, seed=0):
    torch.manual_seed(seed)
    mean, std = train_y.mean(), train_y.std()
    x = torch.tensor(train_x, dtype=torch.float32)
    y = torch.tensor((train_y - mean) / std, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(x.shape[1], hidden),
                              torch.nn.GELU(), torch.nn.Dropout(dropout),
                              torch.nn.Linear(hidden, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), 32):
            rows = order[start:start + 32]
            loss = (net(x[rows]).squeeze(-1) - y[rows]).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        return net(torch.tensor(test_x, dtype=torch.float32)).squeeze(-1).numpy() * std + mean


def main():
    import argparse
    from sklearn.neighbors import KNeighborsRegressor
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split")
    parser.add_argument("--out", default="bench/out/oral_table_baselines.json")
    args = parser.parse_args()
    table, metadata = oral.load_table(), oral.load_metadata()
    ids = [s for s in table.ids(axis="sample") if s in metadata.index]
    train_idx, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(args.seed))
    train_ids, test_ids = [ids[i] for i in train_idx], [ids[i] for i in test_idx]
    train_x, test_x = relative_frequencies(table, train_ids), relative_frequencies(table, test_ids)
    train_y = metadata.loc[train_ids, "age"].to_numpy()
    test_y = metadata.loc[test_ids, "age"].to_numpy()
    studies = metadata.loc[test_ids, "study"].astype(str).to_numpy()

    def log_abundance(x):
        return np.log(x + PSEUDO_FREQUENCY) - np.log(PSEUDO_FREQUENCY)

    results = {"mlp": mlp(log_abundance(train_x), train_y, log_abundance(test_x))}
    for k in (1, 3, 5, 10):
        knn = KNeighborsRegressor(k, metric="jaccard").fit(train_x > 0, train_y)
        results[f"knn_{k}"] = knn.predict(test_x > 0)
    report = {}
    for name, predicted in results.items():
        report[name] = regression_report(test_y, predicted, studies)
        print(name, json.dumps({k: round(v, 3) for k, v in report[name].items()
                                if k != "mae_by_study"}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
