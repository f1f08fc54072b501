"""torch.compile on the CPU (inductor, with the machine's C++ compiler): training and sampling compiled give
eager's losses and greedy tokens, and really compiled; a compiler that fails says so in one line instead of
running eagerly in silence."""
import pytest
import torch

import tiny_runs
from conftest import assert_user_error, compiled_graphs, core_text, core_train_args, iteration_losses, run_script

def graph_breaks():
    return dict(torch._dynamo.utils.counters['graph_break'])

def test_compiled_training_equals_eager(tiny_run, tmp_path):
    # tiny_run's shapes with activation checkpointing, as test_parallel's compiled DDP run: compiling, most of the
    # time here, is done once for both (inductor's cache). The whole model is one graph (FSDP's blocks: test_parallel)
    compiled, graphs = compiled_graphs('train.py', *core_train_args(tmp_path / 'out', compile=True, max_iters=10,
                                                                    activation_checkpointing=True))
    assert graphs >= 2 and not graph_breaks(), (graphs, graph_breaks())  # training, and evaluation's graph
    eager, ours = iteration_losses(tiny_run.stdout), iteration_losses(compiled.stdout)
    assert sorted(ours) == list(range(11)) and ours[10] < ours[0] - 0.3
    # inductor fuses kernels and so rounds differently: the same losses to float32 noise
    assert all(ours[i] == pytest.approx(eager[i], abs=2e-3) for i in ours), (eager, ours)

def test_compiled_sampling_gives_the_greedy_tokens_of_eager(core_dataset, tmp_path):
    # one layer, as compiling is most of the time; 40 steps past the prompt, over block_size (32) too: a few graphs
    # for any length (the prompt, the cached steps, then the cropped window), each the whole model; a graph break
    # would split it per layer, and past 8 layers reach torch's recompile limit, after which generation runs eagerly
    model = tiny_runs.make_model(n_layer=1, block_size=32, vocab_size=len(set(core_text())))
    tiny_runs.save_checkpoint(model, str(tmp_path), core_dataset)
    greedy = [f'--out_dir={tmp_path}', '--device=cpu', '--num_samples=2', '--max_new_tokens=40', '--top_k=1',
              '--start=the cat']
    plain, _ = compiled_graphs('sample.py', *greedy)
    fast, graphs = compiled_graphs('sample.py', *greedy, '--compile=True')
    assert 1 <= graphs <= 4 and not graph_breaks(), (graphs, graph_breaks())
    assert fast.stdout.split('Overriding: compile = True')[1] == plain.stdout.split("Overriding: start = 'the cat'")[1]

def test_a_compiler_that_fails_is_one_line(tmp_path, core_dataset):
    result = run_script('train.py', *core_train_args(tmp_path / 'out', compile=True, max_iters=1), check=False,
                        env={'CXX': '/nonexistent/c++', 'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'cache')})
    assert_user_error(result, 'torch.compile failed', '--compile=False')
    assert 'iter 0:' not in result.stdout  # it never went on eagerly
