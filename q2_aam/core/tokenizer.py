"""DNA tokenizer: one token per nucleotide, after a never-masked start token.

The start token means no sequence is ever all padding, so attention pooling
always has a position to attend to. Ambiguous IUPAC bases get their own token
instead of being mistaken for padding.
"""
import numpy as np

PAD, START, MASK, A, C, G, T, AMBIGUOUS = range(8)
VOCAB_SIZE = 8
NUCLEOTIDES = (A, C, G, T)
IUPAC_AMBIGUOUS = "RYSWKMBDHVN"

_LOOKUP = np.full(256, 255, dtype=np.uint8)   # 255 marks a forbidden character
for _base, _token in zip("ACGT", NUCLEOTIDES):
    _LOOKUP[ord(_base)] = _token
    _LOOKUP[ord(_base.lower())] = _token
for _base in IUPAC_AMBIGUOUS:
    _LOOKUP[ord(_base)] = AMBIGUOUS
    _LOOKUP[ord(_base.lower())] = AMBIGUOUS


def tokenize(sequences, max_bp):
    """Tokenize DNA strings into a [n, 1 + L] uint8 array, L = longest kept length.

    Sequences longer than `max_bp` are truncated. Returns (tokens, n_truncated).
    Raises ValueError naming the first offending sequence for gaps or
    characters outside the IUPAC DNA alphabet.
    """
    sequences = list(sequences)
    if not sequences:
        raise ValueError("No sequences to tokenize.")
    lengths = np.array([min(len(s), max_bp) for s in sequences])
    if lengths.min() == 0:
        raise ValueError("Empty sequence found; every feature needs a DNA sequence.")
    tokens = np.full((len(sequences), 1 + lengths.max()), PAD, dtype=np.uint8)
    tokens[:, 0] = START
    for i, seq in enumerate(sequences):
        codes = _LOOKUP[np.frombuffer(seq[:max_bp].encode("ascii", "replace"), dtype=np.uint8)]
        if (codes == 255).any():
            bad = sorted({seq[j] for j in np.flatnonzero(codes == 255)})
            raise ValueError(
                f"Sequence {i} contains characters that are not IUPAC DNA bases: "
                f"{''.join(bad)!r}. Remove gaps ('-', '.') and other characters "
                "(for example with an unaligned FeatureData[Sequence]).")
        tokens[i, 1:1 + len(codes)] = codes
    n_truncated = int(sum(len(s) > max_bp for s in sequences))
    return tokens, n_truncated
