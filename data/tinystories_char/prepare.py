"""TinyStories by character, each story then a separator ('␃'), from the hub or local files. See readme.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare, stories  # noqa: E402

parser = stories.story_arguments(__doc__, own='tinystories_char')
parser.add_argument('--separator', default=stories.STORY_SEPARATOR, help='the character written after each story')
args = parser.parse_args()
with prepare.output_dir(args.name, args.force, own='tinystories_char') as out_dir:
    stories.chars_from_stories(stories.story_sources(args), out_dir, args.separator)
