"""`python -m train {pretrain, distill}`: the training CLI (see train/__main__.py)."""
