"""Bad input gives one line, `error: ...`, naming the problem and the fix, a non-zero exit,
no traceback, and nothing written; a non-finite loss stops training without writing a NaN
model over a good checkpoint."""
import os

import pytest
import torch

from helpers import UserError, checkpoint, data, hardware
from conftest import (CORE_DATASET, assert_user_error, checkpoint_files, core_text, core_train_args, data_files,
                      run_inproc)


def test_user_error_is_a_one_line_exit():
    error = UserError('something is wrong; do this instead')
    assert isinstance(error, SystemExit)
    assert str(error) == 'something is wrong; do this instead'
    assert error.code == 'error: something is wrong; do this instead'


def case_id(value):
    """A table's cases named by their settings and the first fragment of the error."""
    return None if callable(value) else str(value[0]) if isinstance(value, list) else str(value)


def dataset(make_dataset, remove=None, val_tokens=None, **meta_extra):
    """A throw-away copy of the core dataset with one file removed, val.bin cut to val_tokens or meta.pkl
    holding more."""
    name = make_dataset('bad', meta_extra=meta_extra or None)
    if remove:
        os.remove(os.path.join(data.data_dir(name), remove))
    if val_tokens is not None:
        os.truncate(os.path.join(data.data_dir(name), 'val.bin'), 2 * val_tokens)
    return name


# -----------------------------------------------------------------------------
# train.py on a fresh out_dir: nothing may be created

BEST = f'--device={hardware.best_device()}'  # what the errors suggest: cpu here, cuda on a GPU machine
POSITIVE = ['batch_size', 'gradient_accumulation_steps', 'max_iters', 'eval_iters', 'block_size', 'n_layer', 'n_head',
            'eval_interval', 'log_interval']
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@pytest.mark.parametrize('settings, fragments', ids=case_id, argvalues=[
    (dict(dataset='_test_no_such'), ["unknown dataset '_test_no_such'", CORE_DATASET]),  # lists those there are
    (dict(dataset=dict(remove='val.bin')), ['val.bin', 'missing', 'prepare']),
    (dict(dataset=dict(val_tokens=32), block_size=32), ['val.bin', '32 tokens', 'block_size+1 = 33', '--block_size']),
    (dict(dataset=dict(dtype='float64')), ['float64', 'uint16']),  # meta.pkl naming an unknown token dtype
    *[({name: value}, [name, 'positive', str(value)]) for name in POSITIVE for value in (0, -1)],
    (dict(n_embd=30, n_head=4), ['n_embd (30)', 'n_head (4)', 'divisible', '--n_embd=']),
    *[(dict(dropout=value), ['dropout', '[0, 1)']) for value in (1.0, 1.5, -0.1)],
    (dict(device='tpu'), ['unknown device', 'tpu', 'cpu']),
    (dict(device='gpu0'), ['unknown device', 'gpu0']),
    pytest.param(dict(device='cuda'), ['cuda', 'not available', BEST], marks=NO_CUDA),
    (dict(device='cuda:99'), ['cuda:99', BEST] if not torch.cuda.is_available() else ['cuda:99', 'does not exist']),
    pytest.param(dict(device='mps'), ['mps', BEST], marks=pytest.mark.skipif(
        hardware.mps_available(), reason="an Apple GPU is available here")),
    (dict(device='meta'), ['meta', 'not supported']),
    (dict(dtype='float64'), ["unknown dtype 'float64'", 'float32', 'bfloat16']),
    (dict(init_from='restart'), ["unknown init_from 'restart'", 'resume']),
    # a gpt2-like name that is no model: refused before any download is tried
    (dict(init_from='gpt2-huge', dataset=dict(remove='meta.pkl')), ['gpt2-huge', 'gpt2-medium']),
    # CUDA graphs reuse the memory that holds the accumulated gradients (pytorch#169545)
    *[(dict(compile=True, compile_mode=mode, gradient_accumulation_steps=2),
       [mode, 'CUDA graphs', '2 micro-steps', 'max-autotune-no-cudagraphs']) for mode in ('reduce-overhead',
                                                                                         'max-autotune')],
])
def test_train_refuses_and_creates_nothing(tmp_path, core_dataset, make_dataset, settings, fragments):
    if isinstance(settings.get('dataset'), dict):
        settings = dict(settings, dataset=dataset(make_dataset, **settings['dataset']))
    out_dir = tmp_path / 'out'
    assert_user_error(run_inproc('train.py', *core_train_args(out_dir, **settings)), *fragments)
    assert not out_dir.exists(), f"{out_dir} was created"


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_16_bit_autocast_on_cpu_and_a_val_bin_of_block_size_plus_one_tokens(tmp_path, make_dataset, dtype):
    """Opt-ins on a CPU (float32 is its default): bf16 pays on CPUs with bf16 instructions for larger
    models; float16 runs its GradScaler as on a GPU. 33 tokens are enough for block_size 32."""
    name = dataset(make_dataset, val_tokens=33)
    out = run_inproc('train.py', *core_train_args(tmp_path / 'out', dataset=name, dtype=dtype, max_iters=1,
                                                  eval_interval=100), check=True).stdout
    assert f"dtype='{dtype}'" in out
    scaler = torch.load(tmp_path / 'out' / 'latest.pt', weights_only=True)['scaler']
    assert bool(scaler) == (dtype == 'float16')  # the scaler ran, and saved its scale, for float16 only


