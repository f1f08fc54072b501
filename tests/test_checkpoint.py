"""checkpoint.py and the checkpoint files: atomic writes, which file resume and sample read,
refusal of files that would run code, damaged files, and compatibility with nanoGPT in both
directions (its checkpoints resume and sample here; ours load with its loading steps)."""
import errno
import math
import os
import pickle
import re
import signal
import socket
import subprocess
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from helpers import checkpoint
from helpers import data
from conftest import (CORE_DATASET, RunsCode, assert_user_error, checkpoint_files, core_text, core_train_args,
                      run_inproc, run_script)
from helpers import UserError, metrics
from model import GPT, GPTConfig


def small_state(value=1.0):
    return {'model': {'w': torch.full((4, 4), value)}, 'model_args': {'n_layer': 1}, 'iter_num': int(value)}


def read_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


# -----------------------------------------------------------------------------
# atomic writes

def test_save_writes_a_loadable_file_and_nothing_else(tmp_path):
    path = checkpoint.save(small_state(1.0), str(tmp_path / 'out'))
    assert path == str(tmp_path / 'out' / 'ckpt.pt')
    assert os.listdir(tmp_path / 'out') == ['ckpt.pt']
    assert checkpoint.load(str(tmp_path / 'out'))['iter_num'] == 1


@pytest.mark.parametrize('failure', ['torch.save', 'fsync', 'replace'])
def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    """A full disk (ENOSPC) while writing, flushing or renaming: the old file stays, byte for byte,
    and no temporary file is left behind."""
    out_dir = str(tmp_path)
    checkpoint.save(small_state(1.0), out_dir)
    before = read_bytes(tmp_path / 'ckpt.pt')
    real_save = torch.save

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    if failure == 'torch.save':
        def half_written(obj, f, *args, **kwargs):
            f.write(b'PK\x03\x04 half a checkpoint')  # some bytes reach the file first
            disk_full()
        monkeypatch.setattr(torch, 'save', half_written)
    elif failure == 'fsync':
        monkeypatch.setattr(os, 'fsync', disk_full)
    else:
        monkeypatch.setattr(os, 'replace', disk_full)
    with pytest.raises(UserError) as info:  # one line, not torch's chained traceback
        checkpoint.save(small_state(2.0), out_dir)
    monkeypatch.undo()
    assert str(info.value) == (f"could not save {tmp_path / 'ckpt.pt'} (No space left on device); the checkpoints "
                               "already there (ckpt.pt) are intact: free some space on that disk, then continue "
                               "with --init_from=resume")
    assert torch.save is real_save
    assert os.listdir(out_dir) == ['ckpt.pt']
    assert read_bytes(tmp_path / 'ckpt.pt') == before
    assert checkpoint.load(out_dir)['iter_num'] == 1


def test_a_mirror_that_cannot_be_copied_is_one_line(tmp_path, monkeypatch):
    checkpoint.save(small_state(1.0), str(tmp_path))

    def no_links(*args):
        raise OSError(errno.EPERM, 'links not supported')

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'link', no_links)
    monkeypatch.setattr(checkpoint.shutil, 'copyfile', disk_full)
    with pytest.raises(UserError, match=r'could not save .*latest\.pt \(No space left on device\); the checkpoints '
                                        r'already there \(ckpt\.pt\) are intact'):
        checkpoint.mirror(str(tmp_path), 'ckpt.pt', 'latest.pt')
    assert os.listdir(tmp_path) == ['ckpt.pt']


def with_file_size_limit(limit, script, *args):
    """python script args in a process whose writes past limit bytes fail (EFBIG, SIGXFSZ ignored),
    as they would on a full disk."""
    code = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    return run_script('-c', code, script, *args, check=False, timeout=300)


def test_a_save_past_a_real_file_size_limit_is_one_line_and_keeps_the_checkpoints(copy_run):
    before = {name: read_bytes(copy_run / name) for name in ('ckpt.pt', 'latest.pt')}
    assert min(map(len, before.values())) > 100_000
    proc = with_file_size_limit(100_000, 'train.py', *core_train_args(copy_run, init_from='resume', max_iters=22))
    assert_user_error(proc, f"could not save {copy_run / 'latest.pt'} (File too large)",
                      '(latest.pt and ckpt.pt) are intact', 'ulimit -f', '--init_from=resume')
    assert proc.stderr.count('\n') == 1, proc.stderr
    assert {name: read_bytes(copy_run / name) for name in before} == before
    assert checkpoint_files(copy_run) == ['ckpt.pt', 'latest.pt']  # and no temporary file


