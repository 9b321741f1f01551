"""Training from files on disk, without QIIME 2: for clusters, under torchrun.

    torchrun --nnodes N --nproc_per_node G -m q2_aam.core.cli pretrain \\
        --table table.biom --sequences dna.fasta --distances unifrac.tsv \\
        --output encoder_dir [options]
    torchrun ... -m q2_aam.core.cli fit-regressor --metadata m.tsv --column age \\
        [--encoder encoder_dir] ...  (and fit-classifier)

Every process reads the same files (on a cluster: from a shared file system)
and joins the process group that torchrun describes in the environment; the
engine then trains data-parallel (distributed.py), and rank 0 writes the model
directory, which `qiime tools import --type 'AAMModel[Encoder]'` (or
Regressor/Classifier) accepts as it is. Started without torchrun, it trains in
this one process.

Inputs: a BIOM table (read with the biom-format package, imported only here),
a FASTA file of the features' sequences, and the UniFrac targets as a
tab-separated distance matrix (the lsmat layout of
`qiime tools export` of a DistanceMatrix: a header of the sample IDs, then one
row per sample) or a rooted newick tree (read with scikit-bio). The options are
the QIIME 2 actions' parameters under the core's names; what is not given comes
from the core's preset for the command (config.py), as in the actions.
"""
import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
from dataclasses import replace

from .config import (OPTIMIZERS, REGRESSION_LOSS_CHOICES, SCHEDULERS, ModelConfig,
                     TrainConfig, draw_seed)
from .inputs import few_ids
from .unifrac import METRICS

COMMANDS = {"pretrain": "encoder", "fit-regressor": "regressor",
            "fit-classifier": "classifier"}
# The options of each command, as the QIIME 2 action of the same name offers them.
ARCHITECTURE = ("embedding_dim", "attention_heads", "attention_layers", "max_bp", "asv_limit")
MODEL_OPTIONS = {"pretrain": ARCHITECTURE,
                 "fit": ("kmer_size", "ensemble_size", *ARCHITECTURE)}
TRAINING = ("batch_size", "epochs", "learning_rate", "weight_decay", "optimizer", "scheduler",
            "warmup", "patience", "min_epoch_steps", "validation_fraction", "max_grad_norm",
            "gradient_accumulation_steps", "nuc_mask_ratio", "nuc_penalty", "unifrac_penalty",
            "zero_distance_weight", "device", "random_seed", "tensorboard_dir")
TRAIN_OPTIONS = {"pretrain": TRAINING,
                 "fit-regressor": ("asv_dropout", *TRAINING, "regression_loss"),
                 "fit-classifier": ("asv_dropout", *TRAINING)}
CHOICES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
           "regression_loss": REGRESSION_LOSS_CHOICES, "device": ("auto", "cpu", "cuda")}
# Choices of the QIIME 2 actions that are not configuration fields; the same
# defaults as there (tests/test_cli.py holds them to the parameter table).
ACTION_DEFAULTS = {"unifrac_metric": "unweighted", "missing_samples": "error",
                   "freeze_encoder": True, "lookup_neighbours": 3, "class_weights": "none"}
HELP = ("{name} of the QIIME 2 action (`qiime aam {command} --help` describes it); "
        "default: %(default)s")


def preset_of(command):
    return "pretrain" if command == "pretrain" else "fit"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m q2_aam.core.cli",
        description="Train an AAM model from files on disk, in one process or in every "
                    "process that torchrun starts (data-parallel); rank 0 writes a model "
                    "directory that `qiime tools import` accepts.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, task in COMMANDS.items():
        sub = commands.add_parser(command, help=f"Train an AAMModel[{task.title()}].")
        _add_inputs(sub, command)
        preset = preset_of(command)
        configs = sub.add_argument_group("model and training (the core's preset for "
                                         f"'{preset}' when not given)")
        for name in MODEL_OPTIONS[preset]:
            _add_config_option(configs, ModelConfig, name, preset, command)
        for name in TRAIN_OPTIONS[command]:
            _add_config_option(configs, TrainConfig, name, preset, command)
    return parser


