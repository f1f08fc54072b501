"""Command-line configuration, nanoGPT style:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Each script keeps its settings as plain module-level globals and calls configure(globals())
right after them. Arguments apply in order: a bare path runs that Python config file,
--key=value sets one global, the value read as a Python literal (or else taken as a plain
string). Unknown keys and values of the wrong type stop the script with a one-line error
instead of being ignored.
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


def _coerce(key, value, current, source, current_source):
    """value as the type of the current setting (an int is fine for a float), or a UserError."""
    if current is None or value is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is type(current):
        return value
    raise UserError(f"{source}: {key} must be a {type(current).__name__} ({current_source} {current!r}), "
                    f"got {type(value).__name__} {value!r}")


def _parse(text, current):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    # a string setting takes the text as written: --out_dir=123 means the folder "123"
    return text if isinstance(current, str) and not isinstance(value, str) else value


def configure(namespace, argv=None):
    """Apply config files and --key=value overrides from argv to namespace (a script's globals()).
    Returns {key: where it was set} for the keys set explicitly ('the command line' or a config
    file's path), so that scripts can fill in device-dependent defaults for the rest and name
    the source of a setting in their messages."""
    argv = sys.argv[1:] if argv is None else argv
    known = settable_keys(namespace)
    explicit = {}

    def where(key):
        return f"{explicit[key]} sets" if key in explicit else 'default'
    for arg in argv:
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if not sep:
                raise UserError(f"argument '{arg}' must be written --key=value")
            if key not in known:
                raise UserError(f"unknown config key '{key}'{_closest(key, known)}")
            value = _coerce(key, _parse(text, namespace[key]), namespace[key], f"--{key}", where(key))
            print(f"Overriding: {key} = {value!r}")
            namespace[key] = value
            explicit[key] = 'the command line'
            continue
        if not os.path.isfile(arg):
            hint = " (arguments other than config files are written --key=value)" if not arg.endswith('.py') else ''
            raise UserError(f"config file '{arg}' not found{hint}")
        print(f"Overriding config with {arg}:")
        with open(arg, encoding='utf-8') as f:
            source = f.read()
        print(source)
        scope = {}
        try:
            exec(compile(source, arg, 'exec'), scope)
        except Exception as e:  # a broken config file is the user's to fix, reported in one line
            raise UserError(f"config file '{arg}' failed to run: {type(e).__name__}: {e}")
        for key, value in scope.items():
            if key.startswith('_') or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                continue
            if key not in known:
                raise UserError(f"config file '{arg}' sets unknown key '{key}'{_closest(key, known)}")
            namespace[key] = _coerce(key, value, namespace[key], arg, where(key))
            explicit[key] = arg
    return explicit


def require_positive(namespace, *names):
    """A UserError for the first of these settings that is not a positive number."""
    for name in names:
        if namespace[name] <= 0:
            raise UserError(f"{name} must be a positive number, got {namespace[name]}")


def require_range(namespace, low, high, *names):
    """A UserError for the first of these settings outside [low, high)."""
    for name in names:
        if not low <= namespace[name] < high:
            raise UserError(f"{name} must be in [{low}, {high}), got {namespace[name]}")


def continue_run(namespace, explicit, run_settings, keep=(), fixed=None):
    """Resuming: take the run's own settings (a checkpoint's config) for every setting this command
    does not set, except those in keep (the machine's and the command's own), so that a short
    resume command trains the same recipe; say which settings given now differ from the run's.
    fixed (the checkpoint's architecture) cannot differ: a UserError names the ones set otherwise."""
    conflicts = [f"{k}={namespace[k]!r} (set by {explicit[k]}; the checkpoint has {v!r})"
                 for k, v in (fixed or {}).items() if k in explicit and namespace[k] != v]
    if conflicts:
        raise UserError(f"the checkpoint has another architecture than asked: {', '.join(conflicts)}; resume without "
                        "those settings (the checkpoint brings its own), or train into a new --out_dir")
    known = settable_keys(namespace)
    differ = {k: v for k, v in {**(run_settings or {}), **(fixed or {})}.items()
              if k in known and k not in keep and v is not None and v != namespace[k]}
    print("resuming with the run's settings" + ''.join(
        f"; {k}={namespace[k]!r} from {explicit[k]} (the run had {v!r})" for k, v in differ.items() if k in explicit))
    for k, v in differ.items():
        if k not in explicit:
            namespace[k], explicit[k] = v, 'the checkpoint'


def check_sampling(temperature, top_k, top_p=1.0):
    if not 0 < temperature < float('inf'):
        raise UserError(f"temperature must be a positive finite number, got {temperature}; use --top_k=1 for greedy "
                        "decoding, a large temperature for nearly uniform draws")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise UserError(f"top_k must be a positive integer or None, got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {top_p}; 1.0 keeps every token, 0.9 the most likely 90%")


def check_seed(seed):
    """Seeds are integers from 0 to 2**63 - 1: torch.manual_seed takes them, and the seeds derived
    from them (seed + sample number, seed + rank) stay within what it takes."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise UserError(f"seed must be an integer from 0 to 2**63-1, got {seed!r}")
