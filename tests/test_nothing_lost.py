"""Nothing is lost: what an export or --overwrite=True replaces goes only once its replacement is whole, even after a
kill at any step; signals stop cleanly; a run reads the dataset it started with; checkpoints carry their vocabulary."""
import functools
import gc
import os
import pathlib
import re
import shutil
import signal
import sys
import time

import pytest
import torch

from conftest import (STEP_LINE, LiveProcess, assert_user_error, checkpoint_files, core_text, core_train_args, ctrl_c,
                      every_kill, iteration_losses, killed_at, make_model, run_inproc, save_checkpoint)
from helpers import checkpoint, data, files, metrics, runs

def tree(folder, skip=('train.lock', 'prepare.lock')):
    """Every file under folder, by its path there, with its bytes (locks aside): what must not be lost."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in pathlib.Path(folder).rglob('*')
            if p.is_file() and p.name not in skip}

@pytest.mark.parametrize('stop', ['Ctrl+C', 'a failed check'])
@pytest.mark.parametrize('script', ['export_hf.py', 'export_onnx.py'])
def test_an_export_is_replaced_only_once_the_new_one_is_whole(script, stop, tmp_path, copy_run, monkeypatch):
    """A char model's export replaced by a BPE model's, stopped by Ctrl+C or a failed check: every old file stays;
    done whole, the new export is in place, nothing temporary or of the old kind left."""
    import onnxruntime
    import transformers
    hf = script == 'export_hf.py'
    output = tmp_path / ('hf' if hf else 'model.onnx')
    def export(out_dir, *more, check=False):
        return run_inproc(script, f'--out_dir={out_dir}', f'--output={output}', *([] if hf else ['--dynamo=False']),
                          *more, check=check)
    export(copy_run, check=True)
    assert not hf or (output / 'tokenizer.json').exists()
    bpe = tmp_path / 'bpe_run'
    save_checkpoint(make_model(vocab_size=50304, n_embd=16, block_size=16), str(bpe), '_no_meta')
    old = tree(tmp_path)
    if stop == 'Ctrl+C':
        with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
            owner, name = (transformers.GPT2LMHeadModel, 'save_pretrained') if hf else (onnxruntime, 'InferenceSession')
            m.setattr(owner, name, lambda *args, real=getattr(owner, name), **kwargs: ctrl_c(real(*args, **kwargs)))
            export(bpe)
    else:
        assert_user_error(export(bpe, '--tolerance=-1'), 'so it was not kept')
    assert tree(tmp_path).items() >= old.items(), "lost before the replacement was whole"
    export(bpe, check=True)
    new = tree(tmp_path)
    assert not [p for p in new if re.search(r'\.(tmp|old)\.', p)], "temporary files were left"
    if hf:
        names = {os.path.basename(p) for p in new if p.startswith('hf/')}
        assert 'tokenizer.json' not in names and {'config.json', 'model.safetensors', 'export_hf.json'} <= names
        assert b'"vocab_size": 50304' in new['hf/config.json']
    else:
        import onnx
        meta = {p.key: p.value for p in onnx.load(output).metadata_props}
        assert meta['nanogpt.tokenizer'] == 'gpt2' and old['model.onnx'] != new['model.onnx']

def test_overwrite_keeps_the_old_run_whole_until_the_new_one_saves(copy_run):
    """A run failing (NaN) before its first save: the old run waits in replaced/ until a new run saves."""
    old = tree(copy_run)
    assert_user_error(run_inproc('train.py', *core_train_args(
        copy_run, overwrite=True, learning_rate=1e30, eval_interval=2, max_iters=10)), 'nan')
    gc.collect()  # the failed run's lock, held by objects run_inproc's collections leave for the next
    assert tree(copy_run / 'replaced').items() >= old.items()
    run_inproc('train.py', *core_train_args(copy_run, max_iters=3, eval_interval=100, overwrite=True), check=True)
    assert not (copy_run / 'replaced').exists() and not (copy_run / 'ckpt.pt').exists()
    assert checkpoint.load(str(copy_run), 'latest.pt')['iter_num'] == 4
    assert not [p for p in tree(copy_run) if re.search(r'\.(tmp|old)\.', p)], "temporary files were left"
    assert [r['iter'] for r in metrics.read_metrics(str(copy_run / 'metrics.csv')) if r['kind'] == 'train'] == \
        [0, 1, 2, 3]  # a new log, not the old one's rows

@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line(tmp_path, core_dataset, signum):
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(tmp_path / 'out')])
    time.sleep(0.5)  # still importing torch
    run.proc.send_signal(signum)
    assert run.finish() == 128 + signum
    assert run.stderr == f"{signal.Signals(signum).name} during start-up: no checkpoint was written\n"
    assert not (tmp_path / 'out').exists()

@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_long_evaluation_saves_within_seconds(copy_run, signum):
    """Schedulers SIGKILL soon after SIGTERM: the evaluation (of a million batches) is left at once. SIGINT: a resumed
    run, in its first evaluation (at 21, every 7), saves the last iteration; SIGTERM: a new run, nothing to save."""
    resume = signum == signal.SIGINT
    out = copy_run if resume else copy_run.parent / 'new'
    before = checkpoint.load(str(copy_run), 'latest.pt')
    run = LiveProcess([sys.executable, 'train.py', *core_train_args(
        out, init_from='resume' if resume else None, max_iters=40, eval_interval=7, eval_iters=10 ** 6)])
    run.wait_for(r'^estimate on cpu')
    time.sleep(1)  # well into the evaluation
    sent = time.time()
    run.proc.send_signal(signum)
    assert run.finish() == 0 and time.time() - sent < 20, run.stderr[-2000:]
    assert 'Traceback' not in run.stderr and 'step 21:' not in run.stdout
    if resume:
        assert re.search(r'^stopped by SIGINT after iteration 20; to continue:\npython train.py .*--init_from=resume$',
                         run.stdout, re.M), run.stdout[-2000:]
        after = checkpoint.load(str(copy_run), 'latest.pt')
        assert after['iter_num'] == 21 and all(torch.equal(after['model'][k], v) for k, v in before['model'].items())
    else:
        assert 'stopped by SIGTERM before the first iteration; nothing to save' in run.stdout
        assert not checkpoint_files(out)

def test_a_dataset_prepared_again_during_a_run_does_not_reach_it(tmp_path, make_dataset, tiny_run, monkeypatch):
    """Another text prepared over its token files after iteration 2 changes neither its losses nor its vocabulary."""
    name, other = make_dataset('moving'), make_dataset('other', text='ZYXWVUTSRQPONMLKJIHGFEDCBA 0123456789\n' * 400)
    real, batches = data.get_batch, []
    def get_batch(*args, **kwargs):
        batches.append(1)
        if len(batches) == 8:  # a timing batch, 4 of the evaluation at 0, iterations 0 and 1
            for file in ('train.bin', 'val.bin', 'meta.pkl'):  # the way a prepare replaces them: renamed over
                shutil.copyfile(os.path.join(data.data_dir(other), file), os.path.join(data.data_dir(name), 'new'))
                os.replace(os.path.join(data.data_dir(name), 'new'), os.path.join(data.data_dir(name), file))
        return real(*args, **kwargs)
    monkeypatch.setattr(data, 'get_batch', get_batch)
    stdout = run_inproc('train.py', *core_train_args(tmp_path / 'out', dataset=name), check=True).stdout
    assert len(batches) > 8 and iteration_losses(stdout) == iteration_losses(tiny_run.stdout)
    assert STEP_LINE.findall(stdout) == STEP_LINE.findall(tiny_run.stdout)
    assert checkpoint.load(str(tmp_path / 'out'))['tokenizer'] == {'kind': 'char', 'itos': sorted(set(core_text()))}

def test_a_character_model_samples_and_exports_with_its_own_vocabulary(copy_run, make_dataset, tmp_path):
    """Its dataset prepared again from another text since (a nanoGPT checkpoint, with none, is refused: test_errors)."""
    from transformers import AutoTokenizer
    state = checkpoint.load(str(copy_run), 'ckpt.pt')
    state['config']['dataset'] = make_dataset('vocab', text='other characters: XYZ!?\n' * 200)
    checkpoint.save(state, str(copy_run))
    hf_dir = tmp_path / 'hf'
    run_inproc('export_hf.py', f'--out_dir={copy_run}', f'--output={hf_dir}', check=True)
    assert oct(os.stat(hf_dir / 'model.safetensors').st_mode & 0o777) == '0o644'
    vocab = AutoTokenizer.from_pretrained(str(hf_dir))  # what a transformers user finds
    assert vocab.decode(vocab.encode('the cat sat')) == 'the cat sat'
    assert vocab.encode('the') == [sorted(set(core_text())).index(c) for c in 'the']
    settings = ['--device=cpu', '--num_samples=2', '--max_new_tokens=30', '--top_k=1', '--start=the']
    from_hf = run_inproc('sample.py', f'--init_from={hf_dir}', *settings, check=True).stdout
    from_checkpoint = run_inproc('sample.py', f'--out_dir={copy_run}', *settings, check=True).stdout
    assert from_hf.split('\n', 7)[-1] == from_checkpoint.split('\n', 6)[-1]  # after settings (and 'loading weights')
    assert from_hf.split('\n', 7)[-1].startswith('the')

def assert_old_or_new(folder, action, backup, look):
    """Run action whole, then kill it at every step from the old state again: look() must find the old or new one.
    Returns both and {step: what look() found after the kill at that step}."""
    shutil.copytree(folder, backup)
    restore = lambda: (shutil.rmtree(folder), shutil.copytree(backup, folder))  # noqa: E731
    old = look()
    assert not killed_at(10 ** 6, folder, action)
    new = look()
    assert new != old
    kills = {step: look() for step in every_kill(folder, restore, action)}
    torn = [step for step, state in kills.items() if state not in (old, new)]
    assert kills and not torn, f"neither old nor new after a kill at steps {torn}"
    return old, new, kills

def test_a_save_killed_before_its_rename_leaves_the_old_file_and_the_next_saves_clean_up(tmp_path):
    """The old checkpoint loads and is still the one resume reads; the next saves delete the dead writer's temporary
    files (and folders, as an export's), not a living one's, nor names that only look like orphans, nor other hosts'."""
    out_dir, state = str(tmp_path), lambda i: {'model': {'w': torch.full((4, 4), i)}, 'model_args': {}, 'iter_num': i}
    checkpoint.save(state(1), out_dir, 'latest.pt')
    before = (tmp_path / 'latest.pt').read_bytes()
    assert killed_at(1, tmp_path, lambda: checkpoint.save(state(2), out_dir, 'latest.pt'))
    assert (tmp_path / 'latest.pt').read_bytes() == before and runs.resume_name(out_dir) == 'latest.pt'
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 1
    temp = lambda pid, name='ckpt.pt': os.path.basename(files.temp_path(str(tmp_path / name), pid))  # noqa: E731
    [left] = set(os.listdir(tmp_path)) - {'latest.pt'}
    pid = int(left.rsplit('.', 1)[1])
    assert left == temp(pid, 'latest.pt')
    keep = [temp(os.getppid(), 'latest.pt'), temp('99999999999999999999'), temp('\u00b2'), temp(f'{pid}x'),
            f'ckpt.pt.tmp.another-host.{pid}', f'ckpt.pt.tmp.{pid}']
    for name in keep:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / temp(pid)).mkdir()
    (tmp_path / temp(pid) / 'config.json').write_text('{}')
    checkpoint.save(state(3), out_dir, 'latest.pt')
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 3
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ['latest.pt', temp(pid)])
    (tmp_path / temp(pid, 'latest.pt')).write_bytes(b'orphan of a mirror')
    checkpoint.save(state(4), out_dir)
    checkpoint.mirror(out_dir, 'ckpt.pt', 'latest.pt')
    assert checkpoint.load(out_dir, 'latest.pt')['iter_num'] == 4
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ['ckpt.pt', 'latest.pt'])

