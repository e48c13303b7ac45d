"""seqrec.train."""
