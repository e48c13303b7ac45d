"""seqrec.models."""
