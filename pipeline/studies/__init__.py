"""Studies on the demo's benchmark and on real data: the newcomer's demo (`demo.py`), controlled
experiments (`experiment.py`) and the ablation grids (`ablations.py`). They compose the phases; nothing
below them imports them."""
