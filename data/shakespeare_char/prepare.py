"""Tiny shakespeare at character level, as nanoGPT prepares it: input.txt (downloaded when missing), its sorted
characters the vocabulary, the first 90% train; chars_from_file in helpers/prepare.py does it for any text, in
chunks (the steps: readme.md). Run from anywhere: python data/shakespeare_char/prepare.py"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

if __name__ == '__main__':
    with prepare.output_dir('shakespeare_char', own='shakespeare_char') as out_dir:
        text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(out_dir, 'input.txt'))
        encode.chars_from_file(text_file, out_dir, val_fraction=0.1)
