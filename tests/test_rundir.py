"""pyro_flows.rundir: publishing a run atomically and recovering from a crash at any point."""

from __future__ import annotations

import json
import os

import pytest

from pyro_flows.rundir import RunDirectory, data_source, normalized, read_config


def make_run(directory, tag: str) -> None:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"tag": tag}))
    (directory / "model.pt").write_text(tag)


def test_publish_replaces_the_old_run_whole(tmp_path):
    run = RunDirectory(tmp_path / "r")
    make_run(run.path, "old")
    make_run(run.partial, "new")
    assert run.state() == "unfinished"
    run.publish()
    assert (run.path / "model.pt").read_text() == "new"
    assert not run.partial.exists() and not run.old.exists() and run.state() == "finished"


def test_a_publish_cut_between_its_renames_is_undone(tmp_path):
    run = RunDirectory(tmp_path / "r")
    make_run(run.path, "old")
    make_run(run.partial, "new")
    os.rename(run.path, run.old)  # killed here
    assert run.state() == "unfinished"
    run.recover()
    assert (run.path / "model.pt").read_text() == "old" and run.partial.exists()


def test_a_publish_cut_before_deleting_the_old_run_is_finished(tmp_path):
    run = RunDirectory(tmp_path / "r")
    make_run(run.old, "old")
    make_run(run.path, "new")
    run.recover()
    assert (run.path / "model.pt").read_text() == "new" and not run.old.exists()


def test_recover_removes_temp_files_and_an_empty_partial(tmp_path):
    run = RunDirectory(tmp_path / "r")
    run.partial.mkdir()
    (run.partial / ".config.json.abcd.tmp").write_text("{")
    run.recover()
    assert not run.partial.exists() and run.state() == "absent"


def test_states(tmp_path):
    assert RunDirectory(tmp_path / "absent").state() == "absent"
    (tmp_path / "empty").mkdir()
    assert RunDirectory(tmp_path / "empty").state() == "empty"
    (tmp_path / "file").write_text("x")
    assert RunDirectory(tmp_path / "file").state() == "foreign"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert RunDirectory(tmp_path / "other").state() == "foreign"


def test_config_round_trips_and_missing_keys_are_named(tmp_path):
    config = {"flow_kwargs": {"hidden_dims": (64, 64)}, "event_shape": (2,)}
    assert normalized(config) == json.loads(json.dumps(normalized(config)))
    assert normalized(config)["flow_kwargs"]["hidden_dims"] == [64, 64]
    (tmp_path / "config.json").write_text(json.dumps({"flow": "glow"}))
    with pytest.raises(ValueError, match="lacks data, n_bits, seed, event_shape"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path)


def test_data_source_records_files_absolutely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two_moons").write_text("a file named like a toy")
    assert data_source("two_moons") == {"data": "two_moons", "data_sha256": None}
    (tmp_path / "x.csv").write_text("1,2\n")
    record = data_source("x.csv")
    assert record["data"] == str(tmp_path / "x.csv") and len(record["data_sha256"]) == 64


def test_evaluate_seeds_only_the_generators_it_restores(monkeypatch):
    """``evaluate`` draws its dequantization noise from a fixed seed and then puts the random
    state back. ``torch.manual_seed`` would also reseed every GPU's generator, which it does not
    restore for a model on the CPU: a user's CUDA stream would change under them."""
    import torch

    from pyro_flows.model import FlowModel
    from pyro_flows.rundir import evaluate
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    model = FlowModel.build("realnvp", 4, data_levels=17, num_layers=2)
    data = torch.randint(0, 17, (20, 4)).float()
    state = torch.get_rng_state()
    first, second = evaluate(model, data), evaluate(model, data)
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)
    assert reseeded == []
