"""The `epmvg` command line, one module per command group: `data` (cli/data.py), Phase 1's `cache`
and `teacher` (cli/cache.py), Phase 2's `train`, `eval`, `diagnose`, `predict` (cli/train.py), and
the studies' `demo`, `experiment`, `ablations` (cli/studies.py).

Every command is a thin layer over a library function; `cache_clip.py` and `train_student.py` are
thinner layers over these.
"""

import typer

from pipeline.cli import studies, train
from pipeline.cli.cache import cache_app, teacher_app
from pipeline.cli.data import app as data_app

app = typer.Typer(no_args_is_help=True, help="Visual grounding with cross-modal distillation (EpmVG).")
app.add_typer(data_app, name="data", help="Dataset readers, checks and the synthetic shapes dataset.")
app.add_typer(cache_app, name="cache")
app.add_typer(teacher_app, name="teacher")
train.register(app)
studies.register(app)
