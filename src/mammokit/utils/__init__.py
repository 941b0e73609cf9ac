"""Small helpers with no knowledge of mammograms."""
