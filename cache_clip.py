"""Phase 1 entry point, the same as `epmvg cache build`: embed a dataset with the frozen CLIP teacher.

python cache_clip.py refcocog --data-root DATA_ROOT [--teacher ViT-B-16 --pretrained openai]
(writes cache/refcocog/<fingerprint prefix>, where `train_student.py refcocog` looks without --cache)
"""

import typer

from pipeline.cli.cache import cache_build

if __name__ == "__main__":
    typer.run(cache_build)
