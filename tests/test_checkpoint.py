"""helpers/checkpoint.py and the checkpoint files: atomic writes, which file resume and sample read, files that
would run code, damaged files, out_dir and --overwrite, meta.pkl, and nanoGPT's checkpoints both ways."""
import errno
import io
import os
import pickle
import re
import resource
import signal
import subprocess
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from conftest import (CORE_DATASET, TEST_ROOT, RunsCode, assert_user_error, checkpoint_files, core_text,
                      core_train_args, explicit_attention, run_inproc)
from helpers import UserError, checkpoint, data, files, hardware, metrics, runs
from model import GPT, GPTConfig

def small_state(value=1.0):
    return {'model': {'w': torch.full((4, 4), value)}, 'model_args': {'n_layer': 1}, 'iter_num': int(value)}

def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

def no_links(*args):
    raise OSError(errno.EPERM, 'links not supported')

# ----------------------------------------------------------------------------- atomic writes

def half_written(obj, f, *args, **kwargs):
    f.write(b'PK\x03\x04 half a checkpoint')  # some bytes reach the file first
    disk_full()

@pytest.mark.parametrize('failure', ['torch.save', 'fsync', 'replace', 'mirror'])
def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    """A full disk (ENOSPC) while writing, flushing or renaming, or copying ckpt.pt to latest.pt where links are
    not possible: the old file stays, byte for byte, no temporary file is left, and the error is one line."""
    checkpoint.save(small_state(1.0), str(tmp_path))
    before, real_save = (tmp_path / 'ckpt.pt').read_bytes(), torch.save
    patches = {'torch.save': [(torch, 'save', half_written)], 'fsync': [(os, 'fsync', disk_full)],
               'replace': [(os, 'replace', disk_full)],
               'mirror': [(os, 'link', no_links), (checkpoint.shutil, 'copyfile', disk_full)]}
    for patch in patches[failure]:
        monkeypatch.setattr(*patch)
    with pytest.raises(UserError) as info:  # one line, not torch's chained traceback
        if failure == 'mirror':
            checkpoint.mirror(str(tmp_path), 'ckpt.pt', 'latest.pt')
        else:
            checkpoint.save(small_state(2.0), str(tmp_path))
    monkeypatch.undo()
    assert str(info.value) == (f"could not save {tmp_path / ('latest.pt' if failure == 'mirror' else 'ckpt.pt')} "
                               "(No space left on device); the checkpoints already there (ckpt.pt) are intact: free "
                               "some space on that disk, then continue with --init_from=resume")
    assert torch.save is real_save and os.listdir(tmp_path) == ['ckpt.pt']
    assert (tmp_path / 'ckpt.pt').read_bytes() == before and checkpoint.load(str(tmp_path))['iter_num'] == 1

def test_a_save_past_a_real_file_size_limit_is_one_line_and_keeps_the_checkpoints(copy_run):
    """Writes past RLIMIT_FSIZE fail (EFBIG, SIGXFSZ ignored) as on a full disk: the kernel's error, not a fake."""
    before = {name: (copy_run / name).read_bytes() for name in ('ckpt.pt', 'latest.pt')}
    assert min(map(len, before.values())) > 100_000
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
    try:
        result = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', max_iters=22))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert_user_error(result, f"could not save {copy_run / 'latest.pt'} (File too large)",
                      '(latest.pt and ckpt.pt) are intact', 'ulimit -f', '--init_from=resume')
    assert result.stderr.count('\n') == 1, result.stderr
    assert {name: (copy_run / name).read_bytes() for name in before} == before
    assert checkpoint_files(copy_run) == ['ckpt.pt', 'latest.pt']  # and no temporary file

