"""The training system: `python -m train --preset digits` (see `python -m train --help`)."""