def test_crash_during_save_leaves_the_previous_checkpoint(tmp_path):
    """A process killed (SIGKILL) halfway through writing: the old checkpoint still loads and is
    still the one resume reads."""
    out_dir = str(tmp_path)
    checkpoint.save(small_state(1.0), out_dir, checkpoint.LATEST_NAME)
    before = read_bytes(tmp_path / 'latest.pt')
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
    assert read_bytes(tmp_path / 'latest.pt') == before
    assert checkpoint.resume_name(out_dir) == 'latest.pt'
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 1
    assert os.path.exists(checkpoint.temp_path(str(tmp_path / 'latest.pt'), pid))
    # the next save works and deletes the dead process's temporary file, but not a living one's
    alive = checkpoint.temp_path(str(tmp_path / 'latest.pt'), os.getppid())
    open(alive, 'wb').write(b'a save in progress')
    checkpoint.save(small_state(3.0), out_dir, checkpoint.LATEST_NAME)
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 3
    assert sorted(os.listdir(tmp_path)) == ['latest.pt', os.path.basename(alive)]


def test_cleaning_up_temp_files_never_stops_a_save(tmp_path):
    """Names that only look like orphans and other hosts' files are left alone, a dead writer's
    temporary folder (an export's) goes; ckpt.pt and its mirror latest.pt are still written."""
    dead_pid = os.fork()
    if dead_pid == 0:
        os._exit(0)
    os.waitpid(dead_pid, 0)
    def ours(pid):
        return os.path.basename(checkpoint.temp_path(str(tmp_path / 'ckpt.pt'), pid))

    keep = [ours('99999999999999999999'), ours('\u00b2'), ours(f'{dead_pid}x'),
            f'ckpt.pt.tmp.another-host.{dead_pid}', f'ckpt.pt.tmp.{dead_pid}']
    for name in keep:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / ours(dead_pid)).mkdir()
    (tmp_path / ours(dead_pid) / 'config.json').write_text('{}')
    (tmp_path / f'latest.pt.tmp.{socket.gethostname()}.{dead_pid}').write_bytes(b'orphan of a mirror')
    checkpoint.save(small_state(4.0), str(tmp_path))
    checkpoint.mirror(str(tmp_path), 'ckpt.pt', 'latest.pt')
    assert checkpoint.load(str(tmp_path), 'latest.pt')['iter_num'] == 4
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ['ckpt.pt', 'latest.pt'])


def test_save_flushes_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}')))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(('replace', str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    path = checkpoint.save(small_state(), str(tmp_path))
    monkeypatch.undo()
    assert len(events) == 3, events
    (kind1, synced), (kind2, src, dst), (kind3, synced_dir) = events
    assert kind1 == 'fsync' and synced == src and src.startswith(path + '.tmp')  # the new file's data
    assert kind2 == 'replace' and dst == path
    assert kind3 == 'fsync' and synced_dir == str(tmp_path)  # the rename itself


def test_mirror_links_without_aliasing_later_writes(tmp_path, monkeypatch):
    out_dir = str(tmp_path)
    checkpoint.save(small_state(1.0), out_dir)
    checkpoint.mirror(out_dir, 'ckpt.pt', 'latest.pt')
    assert read_bytes(tmp_path / 'latest.pt') == read_bytes(tmp_path / 'ckpt.pt')
    # a later save of one replaces that file only
    checkpoint.save(small_state(2.0), out_dir, 'latest.pt')
    assert checkpoint.load(out_dir, 'ckpt.pt')['iter_num'] == 1
    # where hard links are not possible, a copy
    def no_links(*args):
        raise OSError(errno.EPERM, 'links not supported')
    monkeypatch.setattr(os, 'link', no_links)
    checkpoint.mirror(out_dir, 'ckpt.pt', 'latest.pt')
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 1
    assert sorted(os.listdir(out_dir)) == ['ckpt.pt', 'latest.pt']