def test_a_save_killed_halfway_leaves_the_old_file_and_the_next_saves_clean_up(tmp_path):
    """A process killed (SIGKILL) halfway through writing: the old checkpoint still loads and is still the one
    resume reads. The next saves delete the dead writer's temporary files (and folders, as an export's), not a
    living one's, nor names that only look like orphans, nor other hosts' files."""
    out_dir = str(tmp_path)
    checkpoint.save(small_state(1.0), out_dir, checkpoint.LATEST_NAME)
    before = (tmp_path / 'latest.pt').read_bytes()
    pid = os.fork()
    if pid == 0:  # the child writes half a file, then dies without any cleanup
        try:
            def dying_save(obj, f, *args, **kwargs):
                f.write(b'PK\x03\x04 half a checkpoint')
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save = dying_save
            checkpoint.save(small_state(2.0), out_dir, checkpoint.LATEST_NAME)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / 'latest.pt').read_bytes() == before and runs.resume_name(out_dir) == 'latest.pt'
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 1
    assert os.path.exists(files.temp_path(str(tmp_path / 'latest.pt'), pid))

    def temp(pid, name='ckpt.pt'):
        return os.path.basename(files.temp_path(str(tmp_path / name), pid))
    keep = [temp(os.getppid(), 'latest.pt'), temp('99999999999999999999'), temp('\u00b2'), temp(f'{pid}x'),
            f'ckpt.pt.tmp.another-host.{pid}', f'ckpt.pt.tmp.{pid}']
    for name in keep:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / temp(pid)).mkdir()
    (tmp_path / temp(pid) / 'config.json').write_text('{}')
    checkpoint.save(small_state(3.0), out_dir, checkpoint.LATEST_NAME)
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 3
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ['latest.pt', temp(pid)])
    (tmp_path / temp(pid, 'latest.pt')).write_bytes(b'orphan of a mirror')
    checkpoint.save(small_state(4.0), out_dir)
    checkpoint.mirror(out_dir, 'ckpt.pt', 'latest.pt')
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 4
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ['ckpt.pt', 'latest.pt'])

def test_save_writes_one_file_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: (events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}'))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, 'replace', lambda src, dst: (events.append(('replace', str(src), str(dst))),
                                                         real_replace(src, dst))[1])
    path = checkpoint.save(small_state(1.0), str(tmp_path))
    monkeypatch.undo()
    assert path == str(tmp_path / 'ckpt.pt') and os.listdir(tmp_path) == ['ckpt.pt']
    assert checkpoint.load(str(tmp_path))['iter_num'] == 1
    assert len(events) == 3, events
    (kind1, synced), (kind2, src, dst), (kind3, synced_dir) = events
    assert kind1 == 'fsync' and synced == src and src.startswith(path + '.tmp')  # the new file's data
    assert kind2 == 'replace' and dst == path
    assert kind3 == 'fsync' and synced_dir == str(tmp_path)  # the rename itself
    real_open = os.open   # on Windows a folder cannot be opened to fsync it: the save must not try

    def no_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, 'Permission denied')
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, 'open', no_folders)
    monkeypatch.setattr(os, 'name', 'nt')
    checkpoint.save(small_state(5.0), str(tmp_path))
    monkeypatch.undo()
    assert checkpoint.load(str(tmp_path))['iter_num'] == 5

def test_mirror_links_without_aliasing_later_writes_and_which_file_resume_and_sample_read(tmp_path, monkeypatch):
    out_dir = str(tmp_path)
    assert runs.resume_name(out_dir) == 'ckpt.pt' and runs.sample_name(out_dir) == 'ckpt.pt'
    checkpoint.save(small_state(1.0), out_dir, 'latest.pt')
    assert runs.resume_name(out_dir) == 'latest.pt' and runs.sample_name(out_dir) == 'latest.pt'
    checkpoint.save(small_state(1.0), out_dir)
    assert runs.resume_name(out_dir) == 'latest.pt'  # where training stopped
    assert runs.sample_name(out_dir) == 'ckpt.pt'  # nanoGPT's: the best or the last evaluated
    checkpoint.mirror(out_dir, 'ckpt.pt', 'latest.pt')
    assert (tmp_path / 'latest.pt').read_bytes() == (tmp_path / 'ckpt.pt').read_bytes()
    checkpoint.save(small_state(2.0), out_dir, 'latest.pt')  # a later save of one replaces that file only
    assert checkpoint.load(out_dir, 'ckpt.pt')['iter_num'] == 1
    monkeypatch.setattr(os, 'link', no_links)  # where hard links are not possible, a copy
    checkpoint.mirror(out_dir, 'ckpt.pt', 'latest.pt')
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 1
    assert sorted(os.listdir(out_dir)) == ['ckpt.pt', 'latest.pt']
    # torch.save's format before PyTorch 1.6 is a pickle too, and still loads
    torch.save(small_state(7.0), tmp_path / 'ckpt.pt', _use_new_zipfile_serialization=False)
    assert checkpoint.load(out_dir)['iter_num'] == 7

