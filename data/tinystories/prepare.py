"""TinyStories in GPT-2 BPE: each story's tiktoken encode_ordinary tokens, then <|endoftext|> (50256); uint16.

    python data/tinystories/prepare.py                        # Hugging Face roneneldan/TinyStories
    python data/tinystories/prepare.py --train_file TinyStoriesV2-GPT4-train.txt \
                                       --val_file TinyStoriesV2-GPT4-valid.txt

train.bin from the train split, val.bin from the validation split. No meta.pkl (GPT-2 vocabulary).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare  # noqa: E402

if __name__ == '__main__':
    args = prepare.story_arguments(__doc__.split('\n\n')[0], own='tinystories').parse_args()
    out_dir = prepare.output_dir(args.name, args.force, own='tinystories')
    prepare.gpt2_from_stories(prepare.story_sources(args), out_dir)
