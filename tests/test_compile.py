"""torch.compile on the CPU (inductor, with the machine's C++ compiler): training and sampling
compiled give eager's losses and greedy tokens, and really compiled; a compiler that fails says so
in one line instead of running eagerly in silence."""
import pytest
import torch

from conftest import assert_user_error, compiled_graphs, core_train_args, iteration_losses, run_inproc, run_script


def test_compiled_training_and_sampling_equal_eager(tiny_run, tmp_path):
    # the whole model as one graph (with activation checkpointing, and under DDP and FSDP: test_parallel)
    compiled, graphs = compiled_graphs('train.py', *core_train_args(tmp_path / 'out', compile=True, max_iters=10))
    assert graphs >= 2, graphs  # training, and evaluation without dropout's graph
    assert not torch._dynamo.utils.counters['graph_break'], dict(torch._dynamo.utils.counters['graph_break'])
    eager, ours = iteration_losses(tiny_run.stdout), iteration_losses(compiled.stdout)
    assert sorted(ours) == list(range(11))
    # inductor fuses kernels and so rounds differently: the same losses to float32 noise
    assert all(ours[i] == pytest.approx(eager[i], abs=2e-3) for i in ours), (eager, ours)
    assert ours[10] < ours[0] - 0.3

    greedy = ['--device=cpu', '--num_samples=2', '--max_new_tokens=40', '--top_k=1', '--start=the cat']
    plain = run_inproc('sample.py', f'--out_dir={tmp_path / "out"}', *greedy, check=True).stdout
    fast, graphs = compiled_graphs('sample.py', f'--out_dir={tmp_path / "out"}', *greedy, '--compile=True')
    # 40 steps past the prompt, over block_size (32) too: a few graphs for any length (the prompt, the cached steps,
    # then the cropped window), each the whole model; a graph break would split it per layer, and past 8 layers
    # reach torch's recompile limit, after which generation runs eagerly
    breaks = dict(torch._dynamo.utils.counters['graph_break'])
    assert 1 <= graphs <= 4 and not breaks, (graphs, breaks)
    assert fast.stdout.split('Overriding: compile = True')[1] == plain.split("Overriding: start = 'the cat'")[1]


def test_a_compiler_that_fails_is_one_line(tmp_path, core_dataset):
    result = run_script('train.py', *core_train_args(tmp_path / 'out', compile=True, max_iters=1), check=False,
                        env={'CXX': '/nonexistent/c++', 'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'cache')})
    assert_user_error(result, 'torch.compile failed', '--compile=False')
    assert 'iter 0:' not in result.stdout  # it never went on eagerly