def mapped_file(tensor):
    """The file whose mapping holds the tensor's data, from /proc/self/maps (Linux), or None."""
    with open('/proc/self/maps') as f:
        for line in f:
            start, end = (int(x, 16) for x in line.split()[0].split('-'))
            if start <= tensor.data_ptr() < end:
                return line.split()[-1] if line.split()[-1].startswith('/') else None

@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason="reads Linux's /proc/self/maps")
def test_a_memory_mapped_load_leaves_the_tensors_in_the_file(tmp_path):
    """What every rank of a resumed torchrun does: one copy of the file's pages, shared."""
    checkpoint.save(small_state(6.0), str(tmp_path))
    assert mapped_file(checkpoint.load(str(tmp_path), mmap=True)['model']['w']) == str(tmp_path / 'ckpt.pt')
    assert mapped_file(checkpoint.load(str(tmp_path))['model']['w']) != str(tmp_path / 'ckpt.pt')

def test_device_sync_waits_on_the_device_it_is_given(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.accelerator, 'synchronize', waited.append)
    hardware.sync('cuda:1')
    hardware.sync('cpu')
    assert list(map(torch.device, waited)) == [torch.device('cuda:1')]

# ----------------------------------------------------------------------------- files that would run code, damage

class CustomObject:
    pass

