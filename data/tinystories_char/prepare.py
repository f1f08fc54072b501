"""TinyStories at character level: each story followed by the separator symbol '␃' (meta['separator']).
From the Hugging Face hub (roneneldan/TinyStories) or local files (--train_file, --val_file). See readme.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare, stories  # noqa: E402

if __name__ == '__main__':
    parser = stories.story_arguments(__doc__, own='tinystories_char')
    parser.add_argument('--separator', default=stories.STORY_SEPARATOR, help='the character written after each story')
    args = parser.parse_args()
    with prepare.output_dir(args.name, args.force, own='tinystories_char') as out_dir:
        stories.chars_from_stories(stories.story_sources(args), out_dir, args.separator)
