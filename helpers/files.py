"""Writing so that nothing is lost: write_atomically (whole or absent), swap (journaled) and lock (one writer)."""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import threading

try:
    import fcntl  # POSIX; elsewhere there are no locks, and the rest works the same
except ImportError:
    fcntl = None

from helpers import UserError

JOURNAL = '.swap-{}.json'  # in the folder where the change happens; hidden, as it lives for milliseconds

def temp_path(path, pid=None):
    """Where process pid (default: this one) writes path first; host and pid tell a killed writer's from a live one."""
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid() if pid is None else pid}"

def remove_orphaned_temp_files(path):
    """Delete the temporary files (or folders) of path that writers on this host left when they were killed."""
    if os.name != 'posix':  # os.kill(pid, 0) probes a process only on POSIX
        return
    folder, prefix = os.path.dirname(path) or '.', os.path.basename(temp_path(path, pid=''))
    for entry in os.listdir(folder):
        pid = entry[len(prefix):].split('.')[0]
        if not entry.startswith(prefix) or not re.fullmatch(r'[0-9]{1,9}', pid):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # that process is gone
            remove(os.path.join(folder, entry))
        except OSError:  # alive, but another user's
            pass

def remove(path):
    """Delete a file or a folder, if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)

def sync_folder(folder):
    """Make the renames in folder durable (folders cannot be opened on Windows)."""
    if os.name == 'posix':
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

def write_atomically(path, write):
    """write(tmp), fsync, rename tmp over path: path is the old file or the new one, whole; tmp never stays."""
    folder, tmp = os.path.dirname(path) or '.', temp_path(path)
    try:
        os.makedirs(folder, exist_ok=True)
        remove_orphaned_temp_files(path)
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_folder(folder)
    finally:
        remove(tmp)

def write_text(path, text):
    """write_atomically for a text file."""
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding='utf-8'))

def _replay(journal_path):
    """Carry out a journal's change, or what is left of it (every step can be redone); its paths are relative."""
    folder = os.path.dirname(journal_path)
    change = json.loads(pathlib.Path(journal_path).read_text(encoding='utf-8'))
    at = lambda p: os.path.join(folder, p)  # noqa: E731
    for source, target in change['moves']:
        if os.path.lexists(at(source)):  # not moved yet
            os.makedirs(os.path.dirname(at(target)), exist_ok=True)
            if os.path.isdir(at(target)) and not os.path.islink(at(target)):
                os.replace(at(target), at(change['trash']))  # a folder cannot be renamed over another
            os.replace(at(source), at(target))
    for path in change['removes'] + [change['trash']]:
        remove(at(path))
    os.remove(journal_path)
    sync_folder(folder)
    return change['what']

def swap(folder, moves, removes=(), what='a change'):
    """Move each source over its target (a folder replaced whole) and delete removes, as one change, journaled so
    that finish_swaps completes it (naming it with what) after a kill at any step. Paths lie within folder."""
    # Ctrl+C or SIGTERM waits for the end: an exception mid-change would run clean-up code that a kill never runs
    held, main = [], threading.current_thread() is threading.main_thread()   # only there can handlers be set
    handlers = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    folder = os.path.abspath(folder)
    journal = os.path.join(folder, JOURNAL.format(f"{socket.gethostname()}.{os.getpid()}"))
    tmp = temp_path(journal)
    inside = lambda p: os.path.relpath(os.path.join(folder, p), folder)  # noqa: E731
    change = {'what': what, 'moves': [[inside(s), inside(t)] for s, t in moves], 'removes': list(map(inside, removes)),
              'trash': os.path.basename(tmp) + '.trash'}
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(change, f)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:  # held through the change: finish_swaps in another process waits for it
                fcntl.flock(f, fcntl.LOCK_EX)
            os.replace(tmp, journal)
            sync_folder(folder)
            _replay(journal)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if held:
        signal.raise_signal(held[0])

def finish_swaps(folder):
    """Complete the changes that killed processes left in folder, saying so."""
    if not os.path.isdir(folder):
        return
    journal = re.escape(JOURNAL).replace(r'\{\}', '(.+)')
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if re.fullmatch(journal + r'\.tmp\..+', name):  # killed before its change began
            remove_orphaned_temp_files(os.path.join(folder, name.split('.tmp.')[0]))
        if not re.fullmatch(journal, name) or '.tmp.' in name:
            continue
        try:
            f = open(path, 'rb')
        except FileNotFoundError:  # finished meanwhile by its writer
            continue
        with f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            if os.path.exists(path):  # the writer, which held the lock until now, may have finished it
                print(f"finished {_replay(path)}, which an earlier command was stopped in the middle of")

def refuse_foreign(path, ours, script, option):
    """UserError, before any work, if path holds what ours(path) does not take for script's (none writes over it)."""
    if os.path.lexists(path) and not ours(path):
        raise UserError(f"{path} exists and {script} did not write it; pass another {option}, or move it away")

def lock(path, busy):
    """Lock path (made if missing) while this process lives, or UserError(busy.format(pid=holder's)); keep the file."""
    try:
        f = open(path, 'a+')
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); use a folder you can write to")
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise UserError(busy.format(pid=f.read().strip() or '?'))
    f.truncate(0)  # 'a+' appends: the pid lands at 0
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