def saved(obj, **kwargs):
    """obj as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()

MARKER = os.path.join(TEST_ROOT, 'PWNED')  # created by unpickling RunsCode(MARKER)
DAMAGE = {'truncated': lambda good: good[:len(good) // 2], 'cut after 10 bytes': lambda good: good[:10],
          'empty': lambda good: b'', 'random bytes': lambda good: bytes((i * 7919 + 13) % 256 for i in range(5000)),
          'text': lambda good: b'this is not a checkpoint\n' * 50, 'zeros': lambda good: b'\0' * 5000,
          'flipped bytes': lambda good: good[:2000] + bytes(b ^ 0xFF for b in good[2000:4000]) + good[4000:]}
BAD_META = {'empty': b'', 'cut header': b'\x80\x04\x95', 'text': b'garbage bytes that are not a pickle',
            'lines': b'hello world\n' * 10, 'persistent id': b'Q',
            'bytes': bytes((i * 31 + 7) % 256 for i in range(3000)), 'no stop': pickle.dumps({'vocab_size': 65})[:-1]}
NOT_OURS = ['not a checkpoint that this project or nanoGPT wrote', 'plain pickle', 'not loaded']
UNREADABLE = {  # case: the file, its bytes (from a good ckpt.pt's), what its one-line refusal says
    **{f'ckpt.pt {kind}': ('ckpt.pt', damage, ['truncated or corrupt']) for kind, damage in DAMAGE.items()},
    **{f'meta.pkl {kind}': ('meta.pkl', lambda good, b=bad: b, ['meta.pkl', 'truncated or corrupt', 'prepare.py'])
       for kind, bad in BAD_META.items()},
    'meta.pkl a list': ('meta.pkl', lambda good: pickle.dumps([1, 2]), ['meta.pkl', 'holds a list, not a dict']),
    # an object whose unpickling runs code, or any class at all, even a harmless one
    'ckpt.pt running code': ('ckpt.pt', lambda good: saved(dict(small_state(), config={'note': RunsCode(MARKER)})),
                             ['refused', 'run code']),
    'ckpt.pt with a class': ('ckpt.pt', lambda good: saved({'model': {}, 'model_args': {}, 'extra': CustomObject()}),
                             ['refused', 'run code']),
    **{f'meta.pkl {kind}': ('meta.pkl', lambda good, v=value: pickle.dumps({'vocab_size': 3, 'itos': v}),
                            ['refused', 'plain data']) for kind, value in (('running code', RunsCode(MARKER)),
                                                                          ('with a class', CustomObject()))},
    # a plain pickle is not even unpickled
    **{f'ckpt.pt {content} (protocol {protocol})': ('ckpt.pt', lambda good, c=content, p=protocol: pickle.dumps(c, p),
                                                    NOT_OURS) for content in ({'a': 1}, np.zeros(3))
       for protocol in (2, pickle.HIGHEST_PROTOCOL)},
    **{f'ckpt.pt holding {content}': ('ckpt.pt', lambda good, c=content: saved(c), ['not a training checkpoint'])
       for content in ([1, 2, 3], {'model': {}}, {'weights': torch.zeros(2)})},
}

@pytest.mark.parametrize('case', UNREADABLE)
def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tiny_run, tmp_path, capfd, case):
    """Damage reported as damage, danger as danger: nothing is run, and torch says nothing (its warnings would be
    lines of their own)."""
    file, content, fragments = UNREADABLE[case]
    (tmp_path / file).write_bytes(content((tiny_run.out_dir / 'ckpt.pt').read_bytes()))
    with warnings.catch_warnings(record=True) as warned, pytest.raises(UserError) as info:
        warnings.simplefilter('always')
        checkpoint.load(str(tmp_path)) if file == 'ckpt.pt' else data.load_meta(str(tmp_path / file))
    message = str(info.value)
    assert not warned and capfd.readouterr().err == '' and '\n' not in message
    assert all(fragment in message for fragment in fragments), message
    assert all(word in fragments or word not in message for word in ('refused', 'run code')), message
    assert not os.path.exists(MARKER)

def test_a_damaged_file_names_the_whole_one_beside_it(tiny_run, tmp_path):
    (tmp_path / 'ckpt.pt').write_bytes((tiny_run.out_dir / 'ckpt.pt').read_bytes())
    (tmp_path / 'latest.pt').write_bytes(b'\0' * 100)
    with pytest.raises(UserError) as info:
        checkpoint.load(str(tmp_path), runs.resume_name(str(tmp_path)))
    command = re.search(r'\((mv [^)]*)\) and run the same command again$', str(info.value)).group(1)
    assert 'ckpt.pt beside it loads (ckpt.pt after iteration 19, best val loss' in str(info.value)
    subprocess.run(command, shell=True, check=True)  # the command as given: resume then reads ckpt.pt
    assert checkpoint.load(str(tmp_path), runs.resume_name(str(tmp_path)))['iter_num'] == 20
    os.remove(tmp_path / 'ckpt.pt')  # nothing whole beside it: the old advice
    with pytest.raises(UserError, match='restore it from a backup or train again'):
        checkpoint.load(str(tmp_path), 'latest.pt.damaged')

# ----------------------------------------------------------------------------- out_dir and --overwrite=True

def run_files(folder):
    """The run's files in folder: what --overwrite=True moves aside whole."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in ('train.lock', 'README.txt')}

