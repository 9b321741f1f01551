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


def test_render_rejects_unknown_variables(tmp_path):
    # Guards the renderer above: an undefined conda-build variable must not
    # silently render as an empty string.
    bad = tmp_path / "meta.yaml"
    bad.write_text("package:\n  version: {{ load_setup_py_data().version }}\n")
    with pytest.raises(jinja2.exceptions.UndefinedError):
        render(str(bad))
