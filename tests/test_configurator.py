"""configurator.py: --key=value and config files applied to a namespace, and each refusal."""
import os

import pytest

import configurator
from conftest import REPO_ROOT
from helpers import UserError

def defaults():
    return {'batch_size': 12, 'learning_rate': 6e-4, 'out_dir': 'out', 'compile': True, 'top_k': None,
            'dataset': 'openwebtext', '_private': 3, 'os': os, 'helper': defaults}

def configure(argv):
    namespace = defaults()
    return namespace, configurator.configure(namespace, argv)

def config_file(tmp_path, text):
    (tmp_path / 'cfg.py').write_text(text)
    return str(tmp_path / 'cfg.py')

def test_overrides_and_config_files_apply_in_order(tmp_path):
    assert configurator.settable_keys(defaults()) == {'batch_size', 'learning_rate', 'out_dir', 'compile',
                                                      'top_k', 'dataset'}  # plain public values
    ns, explicit = configure(['--batch_size=32', '--learning_rate=1e-3', '--compile=False', '--top_k=5'])
    assert ns['batch_size'] == 32 and type(ns['batch_size']) is int and ns['learning_rate'] == 1e-3
    assert ns['compile'] is False and ns['top_k'] == 5 and ns['out_dir'] == 'out'  # untouched
    assert set(explicit) == {'batch_size', 'learning_rate', 'compile', 'top_k'}
    ns, _ = configure(['--learning_rate=1', '--top_k=None'])  # an int for a float; None for a None setting
    assert ns['learning_rate'] == 1.0 and type(ns['learning_rate']) is float and ns['top_k'] is None
    # later arguments win; a config file may import and define helpers, and sets only public values
    cfg = config_file(tmp_path, "import math\ndef double(x):\n    return 2 * x\n_scratch = 5\n"
                                "batch_size = double(32)\nout_dir = 'from-file'\nlearning_rate = 1\n")
    ns, explicit = configure([cfg, '--batch_size=8'])
    assert ns['batch_size'] == 8 and ns['out_dir'] == 'from-file' and type(ns['learning_rate']) is float
    assert set(explicit) == {'batch_size', 'out_dir', 'learning_rate'}
    assert configure(['--batch_size=8', cfg])[0]['batch_size'] == 64

@pytest.mark.parametrize('text', ['123', '1e3', 'True', 'None', '[1, 2]', "'quoted'", 'out-shakespeare', 'a=b', ''])
def test_strings_are_kept_as_strings(text):
    """A folder named 123, not the int 123; quotes are Python's."""
    ns, _ = configure([f'--out_dir={text}'])
    assert ns['out_dir'] == text.strip("'") and isinstance(ns['out_dir'], str)

@pytest.mark.parametrize('text', ["['\\n\\n', 'THE END'", "'THE END", '"THE END', '(1, 2', "{'a': 1", "['a'] x"])
def test_a_malformed_literal_for_a_setting_of_any_type_is_refused(text):
    """top_k (None) takes any type, so a typo must not make a plain string; a string setting takes it as written."""
    with pytest.raises(UserError) as info:
        configure([f'--top_k={text}'])
    message = str(info.value)
    assert message.startswith(f"--top_k={text} starts like a Python value") and "--top_k=\"['" in message
    assert configure(['--top_k=THE END'])[0]['top_k'] == 'THE END'
    assert configure([f'--out_dir={text}'])[0]['out_dir'] == text

