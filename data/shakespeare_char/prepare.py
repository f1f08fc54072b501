"""Tiny shakespeare at character level, in nanoGPT's format.

Reads input.txt beside this file (downloaded when missing) and writes train.bin and val.bin
(uint16 character ids: first 90% of the characters / last 10%) and meta.pkl
(vocab_size, itos, stoi). Run from anywhere: python data/shakespeare_char/prepare.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from helpers import prepare as dataprep  # noqa: E402

if __name__ == '__main__':
    text_file = dataprep.download(dataprep.TINY_SHAKESPEARE_URL, os.path.join(HERE, 'input.txt'))
    dataprep.prepare_char_file(text_file, HERE, val_fraction=0.1)
