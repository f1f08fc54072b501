"""Checkpoints: atomic saves, which file is read, unsafe or damaged files, out_dir, meta.pkl, nanoGPT's both ways."""
import errno
import io
import os
import pickle
import re
import resource
import signal
import subprocess
import warnings
from dataclasses import make_dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import (CORE_DATASET, TEST_ROOT, RunsCode, assert_user_error, checkpoint_files, core_train_args,
                      explicit_attention, iteration_losses, run_inproc, step_losses)
from helpers import UserError, checkpoint, data, files, hardware, runs
from model import GPT, GPTConfig

def small_state(value=1.0):
    return {'model': {'w': torch.full((4, 4), value)}, 'model_args': {'n_layer': 1}, 'iter_num': int(value)}

def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

def no_links(*args):
    raise OSError(errno.EPERM, 'links not supported')

def half_written(obj, f, *args, **kwargs):
    f.write(b'PK\x03\x04 half a checkpoint')  # some bytes reach the file first
    disk_full()

@pytest.mark.parametrize('failure', ['torch.save', 'fsync', 'replace', 'mirror'])
def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    """ENOSPC writing, syncing, renaming or copying (no links): the old file stays whole, no temp file, one line."""
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

def test_save_writes_one_file_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: (events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}'))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, 'replace', lambda src, dst: (events.append(('replace', str(src), str(dst))),
                                                         real_replace(src, dst))[1])
    path = checkpoint.save(small_state(1.0), str(tmp_path))
    monkeypatch.undo()
    assert path == str(tmp_path / 'ckpt.pt') and os.listdir(tmp_path) == ['ckpt.pt']
    tmp = files.temp_path(path)  # the new file's data synced, renamed over, and the rename itself synced
    assert events == [('fsync', tmp), ('replace', tmp, path), ('fsync', str(tmp_path))]
    real_open = os.open  # on Windows a folder cannot be opened to fsync it: the save must not try
    monkeypatch.setattr(os, 'open', lambda path, *args: no_links() if os.path.isdir(path) else real_open(path, *args))
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
    torch.save(small_state(7.0), tmp_path / 'ckpt.pt', _use_new_zipfile_serialization=False)  # before PyTorch 1.6
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

class CustomObject:
    pass

def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
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
    **{f'ckpt.pt {kind}': ('ckpt.pt', lambda good, v=value: saved(dict(small_state(), config={'note': v})),
                           ['refused', 'run code']) for kind, value in (('running code', RunsCode(MARKER)),
                                                                        ('with a class', CustomObject()))},
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
    """Damage reported as damage, danger as danger: nothing is run, and torch warns nothing (lines of their own)."""
    file, content, fragments = UNREADABLE[case]
    (tmp_path / file).write_bytes(content((tiny_run.out_dir / 'ckpt.pt').read_bytes()))
    with warnings.catch_warnings(record=True) as warned, pytest.raises(UserError) as info:
        warnings.simplefilter('always')
        checkpoint.load(str(tmp_path)) if file == 'ckpt.pt' else data.load_meta(str(tmp_path / file))
    message = str(info.value)
    assert not warned and capfd.readouterr().err == '' and '\n' not in message
    assert all(fragment in message for fragment in [file, *fragments]), message
    assert all(word in fragments or word not in message for word in ('refused', 'run code')), message
    assert not os.path.exists(MARKER)