def test_which_file_resume_and_sample_read(tmp_path):
    out_dir = str(tmp_path)
    assert checkpoint.resume_name(out_dir) == 'ckpt.pt' and checkpoint.sample_name(out_dir) == 'ckpt.pt'
    checkpoint.save(small_state(), out_dir, 'latest.pt')
    assert checkpoint.resume_name(out_dir) == 'latest.pt' and checkpoint.sample_name(out_dir) == 'latest.pt'
    checkpoint.save(small_state(), out_dir, 'ckpt.pt')
    assert checkpoint.resume_name(out_dir) == 'latest.pt'  # where training stopped
    assert checkpoint.sample_name(out_dir) == 'ckpt.pt'  # nanoGPT's: the best or the last evaluated


# -----------------------------------------------------------------------------
# files that would run code, damaged files

class CustomObject:
    pass


@pytest.fixture
def unsafe_out_dir(tiny_run, tmp_path):
    """A real checkpoint with one object added that would run code when unpickled."""
    marker = tmp_path / 'PWNED'
    state = torch.load(tiny_run.out_dir / 'ckpt.pt', weights_only=True)
    state['config']['note'] = RunsCode(marker)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    torch.save(state, out_dir / 'ckpt.pt')
    return out_dir, marker


def test_checkpoint_that_runs_code_is_refused(unsafe_out_dir):
    out_dir, marker = unsafe_out_dir
    with pytest.raises(UserError) as info:
        checkpoint.load(str(out_dir))
    assert 'refused' in str(info.value) and 'run code' in str(info.value) and '\n' not in str(info.value)
    assert not marker.exists()


def test_sample_refuses_a_checkpoint_that_runs_code(unsafe_out_dir):
    out_dir, marker = unsafe_out_dir
    proc = run_script('sample.py', f'--out_dir={out_dir}', '--device=cpu', '--num_samples=1', '--max_new_tokens=5',
                      check=False, timeout=120)
    assert_user_error(proc, 'refused', 'ckpt.pt')
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_that_runs_code(unsafe_out_dir):
    out_dir, marker = unsafe_out_dir
    before = read_bytes(out_dir / 'ckpt.pt')
    assert_user_error(run_inproc('train.py', *core_train_args(out_dir, init_from='resume')), 'refused')
    assert not marker.exists()
    assert os.listdir(out_dir) == ['ckpt.pt'] and read_bytes(out_dir / 'ckpt.pt') == before


def test_checkpoint_with_a_custom_class_is_refused(tmp_path):
    torch.save({'model': {}, 'model_args': {}, 'extra': CustomObject()}, tmp_path / 'ckpt.pt')
    with pytest.raises(UserError, match='refused'):
        checkpoint.load(str(tmp_path))


