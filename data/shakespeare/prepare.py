"""Tiny shakespeare in GPT-2 BPE, as nanoGPT prepares it (input.txt downloaded when missing); no meta.pkl."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

with prepare.output_dir('shakespeare', own='shakespeare') as out_dir:
    text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(out_dir, 'input.txt'))
    encode.gpt2_from_file(text_file, out_dir, val_fraction=0.1)