def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved(copy_run, capsys):
    out, old = str(copy_run), run_files(copy_run)
    lock = runs.claim_out_dir(out, resuming=False, overwrite=True)
    assert re.search(r"the run that was here \(latest\.pt after iteration 20, best val loss \d\.\d{4}\) was moved to "
                     rf"{re.escape(out)}/replaced/; it is deleted once this run saves its first checkpoint",
                     capsys.readouterr().out)
    assert run_files(copy_run) == {} and run_files(copy_run / 'replaced') == old
    runs.discard_replaced(out)  # the new run has no checkpoint yet: the old one stays
    assert run_files(copy_run / 'replaced') == old
    lock.close()
    (copy_run / 'metrics.csv').write_text('the log of a run that never saved\n')
    with pytest.raises(UserError) as info:  # resume, sample and export name the run and how to restore it
        checkpoint.load(out, runs.resume_name(out))
    assert f'no checkpoint at {out}/ckpt.pt: the run that was in {out} (latest.pt after iteration 20' in str(info.value)
    with pytest.raises(UserError, match='holds no checkpoint, but the run that was in'):  # a new run without overwrite
        runs.claim_out_dir(out, resuming=False, overwrite=False)
    # a second overwrite before the new run saved keeps the run moved aside by the first
    runs.claim_out_dir(out, resuming=False, overwrite=True).close()
    assert 'stays there' in capsys.readouterr().out and run_files(copy_run / 'replaced') == old
    subprocess.run(runs.replaced_run_note(out).split('to restore it: ')[1], shell=True, check=True)
    assert run_files(copy_run) == old and not (copy_run / 'replaced').exists()
    assert runs.replaced_run_note(out) == ''
    runs.claim_out_dir(out, resuming=False, overwrite=True).close()
    checkpoint.save(small_state(9.0), out, 'latest.pt')
    (copy_run / 'metrics.csv').write_text('the new run\n')
    # the new run saved but was stopped before it deleted replaced/: that run is the one to move aside now
    runs.claim_out_dir(out, resuming=False, overwrite=True).close()
    assert checkpoint.load(os.path.join(out, 'replaced'), 'latest.pt')['iter_num'] == 9
    assert sorted(os.listdir(copy_run / 'replaced')) == ['README.txt', 'latest.pt', 'metrics.csv']
    checkpoint.save(small_state(10.0), out, 'latest.pt')
    runs.discard_replaced(out)
    assert not (copy_run / 'replaced').exists() and 'deleted the run in' in capsys.readouterr().out

def test_a_log_without_a_checkpoint_is_no_run(tmp_path, core_dataset):
    """What a first run that failed at its first save leaves: the same command runs, with a log of its own."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'metrics.csv').write_text(','.join(metrics.COLUMNS) + '\n50,train,1,2.0,,0.1,1.0,\n')
    (out / 'train.lock').write_text('12345\n')
    run_inproc('train.py', *core_train_args(out, max_iters=2, eval_interval=100), check=True)
    assert [r['iter'] for r in metrics.read_metrics(str(out / 'metrics.csv'))] == [0, 0, 1, 2]

@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_nanogpt_meta_pkl_loads(tmp_path, protocol):
    """meta.pkl as nanoGPT's shakespeare_char/prepare.py writes it, in every pickle protocol, and other plain data."""
    chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n"))
    meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': {ch: i for i, ch in enumerate(chars)}}
    for content in (meta, {'a': [1, 2.5, True, None, 'x'], 'b': (1, (2, 3)), 'c': {1: {'d': False}}}):
        (tmp_path / 'meta.pkl').write_bytes(pickle.dumps(content, protocol=protocol))
        assert data.load_meta(str(tmp_path / 'meta.pkl')) == content

# ----------------------------------------------------------------------------- nanoGPT's checkpoints here

NANOGPT_CONFIG = dict(  # nanoGPT's train.py settings, with its defaults: the config its checkpoints hold
    out_dir='out', eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False, always_save_checkpoint=True,
    init_from='scratch', wandb_log=False, wandb_project='owt', wandb_run_name='gpt2', dataset='openwebtext',
    gradient_accumulation_steps=40, batch_size=12, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    bias=False, learning_rate=6e-4, max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5, backend='nccl', device='cuda',
    dtype='bfloat16', compile=True,
)