def damaged_files(good):
    return {
        'truncated': good[:len(good) // 2],
        'cut after 10 bytes': good[:10],
        'empty': b'',
        'random bytes': bytes((i * 7919 + 13) % 256 for i in range(5000)),
        'text': b'this is not a checkpoint\n' * 50,
        'zeros': b'\0' * 5000,
        'flipped bytes': good[:2000] + bytes(b ^ 0xFF for b in good[2000:4000]) + good[4000:],
    }


@pytest.mark.parametrize('kind', list(damaged_files(b'x' * 5000)))
def test_damaged_checkpoint_is_reported_as_corrupt(tiny_run, tmp_path, kind):
    data = damaged_files(read_bytes(tiny_run.out_dir / 'ckpt.pt'))[kind]
    (tmp_path / 'ckpt.pt').write_bytes(data)
    with pytest.raises(UserError) as info:
        checkpoint.load(str(tmp_path))
    message = str(info.value)
    assert 'truncated or corrupt' in message and '\n' not in message
    assert 'run code' not in message  # damage is not reported as danger


def test_a_plain_pickle_is_not_loaded_and_said_to_be_no_checkpoint(tmp_path):
    """Through a real interpreter, where torch's warnings would show: one line, no warning."""
    import numpy as np
    for content in ({'a': 1}, np.zeros(3)):
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            (tmp_path / 'ckpt.pt').write_bytes(pickle.dumps(content, protocol=protocol))
            proc = run_script('sample.py', f'--out_dir={tmp_path}', '--device=cpu', check=False, timeout=120)
            assert_user_error(proc, 'not a checkpoint that this project or nanoGPT wrote', 'plain pickle', 'not loaded')
            assert proc.stderr.count('\n') == 1, proc.stderr
    # torch.save's format before PyTorch 1.6 is a pickle too, and still loads
    torch.save(small_state(7.0), tmp_path / 'ckpt.pt', _use_new_zipfile_serialization=False)
    assert checkpoint.load(str(tmp_path))['iter_num'] == 7


def test_other_pickles_are_not_training_checkpoints(tmp_path):
    for content in ([1, 2, 3], {'model': {}}, {'weights': torch.zeros(2)}):
        torch.save(content, tmp_path / 'ckpt.pt')
        with pytest.raises(UserError, match='not a training checkpoint'):
            checkpoint.load(str(tmp_path))


def test_a_damaged_file_names_the_whole_one_beside_it(tiny_run, tmp_path):
    for name in ('ckpt.pt', 'latest.pt'):
        (tmp_path / name).write_bytes(read_bytes(tiny_run.out_dir / name))
    (tmp_path / 'latest.pt').write_bytes(b'\0' * 100)
    with pytest.raises(UserError) as info:
        checkpoint.load(str(tmp_path), checkpoint.resume_name(str(tmp_path)))
    command = re.search(r'\((mv [^)]*)\) and run the same command again$', str(info.value)).group(1)
    assert 'ckpt.pt beside it loads (ckpt.pt after iteration 19, best val loss' in str(info.value)
    subprocess.run(command, shell=True, check=True)  # the command as given: resume then reads ckpt.pt
    assert checkpoint.load(str(tmp_path), checkpoint.resume_name(str(tmp_path)))['iter_num'] == 20
    # nothing whole beside it: the old advice
    os.remove(tmp_path / 'ckpt.pt')
    with pytest.raises(UserError, match='restore it from a backup or train again'):
        checkpoint.load(str(tmp_path), 'latest.pt.damaged')


# -----------------------------------------------------------------------------
# out_dir: a run is its checkpoints; --overwrite=True keeps the old one in replaced/ until the new one saved

def files(folder):
    return {name: read_bytes(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name)) and name != 'train.lock'}


def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved(copy_run, capsys):
    out, old = str(copy_run), files(copy_run)
    lock = checkpoint.claim_out_dir(out, resuming=False, overwrite=True)
    assert re.search(r"the run that was here \(latest\.pt after iteration 20, best val loss \d\.\d{4}\) was moved to "
                     rf"{re.escape(out)}/replaced/; it is deleted once this run saves its first checkpoint",
                     capsys.readouterr().out)
    assert files(copy_run) == {} and files(copy_run / 'replaced') == old
    checkpoint.discard_replaced(out)  # the new run has no checkpoint yet: the old one stays
    assert files(copy_run / 'replaced') == old
    lock.close()
    # a second overwrite before the new run saved keeps the run moved aside by the first
    (copy_run / 'metrics.csv').write_text('the log of a run that never saved\n')
    checkpoint.claim_out_dir(out, resuming=False, overwrite=True).close()
    assert 'stays there' in capsys.readouterr().out
    assert files(copy_run / 'replaced') == old
    checkpoint.save(small_state(), out, 'latest.pt')
    checkpoint.discard_replaced(out)
    assert not (copy_run / 'replaced').exists() and 'deleted the run in' in capsys.readouterr().out


def test_the_run_in_replaced_is_named_with_the_command_that_restores_it(copy_run):
    out, old = str(copy_run), files(copy_run)
    checkpoint.claim_out_dir(out, resuming=False, overwrite=True).close()
    (copy_run / 'metrics.csv').write_text('the log of a run that never saved\n')
    with pytest.raises(UserError) as info:  # resume, sample and export
        checkpoint.load(out, checkpoint.resume_name(out))
    assert f'no checkpoint at {out}/ckpt.pt: the run that was in {out} (latest.pt after iteration 20' in str(info.value)
    with pytest.raises(UserError, match='holds no checkpoint, but the run that was in'):  # a new run without overwrite
        checkpoint.claim_out_dir(out, resuming=False, overwrite=False)
    note = checkpoint.replaced_run_note(out)
    subprocess.run(note.split('to restore it: ')[1], shell=True, check=True)
    assert files(copy_run) == old and not (copy_run / 'replaced').exists()
    assert checkpoint.replaced_run_note(out) == ''


