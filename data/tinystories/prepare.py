"""TinyStories in GPT-2 BPE, each story then <|endoftext|>, from the hub or --train_file/--val_file. See readme.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare, stories  # noqa: E402

args = stories.story_arguments(__doc__, own='tinystories').parse_args()
with prepare.output_dir(args.name, args.force, own='tinystories') as out_dir:
    stories.gpt2_from_stories(stories.story_sources(args), out_dir)
