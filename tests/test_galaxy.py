"""The Galaxy tools that q2galaxy, the QIIME 2 project's Galaxy tool generator,
writes for this plugin: one per action, each with tool tests that Galaxy can run.

q2galaxy builds each tool's <tests> from the action's usage examples and writes
the examples' `init_artifact` / `init_metadata` inputs into test-data/. Galaxy
runs one tool per test, so a test that names the output of another action (an
example that trains a model first, say) can never pass.
"""
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, VENV_BIN

# The release matching Debian's QIIME 2 2022.11; not on PyPI, so it is kept
# beside the repository (see its README) and installed from there, offline.
Q2GALAXY_SOURCE = os.path.normpath(
    os.path.join(REPO, "..", "shared", "vendor", "q2galaxy-2022.11.1.tar.gz"))
DATA_FILE_SUFFIXES = (".qza", ".qzv", ".tsv")
PLUGIN_ID = "aam"


@pytest.fixture(scope="session")
def q2galaxy():
    """The venv's `q2galaxy` command, installed from the vendored source if missing."""
    python = os.path.join(VENV_BIN, "python")
    if not os.path.exists(python):
        pytest.skip("the project's venv is missing: run `make setup`")
    if subprocess.run([python, "-c", "import q2galaxy"], capture_output=True).returncode:
        if not os.path.exists(Q2GALAXY_SOURCE):
            pytest.skip(f"q2galaxy is not installed and its source {Q2GALAXY_SOURCE} is "
                        "absent (see ../shared/vendor/README.md)")
        result = subprocess.run(
            [python, "-m", "pip", "install", "--no-index", "--no-deps",
             "--no-build-isolation", Q2GALAXY_SOURCE],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return os.path.join(VENV_BIN, "q2galaxy")


@pytest.fixture(scope="module")
def suite(q2galaxy, tmp_path_factory):
    """(directory of the generated tools, {tool id: parsed tool XML})."""
    root = tmp_path_factory.mktemp("galaxy")
    # q2galaxy reads package versions from a conda environment; an empty one
    # makes it take them from the installed Python packages.
    fake_conda = root / "fake-conda"
    (fake_conda / "conda-meta").mkdir(parents=True)
    output = root / "tools"
    output.mkdir()
    env = dict(os.environ, CONDA_PREFIX=str(fake_conda),
               XDG_CONFIG_HOME=os.path.join(REPO, ".venv", "qiime-config"))
    result = subprocess.run([q2galaxy, "template", "plugin", PLUGIN_ID, str(output)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"status": "error"' not in result.stdout + result.stderr, result.stderr[-3000:]
    directory = output / f"suite_qiime2__{PLUGIN_ID}"
    return directory, {path.stem: ET.parse(path).getroot()
                       for path in sorted(directory.glob("*.xml"))}


@pytest.fixture(scope="module")
def actions():
    import qiime2.sdk
    return qiime2.sdk.PluginManager().get_plugin(id=PLUGIN_ID).actions


def tool_id(action_id):
    return f"qiime2__{PLUGIN_ID}__{action_id}"


def input_names(tool):
    """Every name a test may set: params, conditionals, repeats and sections."""
    return {node.get("name") for node in tool.find("inputs").iter() if node.get("name")}


def output_names(tool):
    return {data.get("name") for data in tool.find("outputs").iter("data")}


def data_files(test):
    """The data set file names a tool test reads."""
    return [param.get("value") for param in test.iter("param")
            if (param.get("value") or "").endswith(DATA_FILE_SUFFIXES)]


def test_one_tool_per_action(suite, actions):
    _, tools = suite
    assert sorted(tools) == sorted(tool_id(action_id) for action_id in actions)


def test_every_example_is_a_tool_test(suite, actions):
    _, tools = suite
    for action_id, action in actions.items():
        tests = tools[tool_id(action_id)].find("tests").findall("test")
        assert len(tests) == len(action.examples) >= 1, action_id


def test_every_test_input_is_in_test_data(suite):
    directory, tools = suite
    missing = {}
    for name, tool in tools.items():
        for index, test in enumerate(tool.find("tests").findall("test")):
            absent = [file for file in data_files(test)
                      if not (directory / "test-data" / file).is_file()]
            if absent:
                missing[f"{name} test {index}"] = absent
    assert not missing, ("tool tests name files that are not in test-data/ (another "
                         f"action's output?): {missing}")


def test_every_test_artifact_suits_its_input(suite, actions):
    # Galaxy cannot check semantic types; the action would refuse a wrong one.
    from qiime2.sdk import Result
    from qiime2.sdk.util import parse_type
    directory, tools = suite
    unsuited = {}
    for action_id, action in actions.items():
        for index, test in enumerate(tools[tool_id(action_id)].find("tests").findall("test")):
            for param in test.findall("param"):
                spec = action.signature.inputs.get(param.get("name"))
                path = directory / "test-data" / (param.get("value") or "")
                if spec is None or not path.is_file():
                    continue
                type_ = parse_type(Result.peek(str(path)).type)
                if not type_ <= spec.qiime_type:
                    unsuited[f"{action_id} test {index}: {param.get('name')}"] = (
                        f"{type_} is not {spec.qiime_type}")
    assert not unsuited, unsuited


def test_each_test_runs_its_tool_alone(suite):
    # A test that sets an input twice, sets another action's parameters, or
    # expects another action's outputs was built from an example that runs
    # more than this one action.
    _, tools = suite
    foreign = {}
    for name, tool in tools.items():
        inputs, outputs = input_names(tool), output_names(tool)
        for index, test in enumerate(tool.find("tests").findall("test")):
            set_ = [node.get("name") for node in test if node.tag != "output"]
            expected = [node.get("name") for node in test.findall("output")]
            problems = ([f"{n} set twice" for n in sorted(set(set_)) if set_.count(n) > 1]
                        + [f"{n} is not an input" for n in sorted(set(set_) - inputs)]
                        + [f"{n} is not an output" for n in sorted(set(expected) - outputs)])
            if problems:
                foreign[f"{name} test {index}"] = problems
    assert not foreign, f"tool tests that run more than their own tool: {foreign}"


def test_every_test_checks_an_output(suite):
    _, tools = suite
    for name, tool in tools.items():
        for test in tool.find("tests").findall("test"):
            assert test.findall("output"), name
