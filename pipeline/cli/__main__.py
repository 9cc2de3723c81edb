"""`python -m pipeline.cli ...`: the `epmvg` command."""

from pipeline.cli import app

app()