def _add_inputs(sub, command):
    inputs = sub.add_argument_group("inputs and output")
    inputs.add_argument("--table", required=True, help="Feature table (BIOM: HDF5, JSON or "
                        "TSV); its observation IDs are the features of --sequences.")
    inputs.add_argument("--sequences", required=True,
                        help="FASTA file of the features' DNA sequences.")
    unifrac = inputs.add_mutually_exclusive_group(required=command == "pretrain")
    unifrac.add_argument("--distances", help="UniFrac distance matrix, tab-separated with the "
                         "sample IDs as header and first column.")
    unifrac.add_argument("--tree", help="Rooted newick tree of the features; each batch's "
                         "UniFrac is computed from it (needs scikit-bio).")
    inputs.add_argument("--unifrac-metric", choices=METRICS,
                        default=ACTION_DEFAULTS["unifrac_metric"],
                        help="UniFrac computed from --tree; default: %(default)s")
    inputs.add_argument("--output", required=True,
                        help="Model directory to write (new, or an empty directory).")
    if command == "pretrain":
        inputs.add_argument("--faith-pd", help="Faith's phylogenetic diversity of each sample, "
                            "tab-separated: sample IDs in the first column, the values in the "
                            "second (as `qiime tools export` writes SampleData[AlphaDiversity]); "
                            "the encoder then also learns to predict it.")
        return
    inputs.add_argument("--metadata", required=True, help="Sample metadata, tab-separated, "
                        "sample IDs in the first column (QIIME 2 metadata).")
    inputs.add_argument("--column", required=True, help="The metadata column to predict.")
    inputs.add_argument("--encoder", help="Pretrained encoder: a model directory (`qiime "
                        "tools export` of an AAMModel[Encoder]).")
    inputs.add_argument("--covariates", help="Sample metadata, tab-separated like --metadata, "
                        "whose every column conditions the model (the covariates of the "
                        "QIIME 2 action). A column is numeric when a '#q2:types' row says so, "
                        "or, without one, when every value is a number; else categorical.")
    fit = sub.add_argument_group("fit")
    for name, kind in (("missing_samples", ("error", "ignore")),
                       ("freeze_encoder", bool),
                       *((("lookup_neighbours", int),) if command == "fit-regressor" else
                         (("class_weights", ("none", "balanced")),))):
        flag = "--" + name.replace("_", "-")
        help_text = HELP.format(name=name, command=command)
        if kind is bool:        # (argparse.BooleanOptionalAction needs Python 3.9)
            fit.add_argument(flag, dest=name, action="store_true",
                             default=ACTION_DEFAULTS[name], help=help_text)
            fit.add_argument("--no-" + flag[2:], dest=name, action="store_false",
                             default=ACTION_DEFAULTS[name], help=f"Do not {flag}.")
        elif kind is int:
            fit.add_argument(flag, type=int, default=ACTION_DEFAULTS[name], help=help_text)
        else:
            fit.add_argument(flag, choices=kind, default=ACTION_DEFAULTS[name], help=help_text)


def _add_config_option(group, config_class, name, preset, command):
    """--name for a ModelConfig/TrainConfig field; absent stays None (the preset's)."""
    kind = config_class.__dataclass_fields__[name].type
    default = getattr(config_class.preset(preset), name)
    help_text = HELP.format(name=name, command=command).replace("%(default)s", repr(default))
    if name == "random_seed":
        help_text = ("Seed of initialization, validation split, shuffling and masking "
                     "(random_state of the QIIME 2 action); default: one drawn at random, "
                     "reported and recorded in the model")
    group.add_argument("--" + name.replace("_", "-"), type=kind, choices=CHOICES.get(name),
                       default=None, help=help_text)


def configs(args):
    """(ModelConfig, TrainConfig) of the command: its preset with the options given."""
    preset = preset_of(args.command)
    given = {name: getattr(args, name) for name in (*MODEL_OPTIONS[preset],
                                                     *TRAIN_OPTIONS[args.command])
             if getattr(args, name) is not None}
    model = {k: v for k, v in given.items() if k in ModelConfig.__dataclass_fields__}
    train = {k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__}
    if args.command == "pretrain":
        model.update(task="encoder", faith_pd=args.faith_pd is not None)
    elif args.distances is None and args.tree is None:
        train["unifrac_penalty"] = 0.0         # the UniFrac loss needs distances
    return ModelConfig.preset(preset, **model), TrainConfig.preset(preset, **train)


