"""The laptop configs keep working: each setting is one of train.py's, reaches the run, and trains at its shape."""
import os
import runpy

import pytest

from conftest import REPO_ROOT, run_inproc
from helpers import checkpoint

SHORT = dict(max_iters=3, eval_interval=3, eval_iters=1, log_interval=1, batch_size=2)  # done in seconds (and the data)

@pytest.mark.parametrize('config', [f'config/train_shakespeare_char_cpu{end}.py' for end in ('', '_long')])
def test_laptop_config_trains_at_its_own_shape(config, core_dataset, tmp_path):
    settings = {k: v for k, v in runpy.run_path(os.path.join(REPO_ROOT, config)).items() if not k.startswith('__')}
    short = dict(SHORT, dataset=core_dataset, out_dir=str(tmp_path / 'out'))
    assert settings.keys() >= {'n_layer', 'n_embd', 'block_size', 'learning_rate', 'max_iters'} - short.keys()
    # the configurator refuses a key train.py does not have, so a renamed or misspelt setting fails here
    proc = run_inproc('train.py', config, *[f'--{k}={v}' for k, v in short.items()], check=True)
    assert f"Overriding config with {config}" in proc.stdout
    run = checkpoint.load(short['out_dir'], 'latest.pt')
    assert run['iter_num'] == SHORT['max_iters'] + 1
    # and each of the config's other settings is what the run used (its model too)
    assert {k: run['config'][k] for k in settings.keys() - short.keys()} == \
        {k: v for k, v in settings.items() if k not in short}
    shape = ('n_layer', 'n_head', 'n_embd', 'block_size')
    assert {k: run['model_args'][k] for k in shape} == {k: settings[k] for k in shape}
