"""FSDP (fully_shard) under torchrun on 2 CPU processes over gloo: the same training as DDP,
and checkpoints in the same full-state format, which resume without FSDP."""
import re

import torch

from conftest import core_train_args, run_script

TORCHRUN = ('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py')


def losses(stdout):
    return [float(x) for x in re.findall(r'^iter \d+: loss ([\d.]+)', stdout, re.M)]


def test_fsdp_matches_ddp_and_writes_the_same_checkpoint(core_dataset, tmp_path):
    settings = dict(max_iters=6, eval_interval=3, gradient_accumulation_steps=2, dropout=0.0)
    ddp = run_script(*TORCHRUN, *core_train_args(tmp_path / 'ddp', **settings))
    fsdp = run_script(*TORCHRUN, *core_train_args(tmp_path / 'fsdp', fsdp=True, **settings))
    ddp_losses, fsdp_losses = losses(ddp.stdout), losses(fsdp.stdout)
    assert len(ddp_losses) == len(fsdp_losses) == 7
    assert max(abs(a - b) for a, b in zip(ddp_losses, fsdp_losses)) < 1e-4
    assert fsdp_losses[-1] < fsdp_losses[0]

    a = torch.load(tmp_path / 'ddp' / 'latest.pt', weights_only=True)
    b = torch.load(tmp_path / 'fsdp' / 'latest.pt', weights_only=True)
    assert sorted(a) == sorted(b)
    assert list(a['model']) == list(b['model'])
    for name, tensor in a['model'].items():
        torch.testing.assert_close(b['model'][name], tensor, rtol=0, atol=1e-5)
    assert a['optimizer']['param_groups'] == b['optimizer']['param_groups']
    assert sorted(a['optimizer']['state']) == sorted(b['optimizer']['state'])
    for i, state in a['optimizer']['state'].items():
        torch.testing.assert_close(b['optimizer']['state'][i]['exp_avg'], state['exp_avg'], rtol=0, atol=1e-6)
    assert b['iter_num'] == a['iter_num'] == 7

    # an FSDP checkpoint resumes in a single process, and a DDP one under FSDP
    single = run_script('train.py', *core_train_args(tmp_path / 'fsdp', init_from='resume', max_iters=8))
    assert re.search(r'^iter 7: loss', single.stdout, re.M)
    sharded = run_script(*TORCHRUN, *core_train_args(tmp_path / 'ddp', init_from='resume', fsdp=True, max_iters=8,
                                                    gradient_accumulation_steps=2))
    assert re.search(r'^iter 7: loss', sharded.stdout, re.M)


def test_fsdp_without_torchrun_is_a_clear_error(core_dataset, tmp_path):
    proc = run_script('train.py', *core_train_args(tmp_path / 'out', fsdp=True), check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith('error: fsdp=True')
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'out').exists()
