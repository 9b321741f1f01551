"""q2-aam: a QIIME 2 plugin for AAM (Attention All Microbes) transformers."""
from setuptools import find_packages, setup

# QIIME 2 itself (qiime2, q2-types, q2templates, q2-sample-classifier, biom-format,
# scikit-bio, pandas, h5py) comes from the QIIME 2 distribution (conda or Debian),
# never from PyPI, so it is deliberately absent here: listing it would let pip
# replace the distribution's copies. See recipe/meta.yaml for the conda route.
INSTALL_REQUIRES = [
    "torch>=2.3",      # torch.nn.attention.sdpa_kernel
    "safetensors>=0.4",
    "tensorboard>=2.10",
    "tqdm>=4.60",
]

setup(
    name="q2-aam",
    version="0.1.0",
    description="Attention All Microbes: transformer models of microbiome samples for QIIME 2",
    license="BSD-3-Clause",
    packages=find_packages(include=["q2_aam", "q2_aam.*"]),
    package_data={
        "q2_aam": ["citations.bib", "assets/*/*"],
    },
    python_requires=">=3.8",
    install_requires=INSTALL_REQUIRES,
    entry_points={"qiime2.plugins": ["q2-aam=q2_aam.plugin_setup:plugin"]},
    zip_safe=False,
)
