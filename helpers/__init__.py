"""What the top-level scripts share, one module per concern, and UserError, for the mistakes a user can fix."""
import os
import signal
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS_ROOT = os.path.join(REPO_ROOT, 'data')   # data/<name>/prepare.py, always in the repository
# the datasets: beside their scripts unless NANOGPT_DATA_DIR moves them (a larger disk; the tests' own folder)
DATA_ROOT = os.path.abspath(os.path.expanduser(os.environ.get('NANOGPT_DATA_DIR') or SCRIPTS_ROOT))

def shown(path):
    """A path as messages write it: from the repository root when inside it (data/shakespeare_char), else whole."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path

class UserError(SystemExit):
    """A one-line 'error: ...' and exit status 1, no traceback: a SystemExit, which Python prints alone."""
    def __init__(self, message):
        super().__init__(f"error: {message}")

    def __str__(self):  # the message alone, for messages that quote it
        return self.code.removeprefix('error: ')

def _in_one_line(kind, value, traceback):
    """Ctrl+C (train.py saves first) and a failed torch.compile in one line, no traceback; a closed stdout in none."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted (Ctrl+C)", file=sys.stderr)
    elif issubclass(kind, BrokenPipeError):  # the reader has gone (python sample.py | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
    elif kind.__module__.startswith(('torch._dynamo', 'torch._inductor')):  # no C compiler, an unsupported operation
        reason = next((line for line in str(value).splitlines() if line.strip()), '')
        print(f"error: torch.compile failed ({kind.__name__}: {reason[:300]}); run with --compile=False",
              file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)

def quit_during_start_up(signum, frame, note=''):
    """Ctrl+C or SIGTERM before there is anything to save: one line, and exit at once (raising could hit an import)."""
    print(f"{signal.Signals(signum).name} during start-up: no checkpoint was written" + (f"; {note}" if note else ''),
          file=sys.stderr, flush=True)
    os._exit(128 + signum)

sys.excepthook = _in_one_line
