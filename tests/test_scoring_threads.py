"""The thread policy where a trained model scores (`predict.threads`: predict, the served model,
standalone evaluate), the count a run's own evaluation takes, and one count for every DDP rank
written by rank 0 only (segops.train.device)."""

from __future__ import annotations

import json

import pytest
import torch

from segops.config import config_hash, load_config


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _model_files(tmp_path, *overrides: str):
    """weights.pt and model.json of a tiny untrained U-Net (what a logged model carries)."""
    from segops.models import build_model

    cfg = load_config(None, ["model.options={width: 4, depth: 2}", *overrides])
    model = build_model("unet", num_classes=2, width=4, depth=2)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    meta = {"config": cfg.to_dict(), "classes": ["background", "thing"]}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return tmp_path / "weights.pt", tmp_path / "model.json"


def test_predict_threads_is_auto_or_a_count_outside_the_config_hash():
    base = load_config(None)
    assert base.predict.threads == "auto"
    assert config_hash(load_config(None, ["predict.threads=1"])) == config_hash(base)
    with pytest.raises(Exception, match="threads"):
        load_config(None, ["predict.threads=0"])


def test_loading_a_model_to_score_applies_its_predict_threads(tmp_path, threads_restored):
    from segops.inference import load_model_files

    torch.set_num_threads(2)
    trained = load_model_files(*_model_files(tmp_path, "predict.threads=1"), "cpu")
    assert trained.threads == 1 and torch.get_num_threads() == 1


def test_auto_is_decided_at_most_once_a_minute_and_applied_each_time(threads_restored):
    from segops.train.device import inference_threads

    first = inference_threads("auto")
    torch.set_num_threads(7)  # something else changed the pool meanwhile
    again = inference_threads("auto")
    assert again is first and torch.get_num_threads() == first.threads >= 1
    assert inference_threads(1).reason == "predict.threads=1"


def test_a_runs_own_evaluation_takes_the_count_its_training_kept(tmp_path):
    from segops.evaluate.report import run_threads

    ckpt = tmp_path / "checkpoints" / "best.pt"
    ckpt.parent.mkdir()
    auto, pinned = load_config(None), load_config(None, ["train.threads=2"])
    assert run_threads(auto, ckpt) is None  # nothing recorded: predict.threads decides
    (ckpt.parent / "threads.txt").write_text("3\n")
    assert run_threads(auto, ckpt) == 3  # what keep_threads wrote
    assert run_threads(pinned, ckpt) == 2  # a number is the number


def _rank(rank: int, port: int, folder: str) -> None:
    """One rank of a 2-process gloo group: rank 0 decides 1 thread, rank 1 would take 2."""
    import torch.distributed as dist

    from segops.train.device import Runtime, keep_threads

    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        from pathlib import Path

        mine = Runtime(torch.device("cpu"), None, False, False, False, False, 1 + rank)
        record = Path(folder) / f"rank{rank}" / "threads.txt"
        kept = keep_threads(mine, "auto", record, resuming=False)
        Path(folder, f"kept{rank}").write_text(f"{kept.threads} {torch.get_num_threads()}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_takes_rank_0s_count_and_only_rank_0_writes_it(tmp_path):
    import torch.multiprocessing as mp
    from servers import free_port

    mp.start_processes(_rank, (free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert (tmp_path / "kept0").read_text() == "1 1"
    assert (tmp_path / "kept1").read_text() == "1 1"  # rank 1 decided 2, took rank 0's 1
    assert (tmp_path / "rank0" / "threads.txt").read_text() == "1\n"
    assert not (tmp_path / "rank1").exists()
