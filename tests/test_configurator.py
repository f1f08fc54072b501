"""configurator.py: --key=value and config files applied to a namespace, and each refusal."""
import os
import textwrap

import pytest

import configurator
from conftest import assert_user_error, run_inproc, run_script
from helpers import UserError


def defaults():
    return {
        'batch_size': 12, 'learning_rate': 6e-4, 'out_dir': 'out', 'compile': True, 'top_k': None,
        'dataset': 'openwebtext', '_private': 3, 'os': os, 'helper': defaults,
    }


def configure(argv, namespace=None):
    namespace = defaults() if namespace is None else namespace
    explicit = configurator.configure(namespace, argv)
    return namespace, explicit


def error_of(argv, namespace=None):
    with pytest.raises(UserError) as info:
        configure(argv, namespace)
    message = str(info.value)
    assert '\n' not in message
    assert info.value.code == f"error: {message}"  # what the interpreter prints on exit
    return message


def test_settable_keys_are_plain_public_values():
    assert configurator.settable_keys(defaults()) == {'batch_size', 'learning_rate', 'out_dir', 'compile',
                                                      'top_k', 'dataset'}


def test_overrides_are_parsed_as_python_literals():
    ns, explicit = configure(['--batch_size=32', '--learning_rate=1e-3', '--compile=False', '--top_k=5'])
    assert ns['batch_size'] == 32 and type(ns['batch_size']) is int
    assert ns['learning_rate'] == 1e-3
    assert ns['compile'] is False
    assert ns['top_k'] == 5
    assert set(explicit) == {'batch_size', 'learning_rate', 'compile', 'top_k'}
    assert ns['out_dir'] == 'out'  # untouched


def test_int_is_accepted_for_a_float_setting():
    ns, _ = configure(['--learning_rate=1'])
    assert ns['learning_rate'] == 1.0 and type(ns['learning_rate']) is float


def test_none_setting_takes_any_value_and_none_is_accepted():
    ns, _ = configure(['--top_k=None'])
    assert ns['top_k'] is None
    ns, _ = configure(['--top_k=7'])
    assert ns['top_k'] == 7


@pytest.mark.parametrize('text,expected', [
    ('123', '123'),  # a folder named 123, not the int 123
    ('1e3', '1e3'),
    ('True', 'True'),
    ('None', 'None'),
    ('[1, 2]', '[1, 2]'),
    ("'quoted'", 'quoted'),
    ('out-shakespeare', 'out-shakespeare'),
    ('a=b', 'a=b'),
    ('', ''),
])
def test_strings_are_kept_as_strings(text, expected):
    ns, _ = configure([f'--out_dir={text}'])
    assert ns['out_dir'] == expected and isinstance(ns['out_dir'], str)


@pytest.mark.parametrize('text', ["['\\n\\n', 'THE END'", "'THE END", '"THE END', '(1, 2', "{'a': 1", "['a'] x"])
def test_a_malformed_literal_for_a_setting_of_any_type_is_refused(text):
    """top_k (None) takes any type: a list or quoted string with a typo would become a plain string."""
    message = error_of([f'--top_k={text}'])
    assert message.startswith(f"--top_k={text} starts like a Python value") and "--top_k=\"['" in message
    # plain text stays text there, and a string setting takes any text as written
    assert configure(['--top_k=THE END'])[0]['top_k'] == 'THE END'
    assert configure([f'--out_dir={text}'])[0]['out_dir'] == text


def test_sample_py_refuses_an_unbalanced_stop():
    assert_user_error(run_inproc('sample.py', "--stop=['\\n\\n', 'THE END'"), "--stop=['\\n\\n', 'THE END' starts like",
                      '--stop="[')


