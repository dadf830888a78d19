import sys

from makevl.cli import main

sys.exit(main())
