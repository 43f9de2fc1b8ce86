"""The model and what trains it: the open_clip factory and our model configs (`configs/`), the Hugging Face text
towers, the DeepSpeed config, the optimizer and learning-rate schedule, and the checkpoint layout with its export
and load."""
