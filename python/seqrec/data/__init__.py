"""seqrec.data."""