def test_overwrite_after_a_move_cut_short_or_a_save_not_followed_by_the_deletion(copy_run):
    out, old = str(copy_run), files(copy_run)
    # stopped between two renames: each file is in one place, and the next overwrite completes the move
    os.mkdir(copy_run / 'replaced')
    os.rename(copy_run / 'latest.pt', copy_run / 'replaced' / 'latest.pt')
    checkpoint.claim_out_dir(out, resuming=False, overwrite=True).close()
    assert files(copy_run / 'replaced') == old
    # the new run saved but was stopped before it deleted replaced/: that run is the one to move aside now
    checkpoint.save(small_state(9.0), out, 'latest.pt')
    (copy_run / 'metrics.csv').write_text('the new run\n')
    checkpoint.claim_out_dir(out, resuming=False, overwrite=True).close()
    assert checkpoint.load(os.path.join(out, 'replaced'), 'latest.pt')['iter_num'] == 9
    assert sorted(os.listdir(copy_run / 'replaced')) == ['latest.pt', 'metrics.csv']


def test_a_log_without_a_checkpoint_is_no_run(tmp_path, core_dataset):
    """What a first run that failed at its first save leaves: the same command runs, with a log of its own."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'metrics.csv').write_text(','.join(metrics.COLUMNS) + '\n50,train,1,2.0,,0.1,1.0,\n')
    (out / 'train.lock').write_text('12345\n')
    run_inproc('train.py', *core_train_args(out, max_iters=2, eval_interval=100), check=True)
    assert [r['iter'] for r in metrics.read_metrics(str(out / 'metrics.csv'))] == [0, 0, 1, 2]


# -----------------------------------------------------------------------------
# meta.pkl

def test_meta_pkl_with_code_is_refused(tmp_path):
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'meta.pkl'
    path.write_bytes(pickle.dumps({'vocab_size': 3, 'itos': RunsCode(marker)}))
    with pytest.raises(UserError) as info:
        data.load_meta(str(path))
    assert 'refused' in str(info.value) and 'plain data' in str(info.value)
    assert not marker.exists()
    # any class at all, even a harmless one, is refused
    path.write_bytes(pickle.dumps({'vocab_size': 3, 'x': CustomObject()}))
    with pytest.raises(UserError, match='refused'):
        data.load_meta(str(path))


@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_nanogpt_meta_pkl_loads(tmp_path, protocol):
    """meta.pkl as nanoGPT's shakespeare_char/prepare.py writes it, in every pickle protocol."""
    chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n"))
    meta = {'vocab_size': len(chars), 'itos': {i: ch for i, ch in enumerate(chars)},
            'stoi': {ch: i for i, ch in enumerate(chars)}}
    path = tmp_path / 'meta.pkl'
    path.write_bytes(pickle.dumps(meta, protocol=protocol))
    assert data.load_meta(str(path)) == meta
    plain = {'a': [1, 2.5, True, None, 'x'], 'b': (1, (2, 3)), 'c': {1: {'d': False}}}
    path.write_bytes(pickle.dumps(plain, protocol=protocol))
    assert data.load_meta(str(path)) == plain


DAMAGED_META = {
    'empty': b'', 'cut header': b'\x80\x04\x95', 'text': b'garbage bytes that are not a pickle',
    'lines': b'hello world\n' * 10, 'persistent id': b'Q', 'bytes': bytes((i * 31 + 7) % 256 for i in range(3000)),
    'no stop': pickle.dumps({'vocab_size': 65})[:-1],
}


@pytest.mark.parametrize('content', list(DAMAGED_META.values()), ids=list(DAMAGED_META))
def test_damaged_meta_pkl_is_one_line_error(tmp_path, content):
    path = tmp_path / 'meta.pkl'
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        data.load_meta(str(path))
    message = str(info.value)
    assert '\n' not in message and 'meta.pkl' in message
    assert 'truncated or corrupt' in message and 'refused' not in message  # damage is not reported as danger
    assert 'prepare.py' in message


def test_meta_pkl_that_is_not_a_dict(tmp_path):
    path = tmp_path / 'meta.pkl'
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UserError, match='holds a list, not a dict'):
        data.load_meta(str(path))