# -----------------------------------------------------------------------------
# resume and sample.py: the run, the checkpoints, the folder are left as they were

def tree(folder):
    """Every file (with its bytes) and folder under folder."""
    return {path: path.read_bytes() if path.is_file() else None for path in folder.rglob('*')}


def vocabulary(make_dataset, same_size):
    """A dataset of other characters: as many as the core dataset's, or other ones altogether."""
    other = core_text().translate(str.maketrans('abc', 'xyz')) if same_size else 'other characters: XYZ!?\n' * 200
    return make_dataset('vocab', text=other)


def only_a_damaged_ckpt(out, damage):
    os.remove(out / 'latest.pt')
    (out / 'ckpt.pt').write_bytes(damage((out / 'ckpt.pt').read_bytes()))
    return {}


def emptied(out):
    for name in os.listdir(out):
        os.remove(out / name)
    return {}


@pytest.mark.parametrize('prepare, fragments', ids=case_id, argvalues=[
    (lambda out, make: dict(block_size=64), ['block_size=64', 'checkpoint has 32']),
    (lambda out, make: dict(n_layer=3), ['n_layer=3', 'checkpoint has 2', 'new --out_dir']),
    (lambda out, make: dict(dataset=vocabulary(make, False)), ['vocabulary', '_test_core_vocab']),
    # the same number of characters, other characters: only the stored vocabulary can tell
    (lambda out, make: dict(dataset=vocabulary(make, True)), ['19-character vocabulary', '_test_core_vocab']),
    (lambda out, make: only_a_damaged_ckpt(out, lambda b: b[:len(b) // 3]), ['ckpt.pt', 'truncated or corrupt']),
    (lambda out, make: only_a_damaged_ckpt(out, lambda b: b'\x00garbage' * 100), ['ckpt.pt', 'truncated or corrupt']),
    (lambda out, make: emptied(out), ['no checkpoint', 'ckpt.pt']),
    (lambda out, make: dict(out_dir=out / 'never_trained'), ['does not exist', '{out}/never_trained']),
])
def test_resume_refuses_and_changes_nothing(copy_run, make_dataset, prepare, fragments):
    settings = dict(dict(out_dir=copy_run), **prepare(copy_run, make_dataset))
    before = tree(copy_run)
    result = run_inproc('train.py', *core_train_args(init_from='resume', **settings))
    assert_user_error(result, *[fragment.format(out=copy_run) for fragment in fragments])
    assert tree(copy_run) == before, "the out_dir changed"


def folder(path, *files):
    """path made a folder holding these files ({name: bytes})."""
    path.mkdir()
    for name, content in files:
        (path / name).write_bytes(content)
    return path


def too_small_for_gpt2(tmp):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=19, bos_token_id=None,
                               eos_token_id=None)).save_pretrained(tmp / 'hf')
    return dict(init_from=tmp / 'hf')


@pytest.mark.parametrize('prepare, fragments', ids=case_id, argvalues=[
    (lambda tmp, run: dict(out_dir=tmp / 'nothing'), ['does not exist']),
    (lambda tmp, run: dict(out_dir=folder(tmp / 'empty')), ['no checkpoint']),
    (lambda tmp, run: dict(out_dir=folder(tmp / 'cut', ('ckpt.pt', (run / 'ckpt.pt').read_bytes()[:1000]))),
     ['ckpt.pt', 'truncated or corrupt']),
    (lambda tmp, run: dict(out_dir=folder(tmp / 'zero', ('ckpt.pt', b''))), ['ckpt.pt', 'truncated or corrupt']),
    (lambda tmp, run: dict(start=f"FILE:{folder(tmp / 'p', ('p.txt', b''))}/p.txt"), ['prompt file', 'empty']),
    (lambda tmp, run: dict(start=f"FILE:{tmp / 'none.txt'}"), ['prompt file', 'not found']),
    (lambda tmp, run: dict(start=''), ['prompt is empty', '--start']),
    (lambda tmp, run: dict(start='Quiet'), ['outside', "'Q'"]),
    *[(lambda tmp, run, content=content: dict(prompts=f"{folder(tmp / 'p', ('p.txt', content))}/p.txt"),
       ['prompts file', 'no prompt']) for content in (b'', b'\n\n  \n')],
    *[(lambda tmp, run, settings=settings: settings, fragments) for settings, fragments in [
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
        (dict(prompts='tests/conftest.py', start='x'), ['--start', '--prompts', 'not both'])]],
    (lambda tmp, run: too_small_for_gpt2(tmp),
     ['has 19 tokens', "too few for GPT-2's BPE", 'no tokenizer.json', 'export_hf.py']),
])
def test_sample_refuses_and_writes_nothing(tmp_path, tiny_run, prepare, fragments):
    settings = dict(dict(out_dir=tiny_run.out_dir, device='cpu', num_samples=1, max_new_tokens=5),
                    **prepare(tmp_path, tiny_run.out_dir))
    before = tree(tmp_path), tree(tiny_run.out_dir)
    assert_user_error(run_inproc('sample.py', *[f'--{k}={v}' for k, v in settings.items()]), *fragments)
    assert (tree(tmp_path), tree(tiny_run.out_dir)) == before


def test_sample_with_changed_meta_vocabulary(copy_run, make_dataset):
    """The dataset prepared again from another text: the checkpoint's own vocabulary is used, and a
    nanoGPT checkpoint, which has none, is refused rather than decoded with the wrong characters."""
    state = checkpoint.load(str(copy_run), 'ckpt.pt')
    state['config']['dataset'] = vocabulary(make_dataset, False)
    checkpoint.save(state, str(copy_run))
    result = run_inproc('sample.py', f'--out_dir={copy_run}', '--device=cpu', '--num_samples=2', '--start=the',
                        '--max_new_tokens=20', check=True)
    printed = result.stdout.split("Overriding: max_new_tokens = 20\n")[1]
    assert printed.startswith('the') and set(printed.replace('---------------', '')) <= set(core_text())
    del state['tokenizer']
    checkpoint.save(state, str(copy_run))
    assert_user_error(run_inproc('sample.py', f'--out_dir={copy_run}', '--device=cpu'), 'vocab_size', 'meta.pkl')


def test_meta_without_a_vocabulary_for_sampling(make_dataset):
    import pickle
    name = make_dataset('no_itos')
    with open(os.path.join(data.data_dir(name), 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 13}, f)
    with pytest.raises(UserError, match='no character vocabulary'):
        data.checkpoint_entry({'config': {'dataset': name}, 'model_args': {'vocab_size': 13}})


# -----------------------------------------------------------------------------
# a file the user names is written only over an earlier output of the same script

def png_without_our_mark():
    import io
    from PIL import Image
    image = io.BytesIO()
    Image.new('RGB', (4, 4)).save(image, format='png')  # as any program writes one; plot.py marks its own
    return image.getvalue()


BENCHMARK_RUN = 'shakespeare-char' if torch.cuda.is_available() else 'laptop'  # a run folder it would replace


@pytest.mark.parametrize('script, args, option, target, planted', [
    ('evaluate.py', ['--out_dir={run}', '--results_file={run}/latest.pt'], '--results_file', 'latest.pt', None),
    ('evaluate.py', ['--out_dir={run}', '--results_file={run}/mine.json'], '--results_file', 'mine.json',
     ('mine.json', b'{"val": 1.5}')),
    ('plot.py', ['--out_dir={run}'], '--output', 'loss.png', ('loss.png', png_without_our_mark)),
    ('benchmarks/performance.py', ['--only=laptop', '--runs_dir={run}'], '--runs_dir', BENCHMARK_RUN,
     (f'{BENCHMARK_RUN}/notes.txt', b'my notes')),
])
def test_a_file_the_script_did_not_write_is_refused(copy_run, script, args, option, target, planted):
    if planted:
        (copy_run / planted[0]).parent.mkdir(exist_ok=True)
        (copy_run / planted[0]).write_bytes(planted[1]() if callable(planted[1]) else planted[1])
    before = data_files(str(copy_run))
    result = run_inproc(script, *[arg.format(run=copy_run) for arg in args])
    assert_user_error(result, f"{copy_run / target} exists and {script} did not write it; pass another {option}")
    assert data_files(str(copy_run)) == before


def test_performance_replaces_the_run_folders_it_made(tmp_path, monkeypatch):
    import subprocess
    fake = subprocess.CompletedProcess([], 0, stdout='step 4: train loss 2.0, val loss 2.5\n', stderr='')
    monkeypatch.setattr(subprocess, 'run', lambda *args, **kwargs: fake)  # no training: its folders are the point
    runs = tmp_path / 'runs'
    (runs / BENCHMARK_RUN).mkdir(parents=True)  # empty: nothing in it to lose
    for _ in range(2):
        run_inproc('benchmarks/performance.py', '--only=laptop', f'--runs_dir={runs}', check=True)
    assert {name: os.listdir(runs / name) for name in os.listdir(runs)} == \
        {name: ['made_by_performance.txt'] for name in os.listdir(runs)}


# -----------------------------------------------------------------------------
# non-finite loss: the checkpoints stay as they were (none, for a new run)

@pytest.mark.parametrize('resume, settings, fragments', ids=case_id, argvalues=[
    # resumed at iteration 21: the first update makes the weights explode, the loss of iteration 22 is NaN
    (True, dict(max_iters=40), ['loss is nan at iteration 22', 'nothing was saved', '--learning_rate']),
    # with the loss not logged, the evaluation catches it
    (False, dict(log_interval=1000, eval_interval=2, max_iters=40), ['val loss is nan at iteration 2']),
    # neither logged nor evaluated before the end: the final save refuses non-finite weights
    (False, dict(log_interval=1000, eval_interval=1000, max_iters=3),
     ['NaN or infinite', 'after iteration 3', 'nothing was saved']),
])
def test_a_non_finite_loss_stops_and_keeps_the_good_checkpoints(copy_run, resume, settings, fragments):
    out_dir = copy_run if resume else copy_run.parent / 'new'
    before = {name: (out_dir / name).read_bytes() for name in checkpoint_files(out_dir)}
    result = run_inproc('train.py', *core_train_args(out_dir, init_from='resume' if resume else None,
                                                     learning_rate=1e30, **settings))
    assert_user_error(result, *fragments)
    assert {name: (out_dir / name).read_bytes() for name in checkpoint_files(out_dir)} == before
    for name in before:
        model = checkpoint.model_from_checkpoint(checkpoint.load(str(out_dir), name))
        assert all(p.isfinite().all() for p in model.parameters())
