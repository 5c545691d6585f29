"""Provenance names the code that ran, and the results page says how stable the layer choice was."""

import subprocess

import pandas as pd

from mmie import provenance
from mmie.report import results_page


def test_the_running_tree_wins_over_the_image_build_commit(monkeypatch, tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.PROJECT_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setenv("MMIE_GIT_COMMIT", "image-build-commit")
    provenance.git_commit.cache_clear()   # cached per job
    got = provenance.git_commit()
    assert got["commit"] == head and got["source"] == "git" and got["image_commit"] == "image-build-commit"
    # where git cannot tell (no checkout bound), the image's commit stands in and says so
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path / "not-a-checkout")
    provenance.git_commit.cache_clear()
    got = provenance.git_commit()
    provenance.git_commit.cache_clear()
    assert got["commit"] == "image-build-commit" and "image's build commit" in got["source"]


def test_a_dirty_checkout_records_which_files_differ(tmp_path, monkeypatch):
    """A run of a checkout with uncommitted changes names the changed tracked files (a changed doc is
    not a changed metric), and the docs' generated tables name them."""
    from mmie.report import demo_results

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for name in ("a.py", "b.md", "c.txt"):
        (repo / name).write_text("x\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    monkeypatch.delenv("MMIE_GIT_COMMIT", raising=False)
    monkeypatch.setattr(provenance, "PROJECT_ROOT", repo)
    provenance.git_commit.cache_clear()
    clean = provenance.git_commit()
    (repo / "b.md").write_text("y\n")
    subprocess.run([*git, "mv", "c.txt", "d.txt"], check=True)
    (repo / "untracked.py").write_text("not part of the run's code\n")
    provenance.git_commit.cache_clear()
    dirty = provenance.git_commit()
    provenance.git_commit.cache_clear()
    assert clean["dirty"] is False and clean["changed"] == [] and clean["changed_count"] == 0
    assert dirty["dirty"] is True and dirty["changed"] == ["b.md", "d.txt"] and dirty["changed_count"] == 2
    assert demo_results._uncommitted({"dirty": True, "changed": dirty["changed"]}) == \
        " with uncommitted changes to `b.md`, `d.txt`"
    assert demo_results._uncommitted({"dirty": True}) == " (with uncommitted changes)"   # an older record
    assert demo_results._uncommitted({"dirty": False, "changed": []}) == ""


def _selection(**kw):
    return {"layers": [1], "forced": False, "frequency": {"0": 0.2, "1": 0.8}, "tie": False, "stable": True,
            "stability_floor": 0.6, "margin": {"runner_up": 0, "mean_score": 0.01}, "resamples": [{}] * 5, **kw}


def test_results_page_reports_the_layer_choice_and_flags_an_unstable_one(demo_config):
    iv = pd.DataFrame(columns=["arm", "set", "metric", "estimate", "ci_low", "ci_high"])
    gates = pd.DataFrame(columns=["arm", "gate", "p_value"])
    page = results_page.page(iv, gates, {}, ["base"], ["forget"], demo_config, _selection())
    assert "## Choices made on dev data" in page and "layer 1: 80%" in page and "UNSTABLE" not in page
    page = results_page.page(iv, gates, {}, ["base"], ["forget"], demo_config, _selection(stable=False, tie=True,
                                                                                         tie_broken_by="mean score"))
    assert "**UNSTABLE**" in page and "**TIE**" in page
    forced = results_page.page(iv, gates, {}, ["base"], ["forget"], demo_config, {"layers": [2], "forced": True})
    assert "forced by `layers.force_layers`" in forced