def test_a_swap_killed_at_any_step_is_completed_by_the_next_command(tmp_path):
    folder, moved = tmp_path / 'f', tmp_path / 'moved'
    for name, content in {'a': b'old a', 'b': b'old b', 'sub/x': b'old x', 'gone': b'old gone', 'a.new': b'new a',
                          'b.new': b'new b', 'sub.new/y': b'new y'}.items():
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        (folder / name).write_bytes(content)
    swap = lambda: files.swap(folder, [('a.new', 'a'), ('b.new', 'b'), ('sub.new', 'sub')], removes=['gone'])  # noqa
    def look():
        os.rename(folder, moved)  # the journal holds paths relative to its folder, wherever that is now
        files.finish_swaps(str(moved))
        os.rename(moved, folder)
        return tree(folder)
    _, new, kills = assert_old_or_new(folder, swap, tmp_path / 'backup', look)
    assert new == {'a': b'new a', 'b': b'new b', 'sub/y': b'new y'}
    # finished unless killed before the journal was written; steps: the journal, three moves (the folder's two
    # renames), the removal, the journal's removal
    assert [step for step, state in kills.items() if state != new] == [1] and max(kills) >= 6

def test_prepare_force_killed_at_any_step_leaves_the_old_dataset_or_the_new_one(tmp_path, make_dataset):
    name = make_dataset('killed_force', text='abc abc\n' * 300)
    folder = data.data_dir(name)
    (tmp_path / 'new.txt').write_text('xyz, XYZ; 0123\n' * 400)
    prepare = functools.partial(run_inproc, 'data/char/prepare.py', '--input', tmp_path / 'new.txt', '--name', name,
                                '--force', check=True)
    dataset = ('train.bin', 'val.bin', 'meta.pkl')  # not what a killed prepare left unfinished beside them
    look = lambda: (data.read_meta(name), {k: v for k, v in tree(folder).items() if k in dataset})  # what it reads
    _, (_, new), _ = assert_old_or_new(folder, prepare, tmp_path / 'backup', look)
    assert set(new) == set(dataset)