# --- reading the inputs -------------------------------------------------------------------


def read_table(path):
    try:
        import biom
    except ImportError:
        raise ValueError("Reading a BIOM table needs the biom-format package, which is not "
                         "installed here: install biom-format (conda-forge or PyPI) in this "
                         "environment.") from None
    _check_file(path, "--table")
    try:
        return biom.load_table(path)
    except Exception as err:        # biom raises several kinds for a file it cannot parse
        raise ValueError(f"--table {path} is not a BIOM table biom-format can read: "
                         f"{err}") from err


def read_fasta(path):
    """{ID: sequence} of a FASTA file; the ID is the header up to the first space."""
    _check_file(path, "--sequences")
    sequences, name, parts = {}, None, []

    def close():
        if name is not None:
            if name in sequences:
                raise ValueError(f"--sequences {path}: the ID {name!r} occurs twice.")
            sequences[name] = "".join(parts)
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if line.startswith(">"):
                close()
                name, parts = (line[1:].split() or [""])[0], []
                if not name:
                    raise ValueError(f"--sequences {path} line {number}: a header without ID.")
            elif line:
                if name is None:
                    raise ValueError(f"--sequences {path} is not FASTA: line {number} comes "
                                     "before any '>' header.")
                parts.append(line)
    close()
    if not sequences:
        raise ValueError(f"--sequences {path} holds no sequences.")
    return sequences


def read_distances(path, sample_ids):
    """The [n, n] float32 distances between `sample_ids`, in that order, from a
    tab-separated matrix whose header and first column are sample IDs."""
    import numpy as np
    import pandas as pd
    _check_file(path, "--distances")
    frame = pd.read_csv(path, sep="\t", index_col=0, dtype=str)
    frame.index = frame.index.astype(str)
    if list(frame.index) != list(frame.columns):
        raise ValueError(f"--distances {path} is not a square matrix with the same sample IDs "
                         f"as header and first column ({len(frame.columns)} columns, "
                         f"{len(frame.index)} rows).")
    missing = [s for s in sample_ids if s not in frame.index]
    if missing:
        raise ValueError(f"--distances lacks {len(missing)} sample(s) of the table: "
                         f"{few_ids(missing)}. Compute it from the same table, or filter the "
                         "table to its samples.")
    try:
        values = frame.loc[sample_ids, sample_ids].to_numpy(dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"--distances {path} holds a value that is not a number: {err}") \
            from None
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(f"Distances must lie in [0, 1] (like UniFrac); --distances spans "
                         f"[{np.nanmin(values):.4g}, {np.nanmax(values):.4g}].")
    if not np.allclose(values, values.T, atol=1e-6):
        raise ValueError(f"--distances {path} is not symmetric: it is not a distance matrix.")
    return values.astype(np.float32)


def read_tree(path):
    """A newick tree as unifrac.Tree; parsing newick is left to scikit-bio."""
    try:
        import skbio
    except ImportError:
        raise ValueError("Reading a newick tree needs scikit-bio, which is not installed "
                         "here: install scikit-bio, or give the UniFrac distances instead "
                         "(--distances).") from None
    from .unifrac import tree_from_treenode
    _check_file(path, "--tree")
    try:
        root = skbio.TreeNode.read(path, format="newick")
    except Exception as err:        # skbio's parser errors have no common base class
        raise ValueError(f"--tree {path} is not a newick tree scikit-bio can read: {err}") \
            from err
    return tree_from_treenode(root)


def read_metadata(path, option):
    """(columns as strings indexed by sample ID, NaN for an empty cell; the
    '#q2:types' row's {column: type}, empty without one) of a QIIME 2 metadata TSV."""
    import pandas as pd
    _check_file(path, option)
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    ids = frame.iloc[:, 0].str.strip()
    types_row = frame[ids.str.lower() == "#q2:types"]
    types = ({} if types_row.empty else
             {name: value.strip().lower() for name, value in types_row.iloc[0, 1:].items()})
    frame = frame[~ids.str.startswith("#")]           # '#q2:types' and comment rows
    frame.index = frame.iloc[:, 0].str.strip().rename("sample-id")
    frame = frame.iloc[:, 1:].apply(lambda column: column.str.strip())
    return frame.where(frame != ""), types


