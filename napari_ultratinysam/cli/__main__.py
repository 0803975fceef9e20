"""`python -m napari_ultratinysam.cli`: the same as the `utsam` command."""
from napari_ultratinysam.cli.main import main

raise SystemExit(main())
