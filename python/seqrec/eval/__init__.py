"""seqrec.eval."""