def read_covariates(path):
    """The --covariates frame: numeric columns as numbers, the others as labels."""
    import pandas as pd
    frame, types = read_metadata(path, "--covariates")
    for name in frame.columns:
        numbers = pd.to_numeric(frame[name], errors="coerce")
        typed = types.get(name)
        all_numbers = (numbers.notna() == frame[name].notna()).all()
        if typed == "numeric" and not all_numbers:
            raise ValueError(f"--covariates column {name!r} is typed numeric but holds "
                             "values that are not numbers.")
        if typed == "numeric" or (typed is None and all_numbers):
            frame[name] = numbers
    return frame


def read_alpha(path, option):
    """A one-column TSV of per-sample values as a float Series by sample ID."""
    import pandas as pd
    frame, _ = read_metadata(path, option)
    if frame.shape[1] != 1:
        raise ValueError(f"{option} {path} should hold one column of values after the sample "
                         f"IDs; it has {frame.shape[1]}.")
    values = pd.to_numeric(frame.iloc[:, 0], errors="coerce")
    bad = frame.iloc[:, 0][values.isna()]
    if len(bad):
        raise ValueError(f"{option} {path} holds values that are not numbers: "
                         f"{few_ids([str(v) for v in bad.tolist()])}.")
    return values


def read_metadata_column(path, column, task):
    """The metadata `column` as a Series indexed by sample ID (NaN: no value):
    numbers for a regressor, labels for a classifier."""
    import pandas as pd
    frame, _ = read_metadata(path, "--metadata")
    if column not in frame.columns:
        raise ValueError(f"--metadata has no column {column!r}; its columns: "
                         f"{few_ids(list(frame.columns))}.")
    series = frame[column]
    if task == "regressor":
        numbers = pd.to_numeric(series, errors="coerce")
        bad = series[numbers.isna() & series.notna()]
        if len(bad):
            raise ValueError(f"Column {column!r} is not numeric: {few_ids(bad.tolist())}. A "
                             "regressor needs numbers; fit-classifier takes categories.")
        series = numbers
    return series.rename(column)


class MetadataColumn:
    """What the actions' target alignment (inputs.sample_targets) reads of a
    QIIME 2 MetadataColumn."""

    def __init__(self, series):
        self.name, self._series = series.name, series

    def to_series(self):
        return self._series


def read_sample_set(args, model_cfg, train_cfg):
    """The SampleSet of the inputs, with its UniFrac targets, and the targets and
    covariates (None: none given) of a fit; checked as the QIIME 2 actions check
    theirs (the same functions)."""
    # Plain numpy and scipy, no QIIME 2: the actions' own input checks.
    from .covariates import refuse_target_column, samples_with_covariates
    from .inputs import (attach_alpha, build_sample_set, check_classes, check_split_size,
                         sample_set_with_targets)
    table, sequences = read_table(args.table), read_fasta(args.sequences)
    targets = covariates = None
    if args.command == "pretrain":
        data = build_sample_set(table, sequences, model_cfg.max_bp, model_cfg.asv_limit)
        if args.faith_pd is not None:
            data.faith_pd = attach_alpha(data, read_alpha(args.faith_pd, "--faith-pd"),
                                         "--faith-pd")
    else:
        if args.covariates is not None:
            covariates = read_covariates(args.covariates)
            refuse_target_column(covariates, args.column)
            table = table.filter(samples_with_covariates(
                list(table.ids(axis="sample")), covariates, args.missing_samples),
                axis="sample", inplace=False)
        column = read_metadata_column(args.metadata, args.column, COMMANDS[args.command])
        data, targets = sample_set_with_targets(table, sequences, MetadataColumn(column),
                                                args.missing_samples, model_cfg.max_bp,
                                                model_cfg.asv_limit)
        if args.command == "fit-classifier":
            check_classes(targets, train_cfg.validation_fraction)
    check_split_size(len(data), train_cfg.validation_fraction)
    if args.distances is not None:
        data.distances = read_distances(args.distances, data.sample_ids)
    elif args.tree is not None:
        from .unifrac import TreeDistances
        data.distances = TreeDistances(read_tree(args.tree), data.feature_ids, data.counts,
                                       args.unifrac_metric)
    return data, targets, covariates


def _check_file(path, option):
    if not os.path.isfile(path):
        raise ValueError(f"{option} {path}: no such file.")


