"""Synthetic mammogram phantom, written in the real file layouts of public datasets."""