def test_train_and_sample_refuse_a_meta_pkl_with_code(make_dataset, tiny_run, tmp_path):
    marker = tmp_path / 'PWNED'
    name = make_dataset('unsafe_meta')
    meta_path = os.path.join(data.data_dir(name), 'meta.pkl')
    with open(meta_path, 'rb') as f:
        meta = pickle.load(f)
    meta['itos'] = RunsCode(marker)
    with open(meta_path, 'wb') as f:
        pickle.dump(meta, f)
    out_dir = tmp_path / 'out'
    assert_user_error(run_inproc('train.py', *core_train_args(out_dir, dataset=name)), 'refused', 'meta.pkl')
    assert not out_dir.exists()
    # a nanoGPT checkpoint (no vocabulary of its own) whose dataset folder was swapped for one with
    # a dangerous meta.pkl
    state = torch.load(tiny_run.out_dir / 'ckpt.pt', weights_only=True)
    state['config']['dataset'] = name
    del state['tokenizer']
    sample_dir = tmp_path / 'sample_out'
    checkpoint.save(state, str(sample_dir))
    result = run_inproc('sample.py', f'--out_dir={sample_dir}', '--device=cpu', '--num_samples=1',
                        '--max_new_tokens=3')
    assert_user_error(result, 'refused', 'meta.pkl')
    assert not marker.exists()


# -----------------------------------------------------------------------------
# nanoGPT's checkpoints here

NANOGPT_CONFIG = dict(  # nanoGPT's train.py settings, with its defaults: the config its checkpoints hold
    out_dir='out', eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False, always_save_checkpoint=True,
    init_from='scratch', wandb_log=False, wandb_project='owt', wandb_run_name='gpt2', dataset='openwebtext',
    gradient_accumulation_steps=40, batch_size=12, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    bias=False, learning_rate=6e-4, max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5, backend='nccl', device='cuda',
    dtype='bfloat16', compile=True,
)


def nanogpt_style_checkpoint(out_dir, compiled=True, mask_buffers=False, iter_num=40):
    """Write out_dir/ckpt.pt the way nanoGPT's train.py does: its 7 model_args, the state dict of a
    torch.compile'd model (every name prefixed), AdamW in two groups, best_val_loss as a 0-dim
    tensor, its config dict, and nothing else."""
    vocab_size = len(set(core_text()))
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=vocab_size, dropout=0.0)
    torch.manual_seed(123)
    model = GPT(GPTConfig(**model_args))
    params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    x = torch.randint(vocab_size, (2, 32))
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
    ckpt = {'model': state_dict, 'optimizer': optimizer.state_dict(), 'model_args': model_args,
            'iter_num': iter_num, 'best_val_loss': torch.tensor(2.25), 'config': config}
    os.makedirs(out_dir, exist_ok=True)
    torch.save(ckpt, os.path.join(out_dir, 'ckpt.pt'))
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
    assert latest['iter_num'] == 43
    assert latest['best_val_loss'] == pytest.approx(2.25)
    assert latest['model_args']['n_embd'] == 32
    # the optimizer state carried on: 3 steps in "nanoGPT" plus 3 here
    steps = {int(s['step']) for s in latest['optimizer']['state'].values()}
    assert steps == {6}
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


# -----------------------------------------------------------------------------
# our checkpoints in nanoGPT: its sample.py's loading steps, re-implemented here

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


class NanoNorm(nn.Module):
    def __init__(self, n, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None


class NanoGPTNames(nn.Module):
    """A module tree with nanoGPT's parameter names and shapes (and its tied output layer)."""

    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd

        def block():
            return nn.ModuleDict(dict(
                ln_1=NanoNorm(C, cfg.bias),
                attn=nn.ModuleDict(dict(c_attn=nn.Linear(C, 3 * C, bias=cfg.bias),
                                        c_proj=nn.Linear(C, C, bias=cfg.bias))),
                ln_2=NanoNorm(C, cfg.bias),
                mlp=nn.ModuleDict(dict(c_fc=nn.Linear(C, 4 * C, bias=cfg.bias),
                                       c_proj=nn.Linear(4 * C, C, bias=cfg.bias))),
            ))
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, C), wpe=nn.Embedding(cfg.block_size, C),
            h=nn.ModuleList([block() for _ in range(cfg.n_layer)]), ln_f=NanoNorm(C, cfg.bias)))
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        """GPT-2 written out plainly: exact GELU, explicit causal mask. Logits at every position."""
        def norm(x, m):
            return F.layer_norm(x, (x.size(-1),), m.weight, m.bias, 1e-5)
        B, T = idx.shape
        C, H = self.cfg.n_embd, self.cfg.n_head
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(T))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        for blk in t.h:
            q, k, v = blk.attn.c_attn(norm(x, blk.ln_1)).split(C, dim=2)
            q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
            att = att.masked_fill(~causal, float('-inf')).softmax(dim=-1)
            x = x + blk.attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))
            x = x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(norm(x, blk.ln_2))))
        return self.lm_head(norm(x, t.ln_f))


