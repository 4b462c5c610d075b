import sys

from ptlab.cli import main

sys.exit(main())