def nanogpt_adamw(model, **kwargs):
    """nanoGPT's AdamW: two groups, the matrices decayed."""
    params = list(model.parameters())
    return torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
                              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}], lr=1e-3, **kwargs)

def nanogpt_style_checkpoint(out_dir, compiled=True, mask_buffers=False):
    """Write out_dir/ckpt.pt the way nanoGPT's train.py does: its 7 model_args, the state dict of a
    torch.compile'd model (every name prefixed), AdamW in two groups, best_val_loss as a 0-dim
    tensor, its config dict, and nothing else."""
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=len(set(core_text())),
                      dropout=0.0)
    torch.manual_seed(123)
    model = GPT(GPTConfig(**model_args))
    optimizer = nanogpt_adamw(model, betas=(0.9, 0.99))
    x = torch.randint(model_args['vocab_size'], (2, 32))
    for _ in range(3):
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state_dict = model.state_dict()
    if mask_buffers:  # what nanoGPT saved on PyTorch builds without flash attention
        for i in range(model_args['n_layer']):
            state_dict[f'transformer.h.{i}.attn.bias'] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    if compiled:
        state_dict = {f'_orig_mod.{k}': v for k, v in state_dict.items()}
    config = dict(NANOGPT_CONFIG, dataset=CORE_DATASET, out_dir=str(out_dir), batch_size=4,
                  **{k: v for k, v in model_args.items() if k != 'vocab_size'})
    os.makedirs(out_dir, exist_ok=True)
    torch.save({'model': state_dict, 'optimizer': optimizer.state_dict(), 'model_args': model_args, 'iter_num': 40,
                'best_val_loss': torch.tensor(2.25), 'config': config}, os.path.join(out_dir, 'ckpt.pt'))
    return model

@pytest.mark.parametrize('compiled,mask_buffers', [(True, False), (False, True)])
def test_nanogpt_checkpoint_resumes_and_samples(core_dataset, tmp_path, compiled, mask_buffers):
    out_dir = tmp_path / 'out'
    original = nanogpt_style_checkpoint(out_dir, compiled=compiled, mask_buffers=mask_buffers)
    # resume: the architecture comes from the checkpoint, not from train.py's defaults
    args = core_train_args(out_dir, init_from='resume', max_iters=42, eval_interval=1000,
                           n_layer=None, n_head=None, n_embd=None, block_size=None, bias=None, dropout=None)
    result = run_inproc('train.py', *args, check=True)
    assert f"Resuming training from {out_dir / 'ckpt.pt'}" in result.stdout
    assert [line.split(':')[0] for line in result.stdout.splitlines() if line.startswith('iter ')] == \
        ['iter 40', 'iter 41', 'iter 42']
    latest = checkpoint.load(str(out_dir), 'latest.pt')
    assert latest['iter_num'] == 43 and latest['best_val_loss'] == pytest.approx(2.25)
    assert latest['model_args']['n_embd'] == 32
    # the optimizer state carried on: 3 steps in "nanoGPT" plus 3 here
    assert {int(s['step']) for s in latest['optimizer']['state'].values()} == {6}
    # sampling from nanoGPT's file (ckpt.pt, still the nanoGPT one: no evaluation happened)
    result = run_inproc('sample.py', f'--out_dir={out_dir}', '--device=cpu', '--num_samples=2',
                        '--max_new_tokens=12', '--start=the cat', check=True)
    text = result.stdout.split('Loading meta from')[1].split('\n', 1)[1]  # after the set-up lines
    samples = [s.strip('\n') for s in text.split('---------------') if s.strip()]
    assert len(samples) == 2
    assert all(s.startswith('the cat') and len(s) == len('the cat') + 12 for s in samples), samples
    # and the weights it sampled with are nanoGPT's
    loaded = checkpoint.model_from_checkpoint(checkpoint.load(str(out_dir), 'ckpt.pt'))
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

# ----------------------------------------------------------------------------- our checkpoints in nanoGPT

