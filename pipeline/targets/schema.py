"""What a Phase-1 store holds, named once: its tables and its per-split index arrays.

The cache job writes these names, the trainer's target sources and `epmvg cache fidelity` read
them; `storage/` knows only that a store has tables and indices, not what they mean.
"""

IMAGES = "images"  # [N_img, 2, d]: [DIE] of each image, variant 0 as is, 1 horizontally flipped
TEXTS = "texts"  # [N_txt, d]: [DTE] of each normalized expression (originals and left/right swaps)
VIEWS = "views"  # exact-view stores: [N_rec, K, d], [DIE] of K drawn train views per record
# Exact-view stores: [N_rec, K, 13] each view's choices as a float32 table beside the embeddings, so
# resume, verify, dask and HDF5 treat them like any table; every value is an integer below 2**24.
VIEW_PARAMS = "view_params"

# index/<split>/<field>: a record's row in a table, -1 = skipped
INDEX_FIELDS = ("image_row", "text_row", "text_swapped_row")
VIEW_ROW = "view_row"  # exact-view stores: a record's row in VIEWS
