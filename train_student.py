"""Phase 2 entry point, the same as `epmvg train`: train the TransVG student on cached teacher targets.

python train_student.py refcocog --data-root DATA_ROOT [--cache STORE]
(without --cache: the one complete store under cache/refcocog built for these data, as `epmvg train`)
torchrun --nproc-per-node 8 train_student.py refcocog ...
"""

import typer

from pipeline.cli.train import train

if __name__ == "__main__":
    typer.run(train)
