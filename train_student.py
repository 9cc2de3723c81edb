"""Phase 2 entry point, the same as `epmvg train`: train the TransVG student on cached teacher targets.

python train_student.py refcocog --data-root DATA_ROOT --cache cache/refcocog/<fingerprint>
torchrun --nproc-per-node 8 train_student.py refcocog ...
"""

import typer

from pipeline.cli import train

if __name__ == "__main__":
    typer.run(train)
