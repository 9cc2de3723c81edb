"""EpmVG: visual grounding with cross-modal distillation from a cached frozen CLIP teacher."""
