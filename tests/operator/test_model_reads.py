"""Where a reconcile reads its model: kopf's watch, or our own last patch while the watch lags.

A reconcile reads the model from kopf's index, which costs no request; right after the operator
patched the model, the watch may not have shown that patch yet, and a reconcile from the older
version would patch the same status and post the same Events again.
"""

from __future__ import annotations

import kopf
import pytest

from modelkiln.operator import handlers


def version(rv: str, phase: str) -> dict:
    return {"metadata": {"namespace": "vision", "name": "digits", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]},
            "status": {"phase": phase}}


@pytest.fixture(autouse=True)
def no_written_models():
    yield
    handlers._written.clear()


def test_a_model_is_read_from_the_watch_as_a_copy():
    index = {("vision", "digits"): [version("1", "Converting")]}
    model, seen = handlers._current("vision", "digits", index)
    assert (model["status"]["phase"], seen) == ("Converting", "1")
    model["status"]["phase"] = "changed by a reconcile"
    assert index["vision", "digits"][0]["status"]["phase"] == "Converting"
    assert handlers._current("vision", "letters", index) == (None, "")


def test_our_last_patch_is_read_until_the_watch_shows_a_newer_version():
    handlers._written["vision", "digits"] = ("1", version("2", "Ready"))
    lagging = {("vision", "digits"): [version("1", "Converting")]}
    assert handlers._current("vision", "digits", lagging)[0]["status"]["phase"] == "Ready"
    assert handlers._current("vision", "digits", lagging)[0]["status"]["phase"] == "Ready"  # still lagging

    # the watch shows our patch, or anything after it (a relist may skip versions): the watch wins
    caught_up = {("vision", "digits"): [version("3", "Failed")]}
    assert handlers._current("vision", "digits", caught_up) == (version("3", "Failed"), "3")
    assert ("vision", "digits") not in handlers._written
    assert handlers._current("vision", "digits", lagging)[0]["status"]["phase"] == "Converting"


def test_a_forgotten_model_leaves_no_patch_behind():
    handlers._written["vision", "digits"] = ("1", version("2", "Ready"))
    handlers._forget("vision", "digits")
    assert handlers._written == {}


def test_neither_the_index_nor_kopfs_copy_keeps_managed_fields():
    event = version("1", "Ready")  # what kopf holds until the object's handlers have run
    trimmed = handlers._trimmed(kopf.Body(event))
    assert "managedFields" not in trimmed["metadata"] and trimmed["metadata"]["resourceVersion"] == "1"
    assert "managedFields" not in event["metadata"]


def test_the_analysis_resync_goes_through_the_models_whose_rollout_is_analysed():
    analysed = {**version("1", "Ready"), "status": {"phase": "Ready", "rollout": {"phase": "Analysing"}}}
    assert handlers._analysing([analysed])
    assert not handlers._analysing([version("1", "Ready")])
    assert not handlers._analysing([{**analysed, "status": {"rollout": {"phase": "Promoted"}}}])