def test_a_damaged_file_names_the_whole_one_beside_it(copy_run):
    (copy_run / 'latest.pt').write_bytes(b'\0' * 100)
    with pytest.raises(UserError) as info:
        checkpoint.load(str(copy_run), runs.resume_name(str(copy_run)))
    command = re.search(r'\((mv [^)]*)\) and run the same command again$', str(info.value)).group(1)
    assert 'ckpt.pt beside it loads (ckpt.pt after iteration 19, best val loss' in str(info.value)
    subprocess.run(command, shell=True, check=True)  # the command as given: resume then reads ckpt.pt
    assert checkpoint.load(str(copy_run), runs.resume_name(str(copy_run)))['iter_num'] == 20
    os.remove(copy_run / 'ckpt.pt')  # nothing whole beside it: the old advice
    with pytest.raises(UserError, match='restore it from a backup or train again'):
        checkpoint.load(str(copy_run), 'latest.pt.damaged')

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
    runs.claim_out_dir(out, resuming=False, overwrite=True).close()  # again before the new run saved: the first stays
    assert 'stays there' in capsys.readouterr().out and run_files(copy_run / 'replaced') == old
    subprocess.run(runs.replaced_run_note(out).split('to restore it: ')[1], shell=True, check=True)
    assert run_files(copy_run) == old and not (copy_run / 'replaced').exists()
    assert runs.replaced_run_note(out) == ''
    runs.claim_out_dir(out, resuming=False, overwrite=True).close()
    checkpoint.save(small_state(9.0), out, 'latest.pt')
    (copy_run / 'metrics.csv').write_text('the new run\n')
    runs.claim_out_dir(out, resuming=False, overwrite=True).close()  # the new run saved, was stopped: it moves aside
    assert checkpoint.load(os.path.join(out, 'replaced'), 'latest.pt')['iter_num'] == 9
    assert sorted(os.listdir(copy_run / 'replaced')) == ['README.txt', 'latest.pt', 'metrics.csv']
    checkpoint.save(small_state(10.0), out, 'latest.pt')
    runs.discard_replaced(out)
    assert not (copy_run / 'replaced').exists() and 'deleted the run in' in capsys.readouterr().out

@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_nanogpt_meta_pkl_loads(tmp_path, protocol):
    """meta.pkl as nanoGPT's shakespeare_char/prepare.py writes it, in every pickle protocol, and other plain data."""
    chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n"))
    meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': {ch: i for i, ch in enumerate(chars)}}
    for content in (meta, {'a': [1, 2.5, True, None, 'x'], 'b': (1, (2, 3)), 'c': {1: {'d': False}}}):
        (tmp_path / 'meta.pkl').write_bytes(pickle.dumps(content, protocol=protocol))
        assert data.load_meta(str(tmp_path / 'meta.pkl')) == content

NANOGPT_CONFIG_KEYS = ('out_dir', 'eval_interval', 'log_interval', 'eval_iters', 'eval_only', 'always_save_checkpoint',
                       'init_from', 'wandb_log', 'wandb_project', 'wandb_run_name', 'dataset',
                       'gradient_accumulation_steps', 'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd',
                       'dropout', 'bias', 'learning_rate', 'max_iters', 'weight_decay', 'beta1', 'beta2', 'grad_clip',
                       'decay_lr', 'warmup_iters', 'lr_decay_iters', 'min_lr', 'backend', 'device', 'dtype', 'compile')

def nanogpt_adamw(model, weight_decay=0.1, **kwargs):
    """nanoGPT's AdamW: two groups, the matrices decayed."""
    params = list(model.parameters())
    return torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}], **kwargs)

def as_nanogpt_checkpoint(state, compiled):
    """state as nanoGPT's train.py writes it on a CPU: its keys only, compiled names or a flash-less torch's masks."""
    config, args = state['config'], state['model_args']
    adamw = nanogpt_adamw(checkpoint.model_from_checkpoint(state), config['weight_decay'], fused=False,
                          lr=config['learning_rate'], betas=(config['beta1'], config['beta2']))
    model = {('_orig_mod.' if compiled else '') + k: v for k, v in state['model'].items()}
    mask = torch.ones(args['block_size'], args['block_size']).tril().view(1, 1, args['block_size'], -1)
    model.update({} if compiled else {f'transformer.h.{i}.attn.bias': mask for i in range(args['n_layer'])})
    return {'model': model, 'model_args': args, 'iter_num': state['iter_num'], 'best_val_loss': torch.tensor(0.5),
            'optimizer': {'state': state['optimizer']['state'], 'param_groups': adamw.state_dict()['param_groups']},
            'config': dict({k: config[k] for k in NANOGPT_CONFIG_KEYS}, dtype='float16', device='cpu', compile=True)}

