"""The method's math, in plain torch (no Ray): the losses, the class prototypes and their assignment to classes,
the stage-2 classifier and its blending weight, the shot-group metrics, the feature-space diagnostics, and the one
stage-1 step that training and the bare benchmark both run."""
