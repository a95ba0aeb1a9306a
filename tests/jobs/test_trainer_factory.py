"""How many CPUs a training process reserves when the config does not say, and the threads it trains on."""

from __future__ import annotations

import pytest

from promptray.jobs.trainer_factory import cpu_share


@pytest.mark.parametrize(("processes", "nodes", "available", "cpus"), [
    (1, [2.0], 2.0, 2.0),  # one process on a 2-CPU machine: both cores (Ray's default was 1)
    (2, [2.0], 2.0, 1.0),
    (3, [2.0], 2.0, 1.0),  # at least 1: the third waits for a CPU
    (1, [2.0], 1.0, 1.0),  # a serve replica holds the other CPU: take what is free
    (1, [2.0], 0.0, 1.0),  # nothing free: 1, and Ray queues it as before
    (1, [0.0, 16.0, 16.0, 16.0], None, 16.0),  # a process runs on one node; a head node with no CPU is not one
    (4, [16.0, 16.0, 16.0], None, 8.0),  # two processes on a node, four at once
    (4, [16.0, 16.0, 16.0], 48.0, 8.0),
    (1, [], None, 1.0),
])
def test_cpu_share(processes, nodes, available, cpus):
    assert cpu_share(processes, nodes, available) == cpus


@pytest.mark.ray
def test_a_worker_reserves_the_free_cpus_and_trains_on_as_many_threads(tmp_path, tiny_gpt2_path, ray_local):
    import ray

    from promptray.jobs.config import load_job_config
    from promptray.jobs.trainer_factory import use_reserved_cpus, worker_resources
    from tests.jobs.test_train_job import job_config

    raw = job_config(tmp_path, tiny_gpt2_path)
    free = ray.available_resources().get("CPU", 0)  # ray_local's 2 CPUs, unless an earlier test holds some
    assert worker_resources(load_job_config(raw), 1) == {"CPU": max(1.0, min(2.0, free))}
    assert worker_resources(load_job_config(raw), 2) == {"CPU": 1.0}
    raw["ray"] = {"resources_per_worker": {"CPU": 1}}
    assert worker_resources(load_job_config(raw), 1) == {"CPU": 1.0}  # as set

    @ray.remote
    def threads():
        import torch

        torch.set_num_threads(5)  # what an earlier task in a pooled worker may have left
        return use_reserved_cpus(), torch.get_num_threads()

    assert ray.get(threads.options(num_cpus=2).remote()) == (2, 2)
    assert ray.get(threads.options(num_cpus=1).remote()) == (1, 1)
