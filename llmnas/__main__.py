"""``python -m llmnas`` (and ``accelerate launch -m llmnas``) runs the CLI."""

import sys

from llmnas.cli import main

sys.exit(main())
