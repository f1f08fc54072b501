"""Settings, nanoGPT style: configure(globals()) applies config files and --key=value, in order, to a script's
globals; unknown keys, wrong types and values no run can use (the checks below) stop it in one line."""
import ast
import difflib
import os
import sys
import types

from helpers import UserError

def settable_keys(namespace):
    """The script's settings: lower-case globals holding plain values (UPPER_CASE ones are constants)."""
    return {k for k, v in namespace.items()
            if not k.startswith('_') and not k.isupper() and isinstance(v, (bool, int, float, str, type(None)))}

def _parse(key, text, current):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        # a setting of any type (None now) would take a list or a quoted string with a typo as plain text
        if current is None and text.lstrip().startswith(('[', '(', '{', "'", '"')):
            raise UserError(f"--{key}={text} starts like a Python value but does not parse (an unbalanced quote or "
                            f"bracket?); write it whole, e.g. --{key}=\"['\\n\\n', 'THE END']\", or as plain text")
        return text
    # a string setting takes the text as written: --out_dir=123 means the folder "123"
    return text if isinstance(current, str) and not isinstance(value, str) else value

def _set(namespace, explicit, known, key, value, source):
    """Set key to value (--key=value's text parsed), of the setting's type (an int is fine for a float)."""
    if key not in known:  # the message names the closest known key, if one is close
        match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
        raise UserError((f"unknown config key '{key}'" if source == 'the command line' else
                         f"config file '{source}' sets unknown key '{key}'") +
                        (f" (did you mean '{match[0]}'?)" if match else ''))
    current = namespace[key]
    value = _parse(key, value, current) if source == 'the command line' else value
    value = float(value) if isinstance(current, float) and type(value) is int else value
    if current is not None and value is not None and type(value) is not type(current):
        raise UserError(f"{'--' + key if source == 'the command line' else source}: {key} must be of "
                        f"type {type(current).__name__} ({explicit[key] + ' sets' if key in explicit else 'default'} "
                        f"{current!r}), got {type(value).__name__} {value!r}")
    namespace[key], explicit[key] = value, source

def configure(namespace, argv=None):
    """Apply config files and --key=value (argv, else sys.argv) to namespace; returns {key: where it was set}."""
    known, explicit = settable_keys(namespace), {}
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if not sep:
                raise UserError(f"argument '{arg}' must be written --key=value")
            _set(namespace, explicit, known, key, text, 'the command line')
            print(f"Overriding: {key} = {namespace[key]!r}")
            continue
        if not os.path.isfile(arg):
            hint = " (arguments other than config files are written --key=value)" if not arg.endswith('.py') else ''
            raise UserError(f"config file '{arg}' not found{hint}")
        with open(arg, encoding='utf-8') as f:
            source, scope = f.read(), {}
        print(f"Overriding config with {arg}:\n{source}")
        try:
            exec(compile(source, arg, 'exec'), scope)
        except Exception as e:  # a broken config file is the user's to fix, reported in one line
            raise UserError(f"config file '{arg}' failed to run: {type(e).__name__}: {e}")
        for key, value in scope.items():
            if not key.startswith('_') and not isinstance(value, (types.ModuleType, types.FunctionType, type)):
                _set(namespace, explicit, known, key, value, arg)
    return explicit

def _require(name, value, ok, what, hint=''):
    if not ok:
        raise UserError(f"{name} must be {what}, got {value!r}{hint}")

def configure_sampling(namespace):
    """configure(), then the checks of the settings that sample.py and sample_onnx.py share."""
    explicit = configure(namespace)
    require_positive(namespace, 'num_samples', 'max_new_tokens')
    check_sampling(namespace['temperature'], namespace['top_k'], namespace.get('top_p', 1.0))
    check_seed(namespace['seed'])
    return explicit

def require_positive(namespace, *names):
    for name in names:
        _require(name, value := namespace[name], type(value) in (int, float) and value > 0, 'a positive number')

def require_range(namespace, low, high, *names):
    for name in names:
        value = namespace[name]
        _require(name, value, type(value) in (int, float) and low <= value < high, f'in [{low}, {high})')

def check_model(namespace):
    """The model's shape, as train.py and bench.py take it."""
    require_positive(namespace, 'n_layer', 'n_head', 'n_embd', 'block_size')
    require_range(namespace, 0, 1, 'dropout')
    n_embd, n_head = namespace['n_embd'], namespace['n_head']
    if n_embd % n_head:
        raise UserError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); "
                        f"e.g. --n_embd={n_head * max(1, round(n_embd / n_head))}")

def check_sampling(temperature, top_k, top_p=1.0):
    _require('temperature', temperature, 0 < temperature < float('inf'), 'a positive finite number',
             '; use --top_k=1 for greedy decoding, a large temperature for nearly uniform draws')
    _require('top_k', top_k, top_k is None or isinstance(top_k, int) and top_k > 0, 'a positive integer or None')
    _require('top_p', top_p, 0 < top_p <= 1, 'in (0, 1]', '; 1.0 keeps every token, 0.9 the most likely 90%')

def check_seed(seed):
    """torch.manual_seed takes 0 to 2**63 - 1, and the seeds derived (seed + rank) stay within."""
    _require('seed', seed, type(seed) is int and 0 <= seed < 2 ** 63, 'an integer from 0 to 2**63-1')
