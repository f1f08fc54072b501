"""Command-line configuration for train.py, sample.py and bench.py, nanoGPT style.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Each script keeps its settings as plain module-level globals and calls
`configure(globals())` right after defining them. Arguments are applied in order: a
bare path runs that Python config file, `--key=value` sets one global, the value read
as a Python literal (falling back to a plain string). Unknown keys and values of the
wrong type are refused with a one-line error instead of being silently ignored.
"""
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


def _closest(key, known):
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ''


def _coerce(key, value, current, source):
    """Return value converted to the type of the current setting, or raise UserError."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    raise UserError(f"{source}: {key} must be a {type(current).__name__} (default {current!r}), "
                    f"got {type(value).__name__} {value!r}")


def _parse_value(text, current):
    if isinstance(current, str):
        # a string setting takes the text as written: --out_dir=123 means the folder "123"
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        return value if isinstance(value, str) else text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def apply_config_file(path, namespace, known, explicit):
    if not os.path.isfile(path):
        hint = " (arguments other than config files are written --key=value)" if not path.endswith('.py') else ''
        raise UserError(f"config file '{path}' not found{hint}")
    print(f"Overriding config with {path}:")
    with open(path, encoding='utf-8') as f:
        source = f.read()
    print(source)
    scope = {}
    try:
        exec(compile(source, path, 'exec'), scope)
    except Exception as e:  # a broken config file is the user's to fix, reported in one line
        raise UserError(f"config file '{path}' failed to run: {type(e).__name__}: {e}")
    for key, value in scope.items():
        if key.startswith('_') or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        if key not in known:
            raise UserError(f"config file '{path}' sets unknown key '{key}'{_closest(key, known)}")
        namespace[key] = _coerce(key, value, namespace[key], path)
        explicit.add(key)


def configure(namespace, argv=None):
    """Apply config files and --key=value overrides from argv to namespace (a script's
    globals()). Returns the set of keys that were set explicitly, so scripts can fill in
    hardware-dependent defaults for the rest."""
    argv = sys.argv[1:] if argv is None else argv
    known = settable_keys(namespace)
    explicit = set()
    for arg in argv:
        if not arg.startswith('--'):
            apply_config_file(arg, namespace, known, explicit)
            continue
        key, sep, text = arg[2:].partition('=')
        if not sep:
            raise UserError(f"argument '{arg}' must be written --key=value")
        if key not in known:
            raise UserError(f"unknown config key '{key}'{_closest(key, known)}")
        value = _coerce(key, _parse_value(text, namespace[key]), namespace[key], f"--{key}")
        print(f"Overriding: {key} = {value!r}")
        namespace[key] = value
        explicit.add(key)
    return explicit


def require_positive(namespace, *names):
    """A UserError for the first of these settings that is not a positive number."""
    for name in names:
        if namespace[name] <= 0:
            raise UserError(f"{name} must be a positive number, got {namespace[name]}")


def check_sampling(temperature, top_k):
    if temperature <= 0:
        raise UserError(f"temperature must be positive, got {temperature}; use --top_k=1 for greedy decoding")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise UserError(f"top_k must be a positive integer or None, got {top_k!r}")
