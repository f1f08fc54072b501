"""Tiny shakespeare at character level, as nanoGPT prepares it (input.txt downloaded when missing). See readme.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

with prepare.output_dir('shakespeare_char', own='shakespeare_char') as out_dir:
    text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(out_dir, 'input.txt'))
    encode.chars_from_file(text_file, out_dir, val_fraction=0.1)