@pytest.mark.parametrize('name', ['ckpt.pt', 'latest.pt'])
def test_our_checkpoint_loads_with_nanogpt_steps(tiny_run, name):
    # nanoGPT's sample.py: torch.load (weights only), GPTConfig(**model_args), strip the compile
    # prefix, strict load_state_dict
    ckpt = torch.load(os.path.join(tiny_run.out_dir, name), map_location='cpu', weights_only=True)
    cfg = NanoGPTConfig(**ckpt['model_args'])
    model = NanoGPTNames(cfg)
    state_dict = ckpt['model']
    for k in list(state_dict):
        if k.startswith('_orig_mod.'):
            state_dict[k[len('_orig_mod.'):]] = state_dict.pop(k)
    model.load_state_dict(state_dict, strict=True)
    # what else its sample.py and train.py (resume) read
    assert isinstance(ckpt['config']['dataset'], str)
    assert isinstance(ckpt['iter_num'], int) and float(ckpt['best_val_loss']) < 10
    # its resume builds AdamW in two groups (matrices decayed) and loads our optimizer state
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}], lr=1e-3)
    optimizer.load_state_dict(ckpt['optimizer'])
    # and it computes what our model computes
    ours = checkpoint.model_from_checkpoint(checkpoint.load(str(tiny_run.out_dir), name))
    ours.eval()
    model.eval()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(idx)
        got, _ = ours(idx, idx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_model_args_are_always_nanogpts_and_newer_fields_go_beside_them():
    plain = checkpoint.architecture_entries(GPTConfig(block_size=32, vocab_size=17, n_layer=2, n_head=2, n_embd=32))
    assert list(plain) == ['model_args'] and set(plain['model_args']) == set(checkpoint.NANOGPT_MODEL_ARGS)
    NanoGPTConfig(**plain['model_args'])
    # GPT-2's tanh GELU (from_pretrained) must be recorded, or the model would change on reload,
    # and nanoGPT's GPTConfig must still accept model_args
    config = GPTConfig(block_size=32, vocab_size=17, n_layer=2, n_head=2, n_embd=32, activation='gelu_tanh')
    tanh = checkpoint.architecture_entries(config)
    NanoGPTConfig(**tanh['model_args'])
    assert tanh['model_args_extra'] == {'activation': 'gelu_tanh'}
    ckpt = {'model': GPT(config).state_dict(), **tanh}
    assert checkpoint.model_from_checkpoint(ckpt).config.activation == 'gelu_tanh'


def test_checkpoint_from_a_newer_version_is_refused_clearly(tiny_run):
    state = checkpoint.load(str(tiny_run.out_dir))
    state['model_args']['rotary'] = True
    with pytest.raises(UserError, match='rotary'):
        checkpoint.model_from_checkpoint(state)


def test_save_without_folder_fsync_where_folders_cannot_be_opened(tmp_path, monkeypatch):
    """On Windows a folder cannot be opened to fsync it: the save must not try."""
    real_open = os.open

    def no_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, 'Permission denied')
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, 'open', no_folders)
    monkeypatch.setattr(os, 'name', 'nt')
    checkpoint.save(small_state(5.0), str(tmp_path))
    monkeypatch.undo()
    assert checkpoint.load(str(tmp_path))['iter_num'] == 5


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
    from helpers import hardware
    waited = []
    monkeypatch.setattr(torch.cuda, 'synchronize', waited.append)
    hardware.sync('cuda:1')
    hardware.sync('cpu')
    assert waited == [torch.device('cuda:1')]