@pytest.mark.parametrize('compiled, dtype', [(True, None), (False, 'float16')])
def test_a_nanogpt_checkpoint_samples_and_resumes_as_this_projects_own(copy_run, tmp_path, compiled, dtype):
    """Its vocabulary from meta.pkl; on the run's float32 (nanoGPT's float16 is not a CPU's), or float16 asked for."""
    os.remove(copy_run / 'latest.pt')
    theirs_dir = tmp_path / 'nanogpt'
    theirs_dir.mkdir()
    torch.save(as_nanogpt_checkpoint(checkpoint.load(str(copy_run), 'ckpt.pt'), compiled), theirs_dir / 'ckpt.pt')
    args = ['--device=cpu', '--num_samples=2', '--max_new_tokens=12', '--start=the cat']
    own, theirs = (run_inproc('sample.py', f'--out_dir={d}', *args, check=True).stdout for d in (copy_run, theirs_dir))
    assert theirs.split(f'Loading meta from data/{CORE_DATASET}/meta.pkl...\n')[1] == own.split("'the cat'\n")[1]
    args = ['--init_from=resume', '--device=cpu', '--max_iters=23'] + ([f'--dtype={dtype}'] if dtype else [])
    own, theirs = (run_inproc('train.py', *args, f'--out_dir={d}', check=True).stdout for d in (copy_run, theirs_dir))
    assert f"Resuming training from {theirs_dir / 'ckpt.pt'}" in theirs and sorted(iteration_losses(theirs)) == \
        [20, 21, 22, 23]
    assert iteration_losses(theirs) == iteration_losses(own) and step_losses(theirs) == step_losses(own)
    assert checkpoint.load(str(theirs_dir), 'latest.pt')['best_val_loss'] == pytest.approx(0.5)
    if dtype is None:
        assert "dtype='float32' for this machine (the run had 'float16'; set --dtype to choose)" in theirs
        assert "compile=False for this machine (the run had True; set --compile to choose)" in theirs

NanoGPTConfig = make_dataclass('NanoGPTConfig', [  # exactly the fields of nanoGPT's GPTConfig
    ('block_size', int, 1024), ('vocab_size', int, 50304), ('n_layer', int, 12), ('n_head', int, 12),
    ('n_embd', int, 768), ('dropout', float, 0.0), ('bias', bool, True)])

class NanoGPTNames(nn.Module):
    """nanoGPT's parameter names and shapes (its output layer tied), GPT-2 written plainly; logits at every position."""

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
            x = x + blk.mlp.c_proj(nn.functional.gelu(blk.mlp.c_fc(blk.ln_2(x))))
        return self.lm_head(t.ln_f(x))

@pytest.mark.parametrize('name', ['ckpt.pt', 'latest.pt'])
def test_our_checkpoint_loads_with_nanogpt_steps(tiny_run, name):
    """nanoGPT's sample.py and resume load it (weights only, strict) and compute what our model computes."""
    ckpt = torch.load(os.path.join(tiny_run.out_dir, name), map_location='cpu', weights_only=True)
    cfg = NanoGPTConfig(**ckpt['model_args'])
    model = NanoGPTNames(cfg)
    model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}, strict=True)
    assert isinstance(ckpt['config']['dataset'], str)
    assert isinstance(ckpt['iter_num'], int) and float(ckpt['best_val_loss']) < 10
    nanogpt_adamw(model).load_state_dict(ckpt['optimizer'])
    ours = checkpoint.model_from_checkpoint(checkpoint.load(str(tiny_run.out_dir), name)).eval()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx, idx)[0], model.eval()(idx), atol=1e-5, rtol=1e-5)

def test_model_args_are_always_nanogpts_and_newer_fields_go_beside_them(tiny_run):
    """GPT-2's tanh GELU is recorded (or reloads would change the model); a newer version's checkpoint is refused."""
    plain, tanh = (checkpoint.architecture_entries(GPTConfig(block_size=32, vocab_size=17, n_layer=2, n_head=2,
                                                             n_embd=32, activation=a)) for a in ('gelu', 'gelu_tanh'))
    assert list(plain) == ['model_args'] and set(plain['model_args']) == set(checkpoint.NANOGPT_MODEL_ARGS)
    assert NanoGPTConfig(**tanh['model_args']) == NanoGPTConfig(**plain['model_args'])
    assert tanh['model_args_extra'] == {'activation': 'gelu_tanh'}
    model = GPT(GPTConfig(**plain['model_args'], activation='gelu_tanh'))
    assert checkpoint.model_from_checkpoint({'model': model.state_dict(), **tanh}).config.activation == 'gelu_tanh'
    state = checkpoint.load(str(tiny_run.out_dir))
    state['model_args']['rotary'] = True
    with pytest.raises(UserError, match='rotary'):
        checkpoint.model_from_checkpoint(state)