@pytest.mark.parametrize('config, argv, fragments', [
    (None, ['--batchsize=3'], ["'batchsize'", "did you mean 'batch_size'"]),
    (None, ['--learnig_rate=0.1'], ["did you mean 'learning_rate'"]),
    (None, ['--zzzzzzzz=1'], ["'zzzzzzzz'", "!did you mean"]),  # no suggestion when nothing is close
    *[(None, [f'--{key}=1'], [f"'{key}'"]) for key in ('_private', 'os', 'helper')],  # not settable
    (None, ['--batch_size=3.5'], ['batch_size', 'int', '3.5']),
    (None, ['--batch_size=True'], ['batch_size', 'int']),  # a bool is not an int here
    (None, ['--batch_size=abc'], ['batch_size', 'int', 'abc']),
    (None, ['--compile=1'], ['compile', 'bool']),
    (None, ['--compile=false'], ['compile', 'bool']),  # Python's False, not false
    (None, ['--learning_rate=fast'], ['learning_rate', 'float']),
    (None, ['--learning_rate=True'], ['learning_rate', 'float']),
    (None, ['--batch_size'], ['--batch_size', '--key=value']),
    (None, ['nope.py'], ['nope.py', 'not found']),
    (None, ['batch_size=3'], ['batch_size=3', '--key=value']),  # neither a file nor --key=value
    ("batch_size = 4\nbatchsize = 8\n", [], ['cfg.py', "'batchsize'", "did you mean 'batch_size'"]),
    ("batch_size = 'many'\n", [], ['cfg.py', 'batch_size', 'int']),
    ("batch_size = 1 / 0\n", [], ['cfg.py', 'ZeroDivisionError']),
])
def test_a_bad_argument_is_one_line_and_changes_nothing(tmp_path, config, argv, fragments):
    namespace = defaults()
    with pytest.raises(UserError) as info:
        configurator.configure(namespace, ([config_file(tmp_path, config)] if config else []) + argv)
    message = str(info.value)
    assert '\n' not in message and info.value.code == f"error: {message}"  # what the interpreter prints on exit
    for fragment in fragments:
        assert fragment[1:] not in message if fragment.startswith('!') else fragment in message, message
    assert config or namespace == defaults()  # (a config file is applied up to its failing line)

def train_py_defaults():
    """train.py's default settings: its lines from '# default config values' to the configure call, run alone."""
    source = open(os.path.join(REPO_ROOT, 'train.py'), encoding='utf-8').read()
    block = source.split('# default config values')[1].split('config_keys = ')[0]
    namespace = {}
    exec('from helpers import hardware\n' + block.split('\n', 1)[1], namespace)
    return namespace

@pytest.mark.parametrize('name', sorted(n for n in os.listdir(os.path.join(REPO_ROOT, 'config')) if n.endswith('.py')))
def test_repository_configs_set_only_known_keys_with_the_right_types(name):
    namespace = train_py_defaults()
    assert {'batch_size', 'out_dir', 'init_from'} <= set(namespace)
    assert configurator.configure(namespace, [os.path.join(REPO_ROOT, 'config', name)])

MODEL = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, dropout=0.0)

@pytest.mark.parametrize('check, args, message', [
    ('require_positive', ({'batch_size': 0}, 'batch_size'), "batch_size must be a positive number, got 0"),
    ('require_range', ({'lr': -1e-3}, 0, float('inf'), 'lr'), "lr must be in [0, inf), got -0.001"),
    ('check_model', (dict(MODEL, n_embd=30),), "n_embd (30) must be divisible by n_head (4); e.g. --n_embd=32"),
    ('check_model', (dict(MODEL, n_head=0),), "n_head must be a positive number, got 0"),
    ('check_model', (dict(MODEL, dropout=1.0),), "dropout must be in [0, 1), got 1.0"),
    ('check_seed', (2 ** 63,), f"seed must be an integer from 0 to 2**63-1, got {2 ** 63}"),
    ('check_seed', (True,), "seed must be an integer from 0 to 2**63-1, got True"),
    ('check_sampling', (0.0, None), "temperature must be a positive finite number, got 0.0; use --top_k=1 for greedy "
                                    "decoding, a large temperature for nearly uniform draws"),
    ('check_sampling', (1.0, 2.5), "top_k must be a positive integer or None, got 2.5"),
    ('check_sampling', (1.0, None, 0.0), "top_p must be in (0, 1], got 0.0; 1.0 keeps every token, "
                                         "0.9 the most likely 90%"),
])
def test_each_check_refuses_in_one_line_what_no_run_can_use(check, args, message):
    with pytest.raises(UserError) as refusal:
        getattr(configurator, check)(*args)
    assert str(refusal.value) == message
    configurator.check_model(MODEL)  # and a sound setting passes
    configurator.check_sampling(0.8, 5, 0.9)
    configurator.check_seed(2 ** 63 - 1)
