"""``python -m mpq_rl`` is the ``mpq-rl`` command."""

import sys

try:
    from mpq_rl.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing has started
    print("mpq-rl: interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
