"""Bad input gives one line, `error: ...`, naming the problem and the fix, a non-zero exit,
no traceback, and nothing written; a non-finite loss stops training without writing a NaN
model over a good checkpoint."""
import os

import pytest
import torch

from helpers import checkpoint
from helpers import data, hardware
from conftest import assert_user_error, checkpoint_files, core_text, core_train_args, run_inproc, run_script
from helpers import UserError


def snapshot(folder, names=None):
    """Every file in folder (or the ones named) with its bytes, to show that nothing was written."""
    if not os.path.isdir(folder):
        return None
    result = {}
    for name in sorted(os.listdir(folder) if names is None else names):
        with open(os.path.join(folder, name), 'rb') as f:
            result[name] = f.read()
    return result


def test_user_error_is_a_one_line_exit():
    error = UserError('something is wrong; do this instead')
    assert isinstance(error, SystemExit)
    assert str(error) == 'something is wrong; do this instead'
    assert error.code == 'error: something is wrong; do this instead'


def test_script_error_is_one_line_on_stderr(tmp_path):
    """Through a real interpreter: exit status 1, the message alone on stderr."""
    out_dir = tmp_path / 'out'
    proc = run_script('train.py', *core_train_args(out_dir, dataset='_test_no_such_dataset'), check=False, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith('error: unknown dataset')
    assert '\n' not in proc.stderr.strip()
    assert not out_dir.exists()


# -----------------------------------------------------------------------------
# train.py on a fresh out_dir: nothing may be created

def fresh_train(tmp_path, *fragments, **settings):
    out_dir = tmp_path / 'out'
    result = run_inproc('train.py', *core_train_args(out_dir, **settings))
    line = assert_user_error(result, *fragments)
    assert not out_dir.exists(), f"{out_dir} was created"
    return line


def test_unknown_dataset(tmp_path, core_dataset):
    line = fresh_train(tmp_path, "unknown dataset '_test_no_such'", dataset='_test_no_such')
    assert core_dataset in line  # lists the datasets there are


def test_missing_bin(tmp_path, make_dataset):
    name = make_dataset('nobin')
    os.remove(os.path.join(data.data_dir(name), 'val.bin'))
    fresh_train(tmp_path, 'val.bin', 'missing', 'prepare', dataset=name)


def test_too_short_bin(tmp_path, make_dataset):
    name = make_dataset('short')
    path = os.path.join(data.data_dir(name), 'val.bin')
    with open(path, 'r+b') as f:
        f.truncate(2 * 32)  # 32 uint16 tokens: one fewer than block_size + 1
    fresh_train(tmp_path, 'val.bin', '32 tokens', 'block_size+1 = 33', '--block_size', dataset=name, block_size=32)
    # 33 tokens are enough
    with open(path, 'r+b') as f:
        f.truncate(2 * 33)
    out_dir = tmp_path / 'ok'
    run_inproc('train.py', *core_train_args(out_dir, dataset=name, block_size=32, max_iters=1, eval_interval=100),
               check=True)


@pytest.mark.parametrize('name', ['batch_size', 'gradient_accumulation_steps', 'max_iters', 'eval_iters',
                                  'block_size', 'n_layer', 'n_head', 'eval_interval', 'log_interval'])
@pytest.mark.parametrize('value', [0, -1])
def test_not_positive(tmp_path, core_dataset, name, value):
    fresh_train(tmp_path, name, 'positive', str(value), **{name: value})


def test_n_embd_not_divisible_by_n_head(tmp_path, core_dataset):
    fresh_train(tmp_path, 'n_embd (30)', 'n_head (4)', 'divisible', '--n_embd=', n_embd=30, n_head=4)


@pytest.mark.parametrize('value', [1.0, 1.5, -0.1])
def test_dropout_outside_range(tmp_path, core_dataset, value):
    fresh_train(tmp_path, 'dropout', '[0, 1)', dropout=value)


BEST = f'--device={hardware.best_device()}'  # what the errors suggest: cpu here, cuda on a GPU machine


@pytest.mark.parametrize('device,fragments', [
    ('tpu', ['unknown device', 'tpu', 'cpu']),
    ('gpu0', ['unknown device', 'gpu0']),
    pytest.param('cuda', ['cuda', 'not available', BEST], marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is available here")),
    ('cuda:99', ['cuda:99', BEST] if not torch.cuda.is_available() else ['cuda:99', 'does not exist']),
    pytest.param('mps', ['mps', BEST], marks=pytest.mark.skipif(
        hardware.mps_available(), reason="an Apple GPU is available here")),
    ('meta', ['meta', 'not supported']),
])
def test_unknown_or_absent_device(tmp_path, core_dataset, device, fragments):
    fresh_train(tmp_path, *fragments, device=device)


def test_unknown_dtype(tmp_path, core_dataset):
    fresh_train(tmp_path, "unknown dtype 'float64'", 'float32', 'bfloat16', dtype='float64')


def test_unknown_init_from(tmp_path, core_dataset, make_dataset):
    fresh_train(tmp_path, "unknown init_from 'restart'", 'resume', init_from='restart')
    # a gpt2-like name that is no model: refused before any download is tried
    name = make_dataset('bpe')
    os.remove(os.path.join(data.data_dir(name), 'meta.pkl'))
    fresh_train(tmp_path, 'gpt2-huge', 'gpt2-medium', init_from='gpt2-huge', dataset=name)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_16_bit_autocast_on_cpu_is_allowed(tmp_path, core_dataset, dtype):
    """Opt-ins on a CPU (float32 is its default): bf16 pays on CPUs with bf16 instructions for larger
    models; float16 runs its GradScaler as on a GPU."""
    out = run_inproc('train.py', *core_train_args(tmp_path / 'out', dtype=dtype, max_iters=1, eval_interval=100),
                     check=True).stdout
    assert f"dtype='{dtype}'" in out
    scaler = torch.load(tmp_path / 'out' / 'latest.pt', weights_only=True)['scaler']
    assert bool(scaler) == (dtype == 'float16')  # the scaler ran, and saved its scale, for float16 only


# -----------------------------------------------------------------------------
# resume: the checkpoint must be left as it is

def failed_resume(out_dir, *fragments, **settings):
    before = snapshot(out_dir)
    result = run_inproc('train.py', *core_train_args(out_dir, init_from='resume', **settings))
    line = assert_user_error(result, *fragments)
    assert snapshot(out_dir) == before, "the out_dir changed"
    return line


def test_resume_with_a_larger_block_size(copy_run):
    failed_resume(copy_run, 'block_size=64', 'checkpoint has 32', block_size=64)


def test_resume_with_another_architecture(copy_run):
    failed_resume(copy_run, 'n_layer=3', 'checkpoint has 2', 'new --out_dir', n_layer=3)


def test_resume_with_a_different_vocabulary(copy_run, make_dataset):
    name = make_dataset('vocab', text='other characters entirely: XYZ!?\n' * 200)
    failed_resume(copy_run, 'vocabulary', name, dataset=name)
    # the same number of characters, other characters: only the stored vocabulary can tell
    same_size = make_dataset('same_size', text=core_text().translate(str.maketrans('abc', 'xyz')))
    failed_resume(copy_run, '19-character vocabulary', same_size, dataset=same_size)


def test_resume_without_a_checkpoint(tmp_path, core_dataset):
    missing = tmp_path / 'never_trained'
    failed_resume(missing, 'does not exist', str(missing))
    assert not missing.exists()
    empty = tmp_path / 'empty'
    empty.mkdir()
    failed_resume(empty, 'no checkpoint', 'ckpt.pt')
    assert os.listdir(empty) == []


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_resume_from_a_corrupt_checkpoint(copy_run, damage):
    os.remove(copy_run / 'latest.pt')
    data = (copy_run / 'ckpt.pt').read_bytes()
    (copy_run / 'ckpt.pt').write_bytes(data[:len(data) // 3] if damage == 'truncate' else b'\x00garbage' * 100)
    failed_resume(copy_run, 'ckpt.pt', 'truncated or corrupt')


# -----------------------------------------------------------------------------
# sample.py

def failed_sample(*fragments, **settings):
    settings = dict(dict(device='cpu', num_samples=1, max_new_tokens=5), **settings)
    result = run_inproc('sample.py', *[f'--{k}={v}' for k, v in settings.items()])
    return assert_user_error(result, *fragments)


def test_sample_without_a_checkpoint(tmp_path):
    failed_sample('does not exist', out_dir=tmp_path / 'nothing')
    assert not (tmp_path / 'nothing').exists()
    failed_sample('no checkpoint', out_dir=tmp_path)


@pytest.mark.parametrize('damage', ['truncate', 'empty'])
def test_sample_from_a_corrupt_checkpoint(copy_run, damage):
    data = (copy_run / 'ckpt.pt').read_bytes()
    (copy_run / 'ckpt.pt').write_bytes(data[:1000] if damage == 'truncate' else b'')
    failed_sample('ckpt.pt', 'truncated or corrupt', out_dir=copy_run)


def test_sample_empty_prompt(copy_run, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('')
    failed_sample('prompt file', 'empty', out_dir=copy_run, start=f'FILE:{prompt}')
    failed_sample("prompt file", 'not found', out_dir=copy_run, start=f'FILE:{tmp_path / "none.txt"}')
    failed_sample('prompt is empty', '--start', out_dir=copy_run, start='')


def test_sample_prompt_outside_the_vocabulary(copy_run):
    failed_sample('outside', "'Q'", out_dir=copy_run, start='Quiet')


def test_sample_with_changed_meta_vocabulary(copy_run, make_dataset):
    """The dataset prepared again from another text: the checkpoint's own vocabulary is used, and a
    nanoGPT checkpoint, which has none, is refused rather than decoded with the wrong characters."""
    name = make_dataset('vocab2', text='other characters entirely: XYZ!?\n' * 200)
    state = checkpoint.load(str(copy_run), 'ckpt.pt')
    state['config']['dataset'] = name
    checkpoint.save(state, str(copy_run))
    result = run_inproc('sample.py', f'--out_dir={copy_run}', '--device=cpu', '--num_samples=2', '--start=the',
                        check=True)
    printed = result.stdout.split("Overriding: start = 'the'\n")[1]
    assert printed.startswith('the') and set(printed.replace('---------------', '')) <= set(core_text())
    del state['tokenizer']
    checkpoint.save(state, str(copy_run))
    failed_sample('vocab_size', 'meta.pkl', out_dir=copy_run)


@pytest.mark.parametrize('settings,fragments', [
    (dict(device='tpu'), ['unknown device']),
    (dict(num_samples=0), ['num_samples', 'positive']),
    (dict(max_new_tokens=-1), ['max_new_tokens', 'positive']),
    (dict(temperature=0.0), ['temperature', 'top_k=1']),
    (dict(top_k=0), ['top_k']),
    (dict(init_from='scratch'), ["unknown init_from 'scratch'"]),
    (dict(top_p=0), ['top_p', '(0, 1]']),
    (dict(top_p=1.5), ['top_p', '(0, 1]']),
    (dict(stop="''"), ['stop', 'non-empty']),
    (dict(stop="['END', '']"), ['stop', 'non-empty']),
    (dict(stop='[]'), ['stop', 'non-empty']),
    (dict(stop='5'), ['stop', '5']),
    (dict(prompts='no_such_prompts.txt'), ['prompts file', 'not found']),
    (dict(prompts='tests/conftest.py', start='x'), ['--start', '--prompts', 'not both']),
])
def test_sample_bad_settings(copy_run, settings, fragments):
    failed_sample(*fragments, out_dir=copy_run, **settings)


@pytest.mark.parametrize('content', ['', '\n\n  \n'])
def test_sample_empty_prompts_file(copy_run, tmp_path, content):
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text(content)
    failed_sample('prompts file', 'no prompt', out_dir=copy_run, prompts=prompts)


# -----------------------------------------------------------------------------
# non-finite loss

def test_nan_loss_stops_and_keeps_the_good_checkpoints(copy_run):
    """Resumed at iteration 21 with an absurd learning rate: the first update makes the weights
    explode, the loss of iteration 22 is NaN. The checkpoints stay as they were."""
    before = snapshot(copy_run, checkpoint_files(copy_run))
    result = run_inproc('train.py', *core_train_args(copy_run, init_from='resume', learning_rate=1e30, max_iters=40))
    assert_user_error(result, 'loss is nan at iteration 22', 'nothing was saved', '--learning_rate')
    assert snapshot(copy_run, checkpoint_files(copy_run)) == before
    state = checkpoint.load(str(copy_run), 'latest.pt')
    model = checkpoint.model_from_checkpoint(state)
    assert all(p.isfinite().all() for p in model.parameters())


def test_nan_at_evaluation_names_the_iteration(tmp_path, core_dataset):
    """With the loss not logged, the evaluation catches it."""
    out_dir = tmp_path / 'out'
    result = run_inproc('train.py', *core_train_args(out_dir, learning_rate=1e30, log_interval=1000,
                                                     eval_interval=2, max_iters=40))
    assert_user_error(result, 'val loss is nan at iteration 2')
    assert checkpoint_files(out_dir) == []


def test_nan_weights_are_never_saved(tmp_path, core_dataset):
    """Neither logged nor evaluated before the end: the final save refuses non-finite weights."""
    out_dir = tmp_path / 'out'
    result = run_inproc('train.py', *core_train_args(out_dir, learning_rate=1e30, log_interval=1000,
                                                     eval_interval=1000, max_iters=3))
    assert_user_error(result, 'NaN or infinite', 'after iteration 3', 'nothing was saved')
    assert checkpoint_files(out_dir) == []


def test_meta_naming_an_unknown_token_dtype(tmp_path, make_dataset):
    name = make_dataset('bad_dtype', meta_extra={'dtype': 'float64'})
    result = run_inproc('train.py', *core_train_args(tmp_path / 'out', dataset=name))
    assert_user_error(result, 'float64', 'uint16')
    assert not (tmp_path / 'out').exists()


def test_meta_without_a_vocabulary_for_sampling(make_dataset):
    import pickle
    from helpers import tokenizer
    name = make_dataset('no_itos')
    meta_path = os.path.join(data.data_dir(name), 'meta.pkl')
    with open(meta_path, 'wb') as f:
        pickle.dump({'vocab_size': 13}, f)
    ckpt = {'config': {'dataset': name}, 'model_args': {'vocab_size': 13}}
    with pytest.raises(UserError, match='no character vocabulary'):
        tokenizer.for_checkpoint(ckpt)


@pytest.mark.parametrize('mode', ['reduce-overhead', 'max-autotune'])
def test_cuda_graphs_with_gradient_accumulation_are_refused(tmp_path, core_dataset, mode):
    """CUDA graphs reuse the memory that holds the accumulated gradients (pytorch#169545)."""
    fresh_train(tmp_path, mode, 'CUDA graphs', '2 micro-steps', 'max-autotune-no-cudagraphs',
                compile=True, compile_mode=mode, gradient_accumulation_steps=2)
