"""The conda recipe renders, and its requirements and version match setup.py."""
import ast
import os
import re

import jinja2
import pytest
import yaml

import q2_aam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipe", "meta.yaml")
# PyPI name -> conda name, where they differ.
CONDA_NAMES = {"torch": "pytorch"}
QIIME2_PACKAGES = {"qiime2", "q2-types", "q2templates", "q2-sample-classifier"}


def render(path=RECIPE):
    with open(path) as fh:
        template = fh.read()
    # StrictUndefined: any variable conda-build would have to supply and we did
    # not define here (only PYTHON is used) makes the test fail loudly.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return yaml.safe_load(env.from_string(template).render(PYTHON="$PYTHON"))


def setup_py():
    """INSTALL_REQUIRES and the setup() keywords of setup.py, read without running it."""
    with open(os.path.join(REPO, "setup.py")) as fh:
        tree = ast.parse(fh.read())
    install_requires, keywords = None, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "INSTALL_REQUIRES" for t in node.targets):
            install_requires = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                try:
                    keywords[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    pass
    assert install_requires, "INSTALL_REQUIRES not found in setup.py"
    return install_requires, keywords


def split_requirement(text):
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$", text)
    assert match, text
    return match.group(1).lower(), match.group(2).replace(" ", "")


@pytest.fixture(scope="module")
def recipe():
    return render()


def test_recipe_renders_with_expected_sections(recipe):
    assert recipe["package"]["name"] == "q2-aam"
    assert recipe["build"]["noarch"] == "python"
    assert recipe["build"]["script"] == "$PYTHON -m pip install . --no-deps -vv"
    source = os.path.normpath(os.path.join(os.path.dirname(RECIPE), recipe["source"]["path"]))
    assert os.path.exists(os.path.join(source, "setup.py"))
    host = {split_requirement(r)[0] for r in recipe["requirements"]["host"]}
    assert {"python", "pip", "setuptools"} <= host
    assert "q2_aam" in recipe["test"]["imports"]
    assert "qiime aam --help" in recipe["test"]["commands"]
    assert recipe["about"]["license"] == "BSD-3-Clause"


def test_version_matches_package_and_setup_py(recipe):
    _, keywords = setup_py()
    assert str(recipe["package"]["version"]) == q2_aam.__version__
    assert keywords["version"] == q2_aam.__version__
    assert keywords["license"] == recipe["about"]["license"]


def test_run_requirements_cover_install_requires(recipe):
    install_requires, _ = setup_py()
    run = dict(split_requirement(r) for r in recipe["requirements"]["run"])
    for requirement in install_requires:
        name, spec = split_requirement(requirement)
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in run, f"{requirement} (conda: {conda_name}) missing from run"
        assert run[conda_name] == spec, (
            f"{conda_name}: recipe pins {run[conda_name]!r}, setup.py {spec!r}")
    # QIIME 2 comes from the distribution, never from setup.py, but conda needs it.
    assert QIIME2_PACKAGES <= set(run)
    assert "python" in run


# Import name -> conda package, for the packages the code imports directly.
IMPORTED = {"torch": "pytorch", "safetensors": "safetensors", "tqdm": "tqdm",
            "numpy": "numpy", "pandas": "pandas", "scipy": "scipy", "sklearn": "scikit-learn",
            "skbio": "scikit-bio", "biom": "biom-format", "matplotlib": "matplotlib-base",
            "jinja2": "jinja2", "markupsafe": "markupsafe", "qiime2": "qiime2",
            "q2_types": "q2-types", "q2templates": "q2templates",
            "q2_sample_classifier": "q2-sample-classifier"}


def imported_packages():
    """Top-level names of every package q2_aam imports, outside the standard library."""
    import sys
    names = set()
    for root, _, files in os.walk(os.path.join(REPO, "q2_aam")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as fh:
                    tree = ast.parse(fh.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names |= {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "q2_aam"}


def test_every_imported_package_is_a_run_requirement(recipe):
    run = {split_requirement(r)[0] for r in recipe["requirements"]["run"]}
    imported = imported_packages()
    assert imported <= set(IMPORTED), f"map these imports to conda packages: " \
                                      f"{imported - set(IMPORTED)}"
    assert {IMPORTED[name] for name in imported} <= run


def test_qiime2_packages_are_pinned_to_one_epoch(recipe):
    run = dict(split_requirement(r) for r in recipe["requirements"]["run"])
    epochs = {run[name] for name in QIIME2_PACKAGES}
    assert epochs == {"2022.11.*"}


def test_render_rejects_unknown_variables(tmp_path):
    # Guards the renderer above: an undefined conda-build variable must not
    # silently render as an empty string.
    bad = tmp_path / "meta.yaml"
    bad.write_text("package:\n  version: {{ load_setup_py_data().version }}\n")
    with pytest.raises(jinja2.exceptions.UndefinedError):
        render(str(bad))