@dataclass
class NanoGPTConfig:
    """Exactly the fields of nanoGPT's GPTConfig."""
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class NanoGPTNames(nn.Module):
    """A module tree with nanoGPT's parameter names and shapes (and its tied output layer), and GPT-2 written
    out plainly: exact GELU, explicit causal attention. Logits at every position."""

    def __init__(self, cfg):
        super().__init__()
        C, bias = cfg.n_embd, cfg.bias
        block = lambda: nn.ModuleDict(dict(  # noqa: E731
            ln_1=nn.LayerNorm(C, bias=bias), ln_2=nn.LayerNorm(C, bias=bias),
            attn=nn.ModuleDict(dict(c_attn=nn.Linear(C, 3 * C, bias=bias), c_proj=nn.Linear(C, C, bias=bias))),
            mlp=nn.ModuleDict(dict(c_fc=nn.Linear(C, 4 * C, bias=bias), c_proj=nn.Linear(4 * C, C, bias=bias)))))
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, C), wpe=nn.Embedding(cfg.block_size, C),
            h=nn.ModuleList([block() for _ in range(cfg.n_layer)]), ln_f=nn.LayerNorm(C, bias=bias)))
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        B, T = idx.shape
        C, H, t = self.cfg.n_embd, self.cfg.n_head, self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(T))
        for blk in t.h:
            q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in blk.attn.c_attn(blk.ln_1(x)).split(C, dim=2))
            x = x + blk.attn.c_proj(explicit_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C))
            x = x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(blk.ln_2(x))))
        return self.lm_head(t.ln_f(x))

@pytest.mark.parametrize('name', ['ckpt.pt', 'latest.pt'])
def test_our_checkpoint_loads_with_nanogpt_steps(tiny_run, name):
    # nanoGPT's sample.py: torch.load (weights only), GPTConfig(**model_args), strip the compile
    # prefix, strict load_state_dict
    ckpt = torch.load(os.path.join(tiny_run.out_dir, name), map_location='cpu', weights_only=True)
    cfg = NanoGPTConfig(**ckpt['model_args'])
    model = NanoGPTNames(cfg)
    model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}, strict=True)
    # what else its sample.py and train.py (resume) read
    assert isinstance(ckpt['config']['dataset'], str)
    assert isinstance(ckpt['iter_num'], int) and float(ckpt['best_val_loss']) < 10
    nanogpt_adamw(model).load_state_dict(ckpt['optimizer'])  # its resume loads our optimizer state
    # and it computes what our model computes
    ours = checkpoint.model_from_checkpoint(checkpoint.load(str(tiny_run.out_dir), name)).eval()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx, idx)[0], model.eval()(idx), atol=1e-5, rtol=1e-5)

def test_model_args_are_always_nanogpts_and_newer_fields_go_beside_them(tiny_run):
    plain = checkpoint.architecture_entries(GPTConfig(block_size=32, vocab_size=17, n_layer=2, n_head=2, n_embd=32))
    assert list(plain) == ['model_args'] and set(plain['model_args']) == set(checkpoint.NANOGPT_MODEL_ARGS)
    NanoGPTConfig(**plain['model_args'])
    # GPT-2's tanh GELU (from_pretrained) must be recorded, or the model would change on reload,
    # and nanoGPT's GPTConfig must still accept model_args
    config = GPTConfig(block_size=32, vocab_size=17, n_layer=2, n_head=2, n_embd=32, activation='gelu_tanh')
    tanh = checkpoint.architecture_entries(config)
    NanoGPTConfig(**tanh['model_args'])
    assert tanh['model_args_extra'] == {'activation': 'gelu_tanh'}
    assert checkpoint.model_from_checkpoint({'model': GPT(config).state_dict(), **tanh}).config.activation == \
        'gelu_tanh'
    state = checkpoint.load(str(tiny_run.out_dir))  # a checkpoint of a newer version is refused clearly
    state['model_args']['rotary'] = True
    with pytest.raises(UserError, match='rotary'):
        checkpoint.model_from_checkpoint(state)