def test_export_hf_killed_at_any_step_leaves_the_old_export_or_the_new_one(tmp_path, copy_run):
    hf = tmp_path / 'exports' / 'hf'
    args = ['export_hf.py', f'--out_dir={copy_run}', f'--output={hf}', '--verify=False']
    run_inproc(*args, check=True)
    state = checkpoint.load(str(copy_run), 'ckpt.pt')
    state['model']['lm_head.weight'] += 1.0  # another model: other weights
    checkpoint.save(state, str(copy_run))
    look = lambda: (checkpoint.pretrained(str(hf)), tree(hf))[1]  # noqa: E731 (what the next command reads)
    assert_old_or_new(hf.parent, functools.partial(run_inproc, *args, check=True), tmp_path / 'backup', look)
    run_inproc(*args, check=True)  # and the next export leaves nothing of the killed ones behind
    assert sorted(os.listdir(hf.parent)) == ['hf']

def test_overwrite_killed_at_any_step_keeps_the_old_run_whole_in_one_place(tmp_path, copy_run):
    out, old = str(copy_run), tree(copy_run)
    assert {'ckpt.pt', 'latest.pt', 'metrics.csv'} <= set(old)
    new_state = dict(checkpoint.load(out, 'latest.pt'), iter_num=1)
    def overwrite_then_save():
        runs.claim_out_dir(out, resuming=False, overwrite=True)
        checkpoint.save(new_state, out, 'latest.pt')
        runs.discard_replaced(out)
    def look():  # the run the next command finds: in out_dir, or moved aside whole (and only there)
        runs.resume_name(out)
        aside = tree(os.path.join(out, 'replaced'), skip=('README.txt',))
        here = {k: v for k, v in tree(out).items() if not (k.startswith('replaced/') or '.tmp.' in k)}  # not temp
        assert not (aside and here.get('latest.pt') == old['latest.pt']), "the old run is in two places"
        return aside if aside and not here else here
    assert_old_or_new(out, overwrite_then_save, tmp_path / 'backup', look)
    assert not os.path.exists(os.path.join(out, 'replaced'))