# --- the process group and the output -----------------------------------------------------


def drawn_seed(log):
    """A fresh seed, rank 0's on every rank (every rank must shuffle alike)."""
    from . import distributed
    seed = distributed.same_on_all_ranks(draw_seed())
    log(f"No --random-seed given: using seed {seed} (pass --random-seed {seed} to repeat "
        "this run; the model records it).")
    return seed


def launched_by_torchrun():
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ


@contextlib.contextmanager
def process_group(train_cfg):
    """The process group torchrun describes (env://), for the duration: the
    backend chosen as train_distributed chooses it (NCCL with one GPU per local
    process, else gloo). Threads per process: torchrun's OMP_NUM_THREADS."""
    import torch
    from . import distributed
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    backend, _ = distributed._local_backend(train_cfg, local_processes)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    distributed.join_group(backend, init_method="env://")
    try:
        yield
    finally:
        distributed.leave_group()


def check_output(path):
    """Refuse an output that exists (unless an empty directory) or cannot be written,
    before any training."""
    if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise ValueError(f"--output {path} exists; give a new path or an empty directory "
                         "(a model is never written over another).")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"--output {path}: {parent} is not a writable directory.")


def save(bundle, path):
    """Write the model directory whole or not at all: into a hidden sibling, then
    renamed into place."""
    parent = os.path.dirname(os.path.abspath(path))
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        bundle.save(partial)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o777 & ~umask)       # mkdtemp's directory is private
        if os.path.isdir(path):
            os.rmdir(path)                      # empty: check_output saw to that
        os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# --- the commands -------------------------------------------------------------------------


def run(args):
    """Read, train (data-parallel under torchrun), and write the model from rank 0."""
    from . import distributed
    from .bundle import ModelBundle
    rank0 = int(os.environ.get("RANK", "0")) == 0
    log = (lambda message: print(message, file=sys.stderr)) if rank0 else (lambda message: None)
    model_cfg, train_cfg = configs(args)
    if rank0:
        check_output(args.output)
    encoder = None
    if getattr(args, "encoder", None):
        if not os.path.isfile(os.path.join(args.encoder, "config.json")):
            raise ValueError(f"--encoder {args.encoder} is not a model directory (no "
                             "config.json); `qiime tools export` makes one of an artifact.")
        encoder = ModelBundle.load(args.encoder)
        if encoder.task != "encoder":
            raise ValueError(f"--encoder {args.encoder} holds a {encoder.task}, not an encoder.")
        log("Using the pretrained encoder's architecture; architecture options are ignored.")
    # Every rank reads the inputs; notices about them (samples dropped) from rank 0 only.
    with contextlib.nullcontext() if rank0 else contextlib.redirect_stderr(io.StringIO()):
        data, targets, covariates = read_sample_set(
            args, encoder.model_config if encoder else model_cfg, train_cfg)
    with process_group(train_cfg):
        if args.random_seed is None:
            train_cfg = replace(train_cfg, random_seed=drawn_seed(log))
        where = f"{distributed.world_size()} processes" if distributed.active() else \
            "one process"
        if args.command == "pretrain":
            from .pretrain import pretrain
            log(f"Pretraining on {len(data)} samples and {len(data.feature_ids)} features "
                f"({where}).")
            bundle = pretrain(data, model_cfg, train_cfg, log=log)
        else:
            from .supervised import fit
            task = COMMANDS[args.command]
            keywords = {"freeze_encoder": args.freeze_encoder and encoder is not None}
            keywords.update({"lookup_neighbours": args.lookup_neighbours}
                            if task == "regressor" else {"class_weights": args.class_weights})
            log(f"Fitting a {task} of {args.column!r} on {len(data)} samples ({where}).")
            bundle = fit(data, targets, task, model_cfg, train_cfg, encoder=encoder, log=log,
                         covariates=covariates, **keywords)
        if rank0:
            save(bundle, args.output)
            log(f"Saved the model to {args.output} (import it with `qiime tools import "
                f"--type 'AAMModel[{bundle.task.title()}]' --input-path {args.output} "
                "--output-path model.qza`).")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as err:        # what the inputs or options got wrong
        sys.exit(f"{parser.prog} {args.command}: error: {err}")


if __name__ == "__main__":
    main()
