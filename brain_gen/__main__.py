import sys

from brain_gen.cli import main

sys.exit(main())