def test_later_arguments_win(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("batch_size = 64\nout_dir = 'from-file'\n")
    ns, explicit = configure([str(cfg), '--batch_size=8'])
    assert ns['batch_size'] == 8 and ns['out_dir'] == 'from-file'
    assert set(explicit) == {'batch_size', 'out_dir'}
    ns, _ = configure(['--batch_size=8', str(cfg)])
    assert ns['batch_size'] == 64


def test_config_file_may_import_and_define_helpers(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent("""
        import math
        def double(x):
            return 2 * x
        _scratch = 5
        batch_size = double(16)
        learning_rate = 1  # int for a float
    """))
    ns, explicit = configure([str(cfg)])
    assert ns['batch_size'] == 32
    assert ns['learning_rate'] == 1.0 and type(ns['learning_rate']) is float
    assert set(explicit) == {'batch_size', 'learning_rate'}


def test_unknown_key_names_the_closest_known_key():
    message = error_of(['--batchsize=3'])
    assert "'batchsize'" in message and "did you mean 'batch_size'" in message
    message = error_of(['--learnig_rate=0.1'])
    assert "did you mean 'learning_rate'" in message
    # no suggestion when nothing is close, and private or non-plain globals are not settable
    message = error_of(['--zzzzzzzz=1'])
    assert "'zzzzzzzz'" in message and 'did you mean' not in message
    for key in ('_private', 'os', 'helper'):
        assert f"'{key}'" in error_of([f'--{key}=1'])


@pytest.mark.parametrize('arg,fragments', [
    ('--batch_size=3.5', ['batch_size', 'int', '3.5']),
    ('--batch_size=True', ['batch_size', 'int']),  # a bool is not an int here
    ('--batch_size=abc', ['batch_size', 'int', 'abc']),
    ('--compile=1', ['compile', 'bool']),
    ('--compile=false', ['compile', 'bool']),  # Python's False, not false
    ('--learning_rate=fast', ['learning_rate', 'float']),
    ('--learning_rate=True', ['learning_rate', 'float']),
])
def test_type_mismatch(arg, fragments):
    message = error_of([arg])
    for fragment in fragments:
        assert fragment in message


def test_bare_argument_without_equals():
    message = error_of(['--batch_size'])
    assert '--batch_size' in message and '--key=value' in message


def test_missing_config_file(tmp_path):
    message = error_of([str(tmp_path / 'nope.py')])
    assert 'nope.py' in message and 'not found' in message
    # an argument that is neither: a hint about the --key=value form
    message = error_of(['batch_size=3'])
    assert 'batch_size=3' in message and '--key=value' in message


def test_config_file_setting_an_unknown_key(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("batch_size = 4\nbatchsize = 8\n")
    message = error_of([str(cfg)])
    assert 'cfg.py' in message and "'batchsize'" in message and "did you mean 'batch_size'" in message


def test_config_file_with_a_wrong_type(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("batch_size = 'many'\n")
    message = error_of([str(cfg)])
    assert 'cfg.py' in message and 'batch_size' in message and 'int' in message


def test_config_file_that_fails_to_run(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("batch_size = 1 / 0\n")
    message = error_of([str(cfg)])
    assert 'cfg.py' in message and 'ZeroDivisionError' in message


def test_nothing_is_changed_by_an_argument_that_fails():
    ns = defaults()
    with pytest.raises(UserError):
        configure(['--batch_size=3.5'], ns)
    assert ns['batch_size'] == 12


def train_py_defaults():
    """train.py's default settings: the lines between its '# default config values' marker and
    the configure call, run on their own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = open(os.path.join(root, 'train.py'), encoding='utf-8').read()
    block = source.split('# default config values')[1].split('config_keys = ')[0]
    namespace = {}
    exec('from helpers import hardware\n' + block.split('\n', 1)[1], namespace)
    return namespace


@pytest.mark.parametrize('name', sorted(n for n in os.listdir(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config')) if n.endswith('.py')))
def test_repository_configs_set_only_known_keys_with_the_right_types(name):
    namespace = train_py_defaults()
    assert {'batch_size', 'out_dir', 'init_from'} <= set(namespace)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    explicit = configurator.configure(namespace, [os.path.join(root, 'config', name)])
    assert explicit


def test_train_py_refuses_an_unknown_key_in_one_line():
    """Through the script as a user runs it: non-zero exit, one line naming the key, no traceback."""
    proc = run_script('train.py', '--nonsense=1', check=False, timeout=120)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().count('\n') == 0, proc.stderr
    assert_user_error(proc, "'nonsense'")


@pytest.mark.parametrize('script', ['sample.py', 'bench.py'])
def test_sample_and_bench_refuse_unknown_keys(script):
    assert_user_error(run_inproc(script, '--max_new_tokenz=5'), "'max_new_tokenz'")


def test_train_py_type_error_and_bare_argument():
    assert_user_error(run_inproc('train.py', '--batch_size=2.5'), 'batch_size', 'int')
    assert_user_error(run_inproc('train.py', '--compile'), '--key=value')
    assert_user_error(run_inproc('train.py', 'config/no_such_config.py'), 'no_such_config.py', 'not found')


MODEL = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, dropout=0.0)


@pytest.mark.parametrize('check, message', [
    (lambda: configurator.require_positive({'batch_size': 0}, 'batch_size'),
     "batch_size must be a positive number, got 0"),
    (lambda: configurator.require_range({'lr': -1e-3}, 0, float('inf'), 'lr'), "lr must be in [0, inf), got -0.001"),
    (lambda: configurator.check_model(dict(MODEL, n_embd=30)),
     "n_embd (30) must be divisible by n_head (4); e.g. --n_embd=32"),
    (lambda: configurator.check_model(dict(MODEL, n_head=0)), "n_head must be a positive number, got 0"),
    (lambda: configurator.check_model(dict(MODEL, dropout=1.0)), "dropout must be in [0, 1), got 1.0"),
    (lambda: configurator.check_seed(2 ** 63), f"seed must be an integer from 0 to 2**63-1, got {2 ** 63}"),
    (lambda: configurator.check_seed(True), "seed must be an integer from 0 to 2**63-1, got True"),
    (lambda: configurator.check_sampling(0.0, None), "temperature must be a positive finite number, got 0.0; use "
                                                     "--top_k=1 for greedy decoding, a large temperature for nearly "
                                                     "uniform draws"),
    (lambda: configurator.check_sampling(1.0, 2.5), "top_k must be a positive integer or None, got 2.5"),
    (lambda: configurator.check_sampling(1.0, None, 0.0), "top_p must be in (0, 1], got 0.0; 1.0 keeps every token, "
                                                          "0.9 the most likely 90%"),
])
def test_each_check_refuses_in_one_line_what_no_run_can_use(check, message):
    with pytest.raises(UserError) as refusal:
        check()
    assert str(refusal.value) == message
    configurator.check_model(MODEL)  # and a sound setting passes
    configurator.check_sampling(0.8, 5, 0.9)
    configurator.check_seed(2 ** 63 - 1)
