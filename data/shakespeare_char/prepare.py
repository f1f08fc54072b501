"""Tiny shakespeare at character level, as nanoGPT prepares it:

  1. read the text: input.txt, downloaded when missing
  2. list the characters it holds, sorted: the vocabulary
  3. map every character to an integer, its place in that list (stoi; itos maps back)
  4. split: the first 90% of the characters are train, the last 10% val
  5. save the integers as uint16 train.bin and val.bin, and meta.pkl: vocab_size, itos, stoi

chars_from_file in helpers/prepare.py does these steps for any text, in chunks.
Run from anywhere: python data/shakespeare_char/prepare.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare  # noqa: E402

if __name__ == '__main__':
    with prepare.output_dir('shakespeare_char', own='shakespeare_char') as out_dir:
        text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(out_dir, 'input.txt'))
        prepare.chars_from_file(text_file, out_dir, val_fraction=0.1)
