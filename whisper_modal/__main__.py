"""``python -m whisper_modal`` runs the command line."""

import sys

from whisper_modal.cli import main

sys.exit(main())
