import sys

from csl.cli import main

sys.exit(main())
