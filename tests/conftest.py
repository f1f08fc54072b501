"""Shared fixtures: the repository root, the offline copies in ../shared, and a runner
for the project's scripts as a user would call them (a subprocess in the repo root)."""
import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('NANOGPT_SHARED', os.path.join(os.path.dirname(REPO_ROOT), 'shared'))
TINY_SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))


def run_script(*args, cwd=REPO_ROOT, env=None, timeout=600, check=True):
    """Run `python <args>` like a user would; return the CompletedProcess with text output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def place_tiny_shakespeare(dataset):
    """Put the offline copy of tiny shakespeare where data/<dataset>/prepare.py looks for it,
    so the script's download branch is never taken in tests."""
    target = os.path.join(REPO_ROOT, 'data', dataset, 'input.txt')
    if not os.path.exists(target):
        if not os.path.exists(TINY_SHAKESPEARE):
            pytest.fail(f"offline tiny shakespeare not found at {TINY_SHAKESPEARE}")
        shutil.copyfile(TINY_SHAKESPEARE, target)
    return target


@pytest.fixture(scope='session')
def shakespeare_char():
    """data/shakespeare_char prepared once per test session; returns the prepare output."""
    place_tiny_shakespeare('shakespeare_char')
    return run_script('data/shakespeare_char/prepare.py').stdout
