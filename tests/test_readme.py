"""The README's `python` and `torchrun` commands (```sh blocks and inline code) name scripts of this repository, their
settings (a configurator script's, read with ast; an argparse script's --help) and config files that exist."""
import ast
import difflib
import functools
import os
import re
import shlex

import pytest

from conftest import REPO_ROOT, run_inproc

README = os.path.join(REPO_ROOT, 'README.md')
# configurator.py's usage in the README's table, the syntax with placeholders rather than a command
SYNTAX_LINES = {'python train.py config/file.py --key=value'}
CONTAINER_CALLS = {'sorted', 'list', 'dict', 'set', 'tuple', 'frozenset'}
UNKNOWN = object()

def readme_commands(text):
    """(line, command) for each python or torchrun command in a ```sh block (a trailing backslash continues a line),
    or in inline code, which may wrap over lines."""
    commands, prose, fence, pending = [], [], None, None
    for number, line in enumerate(text.splitlines(), 1):
        opening = re.match(r'\s*```\s*(\S*)', line)
        prose.append('' if fence is not None or opening else line)   # inline code is looked for outside fences
        if opening:
            fence = opening.group(1) if fence is None else None
            continue
        if fence not in ('sh', 'bash', 'shell', 'console'):
            continue
        start, command = pending or (number, '')
        command += ' ' + re.sub(r'^\s*\$\s', '', line)
        pending = (start, command[:-1]) if command.endswith('\\') else None
        if pending is None and runs_a_script(command):
            commands.append((start, ' '.join(command.split())))
    prose = '\n'.join(prose)
    inline = [(prose.count('\n', 0, code.start()) + 1, ' '.join(code.group(1).split()))
              for code in re.finditer(r'`([^`]+)`', prose)]
    return sorted(commands + [(n, c) for n, c in inline if runs_a_script(c) and c not in SYNTAX_LINES])

def words(command):
    """The command's words less environment assignments in front and '...'; a <placeholder> is one word."""
    command = re.sub(r'<[^<>]*>', 'PLACEHOLDER', command)
    try:
        found = shlex.split(command, comments=True)
    except ValueError:   # an unbalanced quote: the words as they stand
        found = command.split()
    while found and re.fullmatch(r'[A-Za-z_]\w*=.*', found[0]):
        found.pop(0)
    return [word for word in found if word not in ('...', '…')]

def runs_a_script(command):
    return words(command)[:1] in (['python'], ['python3'], ['torchrun'])

def script_and_arguments(command):
    """(script, its arguments), or None for `python -m ...`; torchrun's options (--key=value) come first."""
    rest = words(command)[1:]
    if words(command)[0] == 'torchrun':
        while rest and rest[0].startswith('-'):
            rest.pop(0)
    return (rest[0], rest[1:]) if rest and not rest[0].startswith('-') else None

def setting_value(node, earlier):
    """(whether the value is of a type configurator.settable_keys takes, the value): literals and arithmetic on them
    and earlier settings worked out; a call, unless it builds a container, a default found at start-up (unknown)."""
    if isinstance(node, ast.Call):
        return ast.unparse(node.func) not in CONTAINER_CALLS, UNKNOWN
    try:
        value = eval(compile(ast.Expression(node), '<setting>', 'eval'), {'__builtins__': {}}, dict(earlier))
    except Exception:   # a name that is no setting, or an unknown value in arithmetic
        return False, None
    return isinstance(value, (bool, int, float, str, type(None))), value

def calls(node, *names):
    return any(isinstance(n, ast.Call) and ast.unparse(n.func).split('.')[-1] in names for n in ast.walk(node))

def configurator_settings(tree):
    settings = {}
    for node in tree.body:
        if calls(node, 'configure', 'configure_sampling'):
            break
        if isinstance(node, ast.Assign) or isinstance(node, ast.AnnAssign) and node.value is not None:
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                name = getattr(target, 'id', '_')   # a.b = ... or a, b = ... set no setting
                plain, value = setting_value(node.value, settings)
                if plain and not name.startswith('_') and not name.isupper():
                    settings[name] = value
    return set(settings)

@functools.cache
def settings_of(script):
    """('configurator', its settings), ('argparse', its options) or ('none', set())."""
    with open(os.path.join(REPO_ROOT, script), encoding='utf-8') as f:
        tree = ast.parse(f.read())
    if calls(tree, 'configure', 'configure_sampling'):
        return 'configurator', configurator_settings(tree)
    if calls(tree, 'parse_args'):
        proc = run_inproc(script, '--help', check=True)
        return 'argparse', set(re.findall(r'(?<![\w-])--(\w[\w-]*)', proc.stdout))
    return 'none', set()

def problems(command):
    """What is wrong with a README command, in words, or []."""
    found = script_and_arguments(command)
    if found is None:
        return []
    script, arguments = found
    if not os.path.isfile(os.path.join(REPO_ROOT, script)):
        return [f"{script} does not exist"]
    kind, known = settings_of(script)
    wrong = []
    for argument in arguments:
        key, equals, _ = argument[2:].partition('=')
        if argument.startswith('--') and key not in known:
            match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
            wrong.append(f"{script} has no setting --{key}" + (f" (did you mean --{match[0]}?)" if match else ''))
        elif argument.startswith('--') and kind == 'configurator' and not equals:
            wrong.append(f"{script} reads --{key} only as --{key}=value")
        elif not argument.startswith('-') and kind == 'configurator' and not os.path.isfile(
                os.path.join(REPO_ROOT, argument)):
            wrong.append(f"{script}: config file {argument} does not exist (or a --key=value lost its --)")
        elif kind == 'none':
            wrong.append(f"{script} takes no arguments, but is given {argument}")
    return wrong

with open(README, encoding='utf-8') as f:
    COMMANDS = readme_commands(f.read())

@pytest.mark.parametrize('line, command', COMMANDS, ids=[f'line {line}' for line, _ in COMMANDS])
def test_readme_command(line, command):
    assert not problems(command), '\n'.join(f"README line {line}: {p}" for p in problems(command))

def test_the_check_finds_what_is_wrong():
    assert COMMANDS, "found no python or torchrun command in README.md: has the README or its layout changed?"
    text = """```sh
python sample.py --out_dir=x --no_such_setting=1 --top_k=5    # a comment --not_a_flag
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 train.py config/missing.py \\
    --device=cpu --max_iter=5
python nowhere.py
python data/char/prepare.py --input x.txt --nmae y --force
python data/shakespeare_char/prepare.py --name=mine
python train.py --batch_size 12
pip install --no-such-pip-flag torch
```
```
python sample.py --in_an_output_block=1
```
Inline: `python train.py config/train_shakespeare_char.py
--batch_sise=32`, `python -m pytest -q tests`, and `python train.py config/file.py --key=value`."""
    found = [(line, p) for line, command in readme_commands(text) for p in problems(command)]
    assert found == [
        (2, "sample.py has no setting --no_such_setting"),
        (3, "train.py: config file config/missing.py does not exist (or a --key=value lost its --)"),
        (3, "train.py has no setting --max_iter (did you mean --max_iters?)"),
        (5, "nowhere.py does not exist"),
        (6, "data/char/prepare.py has no setting --nmae (did you mean --name?)"),
        (7, "data/shakespeare_char/prepare.py has no setting --name"),
        (8, "train.py reads --batch_size only as --batch_size=value"),
        (8, "train.py: config file 12 does not exist (or a --key=value lost its --)"),
        (14, "train.py has no setting --batch_sise (did you mean --batch_size?)"),
    ], found
