"""Privacy of models: a regressor whose neighbour look-up is on stores its training
samples' ASV sets and targets; summarize says so, and strip-lookup removes them."""
import shutil

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2

from q2_aam._examples import (EXAMPLE_SIZE, SAMPLES_PER_HOST, lookup_regressor,
                              repeated_hosts, simulated, to_views, trained_model)
from q2_aam.core.bundle import LOOKUP, ModelBundle

from test_visualizers import check_in_browser

NOTICE = "This model stores training data"
# The look-up regressor's references: every fitted sample, each host's copies too.
N_STORED = SAMPLES_PER_HOST * EXAMPLE_SIZE["n_samples"]


@pytest.fixture(scope="module")
def repeated():
    """The look-up regressor's training samples as (table, sequences) artifacts, and
    their ages."""
    counts, ages = repeated_hosts()
    table = biom.Table(counts.T.to_numpy(), observation_ids=list(counts.columns),
                       sample_ids=list(counts.index))
    _, sequences, _, _ = to_views(simulated())
    return (qiime2.Artifact.import_data("FeatureTable[Frequency]", table),
            qiime2.Artifact.import_data("FeatureData[Sequence]", sequences), ages)


@pytest.fixture(scope="module")
def stripped(aam):
    model, = aam.methods.strip_lookup(model=lookup_regressor())
    return model


def summary_html(aam, model, tmp_path, name):
    visualization, = aam.visualizers.summarize(model=model)
    visualization.export_data(str(tmp_path / name))
    return (tmp_path / name / "index.html").read_text()


def test_summarize_warns_about_stored_references_at_the_top(aam, tmp_path, browser):
    assert len(lookup_regressor().view(ModelBundle).lookup["targets"]) == N_STORED
    html = summary_html(aam, lookup_regressor(), tmp_path, "with")
    assert f"the ASV sets and target values of\n      {N_STORED} training samples" in html
    assert "qiime aam strip-lookup" in html
    # Prominent: a danger alert ahead of everything else on the page.
    assert html.index(NOTICE) < html.index("Learning curves")
    assert 'class="alert alert-danger aam-privacy"' in html
    page = check_in_browser(browser, tmp_path / "with", tmp_path)
    assert NOTICE in page.text


def test_summarize_has_no_notice_without_references(aam, tmp_path, stripped):
    assert trained_model("regressor").view(ModelBundle).lookup is None
    for name, model in (("plain", trained_model("regressor")), ("stripped", stripped)):
        html = summary_html(aam, model, tmp_path, name)
        assert NOTICE not in html and "alert-danger" not in html, name
    html = summary_html(aam, stripped, tmp_path, "stripped-again")
    assert f"The look-up references ({N_STORED} training samples' ASV sets and targets)\n" \
           "      were removed" in html


def test_strip_lookup_removes_the_references_file_and_records_it(stripped, tmp_path):
    original = tmp_path / "original"
    lookup_regressor().export_data(str(original))
    assert (original / LOOKUP).is_file()
    stripped.export_data(str(tmp_path / "stripped"))
    assert not (tmp_path / "stripped" / LOOKUP).exists()
    assert str(stripped.type) == "AAMModel[Regressor]"
    bundle = stripped.view(ModelBundle)
    assert bundle.lookup is None
    assert bundle.info["lookup_stripped"] == {"references_removed": N_STORED}
    # The weights are the fitted ones, untouched.
    for name, tensor in lookup_regressor().view(ModelBundle).state_dict.items():
        assert np.array_equal(tensor.numpy(), bundle.state_dict[name].numpy()), name
    stripped.validate(level="max")


def test_stripped_model_predicts_from_the_model_alone(aam, repeated, stripped):
    table, sequences, ages = repeated
    looked_up, = aam.methods.predict(model=lookup_regressor(), table=table, sequences=sequences)
    alone, = aam.methods.predict(model=stripped, table=table, sequences=sequences)
    looked_up = looked_up.view(pd.Series)
    alone = alone.view(pd.Series).loc[looked_up.index]
    true = ages.loc[looked_up.index]
    # With references, fitted samples mostly get their own (their host's) age back ...
    answered = np.isclose(looked_up, true)
    assert answered.mean() > 0.9
    # ... without them, the tiny model's own predictions, which are not those ages.
    assert not np.isclose(alone[answered], true[answered]).any()
    assert np.abs(alone - true).mean() > 5 * np.abs(looked_up - true).mean()


def test_stripping_a_model_without_references_says_so(aam, capsys):
    model, = aam.methods.strip_lookup(model=trained_model("regressor"))
    assert model.view(ModelBundle).info["lookup_stripped"] == {"references_removed": 0}
    assert "stores no look-up references" in capsys.readouterr().err
    twice, = aam.methods.strip_lookup(model=aam.methods.strip_lookup(
        model=lookup_regressor()).stripped_model)
    assert twice.view(ModelBundle).info["lookup_stripped"] == {"references_removed": N_STORED}


def test_a_stripped_model_that_holds_references_is_refused(stripped, tmp_path):
    directory, original = tmp_path / "tampered", tmp_path / "original"
    stripped.export_data(str(directory))
    lookup_regressor().export_data(str(original))
    shutil.copy(original / LOOKUP, directory / LOOKUP)
    with pytest.raises(ValueError, match="records that the look-up references were removed"):
        ModelBundle.load(str(directory))


def test_strip_lookup_example_runs(aam):
    from qiime2.sdk.usage import ExecutionUsage
    use = ExecutionUsage()
    aam.methods.strip_lookup.examples["strip_lookup"](use)
    result = use.render()["stripped_regressor"].execute()
    assert result.view(ModelBundle).lookup is None
