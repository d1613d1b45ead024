"""``python -m mpq_rl`` is the ``mpq-rl`` command."""

import sys

from mpq_rl.cli import main

sys.exit(main())
