"""`python -m training COMMAND --config CONFIG`: see `training.entry`."""

from training.entry import main

main()
