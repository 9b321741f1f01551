"""Load ../shared/data/oral-dev (never copied into the project)."""
import gzip
import os

import numpy as np
import pandas as pd

# Studies where repeated samples of a few hosts make age a look-up; "six studies"
# results leave them out.
LOOKUP_STUDIES = frozenset({"qiita-550", "qiita-2202", "qiita-11052"})

ORAL_DIR = os.environ.get("ORAL_DEV", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data", "oral-dev"))


def path(name):
    p = os.path.join(ORAL_DIR, name)
    if not os.path.exists(p):
        raise SystemExit(f"{p} not found: set ORAL_DEV to the oral-dev directory.")
    return p


def load_table():
    import biom
    return biom.load_table(path("table-hashed.biom"))


def load_sequences():
    sequences, name = {}, None
    with open(path("sequences.fasta")) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                name = line[1:].split()[0]
            elif line:
                sequences[name] = sequences.get(name, "") + line
    return pd.Series(sequences)


def load_unifrac():
    import skbio
    with gzip.open(path("unweighted-unifrac.tsv.gz"), "rt") as fh:
        frame = pd.read_csv(fh, sep="\t", index_col=0)
    frame.index = frame.index.astype(str)
    return skbio.DistanceMatrix(frame.to_numpy(dtype=np.float64), ids=list(frame.index))


def jaccard(table):
    """Jaccard distances of ASV presence between the table's samples."""
    import skbio
    from scipy.spatial.distance import pdist, squareform
    present = table.matrix_data.T.toarray() > 0
    return skbio.DistanceMatrix(squareform(pdist(present, metric="jaccard")),
                                ids=list(table.ids(axis="sample")))


def load_metadata():
    frame = pd.read_csv(path("metadata.tsv"), sep="\t", index_col=0, comment=None)
    frame = frame[~frame.index.str.startswith("#")]
    frame.index = frame.index.astype(str)
    frame["age"] = frame["age"].astype(float)
    return frame


def sample_set(table, sequences, sample_ids, model_cfg):
    """The samples `sample_ids` of `table` as a SampleSet, read as `model_cfg` reads them."""
    from q2_aam.core.data import SampleSet
    subset = table.filter(list(sample_ids), axis="sample", inplace=False)
    return SampleSet.from_biom(subset, sequences, model_cfg.max_bp, model_cfg.asv_limit)


def distances(matrix, data):
    """The [n, n] float32 distances of SampleSet `data`'s samples, in its order,
    from the skbio DistanceMatrix `matrix` (what `data.distances` takes)."""
    return matrix.filter(data.sample_ids).data.astype(np.float32)
