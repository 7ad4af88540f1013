"""Data-parallel training over processes (torch.distributed, gloo on the CPU) is the one-process run
with the same batch: the same losses and the same learned weights, within float rounding."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from echodistill_core.parallel import Shard
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer
from conftest import SIZE, make_concept, tiny_config

STEPS = 3


def run(config) -> dict:
    """`config`'s run on the tiny pair: every step's losses and the learned tensors at the end."""
    torch.set_num_threads(1)
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    trainer.train()
    learned = {"token": trainer.token.vector.detach().clone(),
               **{f"teacher.{k}": v.clone() for k, v in trainer.teacher_adapters.state_dict().items()},
               **{f"student.{k}": v.clone() for k, v in trainer.student_adapters.state_dict().items()},
               **{f"head{i}.{k}": v.clone() for i, d in enumerate(trainer.discriminators)
                  for k, v in d.head.state_dict().items()}}
    return {"history": trainer.history, "learned": learned}


def _process(rank: int, world: int, address: str, config, results: str) -> None:
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        outcome = run(config)
        if rank == 0:
            torch.save(outcome, results)
    finally:
        dist.destroy_process_group()


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def two_processes(config, tmp_path) -> dict:
    results = tmp_path / "rank0.pt"
    mp.spawn(_process, args=(2, free_address(), config, str(results)), nprocs=2, join=True)
    return torch.load(results)


@pytest.fixture(scope="module")
def config():
    return tiny_config(steps=STEPS, batch_size=4, echo=False)


def test_two_processes_learn_what_one_process_learns_from_the_combined_batch(config, tmp_path):
    alone, shared = run(config), two_processes(config, tmp_path)
    assert len(shared["history"]) == STEPS
    for one, two in zip(alone["history"], shared["history"]):
        assert one.keys() == two.keys()
        for name in one:
            assert two[name] == pytest.approx(one[name], rel=1e-4, abs=1e-6), (one["step"], name)
    # AdamW divides each gradient by its own running size, so the rounding of a near-zero gradient can move
    # its weight by up to a learning rate: the weights agree to 5 % of the most any of them moved.
    moved = STEPS * max(config.teacher_lr, config.student_lr, config.token_lr, config.discriminator_lr)
    assert alone["learned"].keys() == shared["learned"].keys()
    for name, value in alone["learned"].items():
        torch.testing.assert_close(shared["learned"][name], value, rtol=0, atol=0.05 * moved, msg=name)


def test_the_echo_stage_runs_on_two_processes(tmp_path):
    """Its samples are drawn for the whole batch and each process scores its own slice."""
    shared = two_processes(tiny_config(steps=2, batch_size=4, echo_start=0.5), tmp_path)
    assert [entry["step"] for entry in shared["history"]] == [1, 2]
    assert "echo" in shared["history"][1] and "echo" not in shared["history"][0]


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="multiple of 2"):
        Shard(0, 2).size(3)
    assert Shard(1, 2).take(list("abcd")) == ["c", "d"]
