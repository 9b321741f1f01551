"""q2-aam: Attention All Microbes for QIIME 2."""
__version__ = "0.1.0"
